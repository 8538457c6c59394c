"""instembed's napari plugin (npe2 manifest: ``napari.yaml`` in this package).

* :mod:`~instembed.napari._widget`: the dock widget that runs :func:`instembed.segment` on an
  Image layer;
* :mod:`~instembed.napari._reader`: reads the label TIFF + JSON files ``instembed predict``
  writes (also mask-stack TIFFs and whole prediction folders);
* :mod:`~instembed.napari._sample`: synthetic sample images (dot grid, touching cells).

Install with ``pip install instembed[napari]``. Importing this package does not import napari
or Qt (npe2 reads the manifest through it); the sub-modules above do.
"""

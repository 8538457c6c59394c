r"""instembed: instance segmentation by pixel embeddings.

The pipeline, one sub-package per stage::

    image -> data (Sample) -> models (network -> Outputs) -> losses (training)
                                                        \-> cluster -> Instances -> metrics / writers

``instembed.metrics`` needs only numpy and scipy; everything else builds on PyTorch.

One call segments an image: ``instembed.segment(image, model="bbbc039-nuclei")``
(:func:`instembed.api.segment`, exported lazily: ``import instembed`` does not import torch).
An image larger than memory: ``instembed.segment_to_zarr(image, model, "out.zarr")``
(:func:`instembed.engine.dask_blocks.segment_to_zarr`, block by block on Dask; lazy as well).
"""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["__version__", "segment", "segment_to_zarr"]


def __getattr__(name: str):
    # lazy exports: the function's module (and torch, at its first call) load on first use
    if name == "segment":
        from instembed.api import segment

        globals()["segment"] = segment
        return segment
    if name == "segment_to_zarr":
        from instembed.engine.dask_blocks import segment_to_zarr

        globals()["segment_to_zarr"] = segment_to_zarr
        return segment_to_zarr
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

"""napari sample data: synthetic scenes from :mod:`instembed.data.synth`, so the plugin can be
tried with nothing else installed. Each gives the image and its exact ground truth (hidden)."""

from __future__ import annotations

import numpy as np


def _layers(kind: str, title: str, size: tuple[int, int], seed: int, **kw) -> list[tuple]:
    from instembed.data.synth import make_samples

    sample = make_samples(kind, 1, size, seed=seed, **kw)[0]
    image = np.asarray(sample.image[0], np.float32)
    labels = np.asarray(sample.instances)
    if labels.ndim == 3:  # a mask stack: paint it
        from instembed.structures import masks_to_labels

        labels = masks_to_labels(labels)
    return [
        (image, {"name": title, "colormap": "gray"}, "image"),
        (labels.astype(np.int32), {"name": f"{title} ground truth", "visible": False}, "labels"),
    ]


def dot_grid() -> list[tuple]:
    """A 256 x 256 grid of identical dots with noise (Novotny et al. 2018, Fig. 3)."""
    return _layers("dot_grid", "dot grid", (256, 256), 0, radius=5.0, spacing=18, noise=0.05)


def touching_cells() -> list[tuple]:
    """A 256 x 256 colony of textured cells that touch along shared borders."""
    return _layers(
        "touching_cells", "touching cells", (256, 256), 0, n_cells=(45, 60), radius=(10.0, 14.0)
    )

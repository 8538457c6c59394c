"""``dot_grid``: identical dots on a regular grid (the coloring dilemma).

``dot_grid`` is the "coloring dilemma" scene of Novotny et al., *Semi-convolutional operators for
instance segmentation*, ECCV 2018 (Fig. 3): identical dots on a regular grid, which a purely
convolutional (translation-equivariant) embedding cannot tell apart.
"""

from __future__ import annotations

import numpy as np

from instembed.data.sample import Sample
from instembed.data.synth.common import disc_offsets


def _make_dot_grid(
    rng: np.random.Generator,
    h: int,
    w: int,
    *,
    radius: float = 4.0,
    spacing: int | tuple[int, int] = 14,
    offset: str | tuple[int, int] | None = "random",
    jitter: int = 0,
    noise: float = 0.0,
    foreground: float = 1.0,
    background: float = 0.0,
) -> Sample:
    """Identical dots on a regular grid (Novotny et al. 2018, Fig. 3).

    Dot centres sit on integer pixels at ``offset + (i * sy, j * sx)`` (plus an optional integer
    ``jitter`` per dot, uniform in ``[-jitter, jitter]``), so every dot has exactly the same pixel
    shape: the digital disc ``dy**2 + dx**2 <= radius**2`` (its area is
    ``len(disc_offsets(radius))``). Only dots that lie entirely inside the image are drawn.

    ``offset``: ``"random"`` (default) draws the grid origin uniformly in ``[0, spacing)`` per
    image, ``None`` centres the grid, or give ``(oy, ox)``. ``noise`` adds Gaussian noise of that
    standard deviation to the image (labels unchanged). The image has 1 channel.
    """
    sy, sx = (spacing, spacing) if np.isscalar(spacing) else tuple(spacing)
    sy, sx, jitter = int(sy), int(sx), int(jitter)
    r = float(radius)
    if r < 0.5:
        raise ValueError(f"dot_grid radius must be >= 0.5, got {radius}")
    reach = int(np.floor(r)) + jitter
    if min(sy, sx) < 2 * reach + 2:
        raise ValueError(
            f"dot_grid spacing {(sy, sx)} too small for radius {r} and jitter {jitter}: "
            f"dots would touch (need spacing >= {2 * reach + 2})"
        )
    if offset == "random":
        oy, ox = int(rng.integers(0, sy)), int(rng.integers(0, sx))
    elif offset is None:
        ny, nx = (h - 1 - 2 * reach) // sy + 1, (w - 1 - 2 * reach) // sx + 1
        oy = reach + (h - 1 - 2 * reach - (ny - 1) * sy) // 2
        ox = reach + (w - 1 - 2 * reach - (nx - 1) * sx) // 2
    else:
        oy, ox = (int(v) for v in offset)
    disc = disc_offsets(r)
    rr = int(np.floor(r))
    labels = np.zeros((h, w), np.int32)
    centres = []
    for cy in range(oy % sy, h, sy):
        for cx in range(ox % sx, w, sx):
            y, x = cy, cx
            if jitter:
                y += int(rng.integers(-jitter, jitter + 1))
                x += int(rng.integers(-jitter, jitter + 1))
            if y - rr < 0 or x - rr < 0 or y + rr >= h or x + rr >= w:
                continue
            centres.append((y, x))
            labels[y + disc[:, 0], x + disc[:, 1]] = len(centres)
    image = np.where(labels > 0, foreground, background).astype(np.float32)
    if noise > 0:
        image += rng.normal(0.0, noise, image.shape).astype(np.float32)
    n = len(centres)
    return Sample(
        image=image[None],
        instances=labels,
        semantic=(labels > 0).astype(np.int64),
        classes=np.ones(n, np.int64),
        meta={
            "centers": np.asarray(centres, np.int64).reshape(n, 2),
            "radius": r,
            "spacing": (sy, sx),
            "offset": (oy % sy, ox % sx),
            "dot_area": len(disc),
            "class_names": ("background", "dot"),
        },
    )

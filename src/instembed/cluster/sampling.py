"""Grid subsampling of foreground pixels, shared by the clusterers that find centres on a sample.

Finding cluster centres needs far fewer points than there are pixels: the clusterers find their
centres on the foreground pixels of a regular grid (every ``step``-th row and column, ``step``
chosen so that at most ``max_points`` points remain) and then assign every pixel to its nearest
centre (:mod:`instembed.cluster.assign`). Each grid point stands for ``step**2`` pixels, which is
how pixel counts (minimum sizes) are estimated on the sample. With ``step == 1`` (small images)
the sample is every foreground pixel and the result is exact.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from instembed.cluster.assign import foreground_points


def grid_step(n_foreground: int, max_points: int) -> int:
    """Smallest grid step s with about n_foreground / s^2 <= max_points."""
    if max_points <= 0:
        raise ValueError(f"max_points must be positive, got {max_points}")
    if n_foreground <= max_points:
        return 1
    return int(math.ceil(math.sqrt(n_foreground / max_points)))


def grid_sample(maps: Tensor, foreground: Tensor, step: int) -> tuple[Tensor, Tensor]:
    """Values of ``maps`` at the foreground pixels of the grid.

    Args:
        maps: (C, H, W).
        foreground: (H, W) bool.
        step: grid step.

    Returns:
        values (C, M) and the (M,) raster indices of those pixels in the full image.
    """
    h, w = foreground.shape
    if step == 1:
        return foreground_points(maps, foreground)
    values, gflat = foreground_points(maps[:, ::step, ::step], foreground[::step, ::step])
    gw = (w + step - 1) // step
    gy = torch.div(gflat, gw, rounding_mode="floor")
    flat = gy * step * w + (gflat - gy * gw) * step
    return values, flat


def foreground_sample(
    embedding: Tensor, foreground: Tensor | None, max_points: int
) -> tuple[Tensor, Tensor | None]:
    """The foreground mask and a grid sample of its embeddings, for the sample-then-assign
    clusterers (k-means, mean-shift, HDBSCAN).

    Args:
        embedding: (E, H, W); foreground: (H, W) bool or None (every pixel).
        max_points: upper bound on the sample size (see :func:`grid_step`).

    Returns:
        fg (H, W) bool and the sample (M, E) as rows, or None when there is no foreground.
    """
    _, h, w = embedding.shape
    fg = (
        torch.ones(h, w, dtype=torch.bool, device=embedding.device)
        if foreground is None
        else foreground
    )
    n_fg = int(fg.sum().item())
    if n_fg == 0:
        return fg, None
    sample, _ = grid_sample(embedding, fg, grid_step(n_fg, max_points))
    return fg, sample.t().contiguous()

"""Grid subsampling of foreground pixels, shared by the clusterers that find centres on a sample.

Finding cluster centres needs far fewer points than there are pixels: the clusterers find their
centres on the foreground pixels of a regular grid (every ``step``-th row and column, ``step``
chosen so that at most ``max_points`` points remain) and then assign every pixel to its nearest
centre (:mod:`instembed.cluster.assign`). Each grid point stands for ``step**2`` pixels, which is
how pixel counts (minimum sizes) are estimated on the sample. With ``step == 1`` (small images)
the sample is every foreground pixel and the result is exact.

:func:`cluster_on_sample` is that pattern written once -- sample, find centres, assign -- for
k-means, mean-shift, HDBSCAN and threshold clustering; each of them supplies only its centre
finder (a function of the (M, E) sample, see :class:`Centres`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from instembed.cluster.assign import assign_labels, foreground_points

log = logging.getLogger(__name__)


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
    clusterers (:func:`cluster_on_sample`).

    Args:
        embedding: (E, H, W); foreground: (H, W) bool or None (every pixel).
        max_points: upper bound on the sample size (see :func:`grid_step`).

    Returns:
        fg (H, W) bool and the sample (M, E) as rows, or None when there is no foreground.
    """
    _, h, w = embedding.shape
    if foreground is None:
        fg = torch.ones(h, w, dtype=torch.bool, device=embedding.device)
    elif foreground.shape != (h, w):
        raise ValueError(f"foreground must have shape ({h}, {w}), got {list(foreground.shape)}")
    else:
        fg = foreground.to(device=embedding.device, dtype=torch.bool)
    n_fg = int(fg.count_nonzero().item())
    if n_fg == 0:
        return fg, None
    step = grid_step(n_fg, max_points)
    sample, _ = grid_sample(embedding, fg, step)
    log.debug("foreground sample: %d of %d pixels (grid step %d)", sample.shape[1], n_fg, step)
    return fg, sample.t().contiguous()


class Centres(NamedTuple):
    """What a centre finder of :func:`cluster_on_sample` returns (a plain (K, E) tensor stands
    for ``Centres(assign=tensor)``).

    Attributes:
        assign: (K, E) the centres the pixels are assigned to (nearest one wins).
        groups: (K,) int64, the cluster 0..C-1 of each centre when several centres make one
            cluster (threshold clustering's merged fragments); None: each centre is a cluster.
        centers: (C, E) the reported centre of each cluster; None: ``assign``.
    """

    assign: Tensor
    groups: Tensor | None = None
    centers: Tensor | None = None


CentreFinder = Callable[[Tensor], "Tensor | Centres"]


def cluster_on_sample(
    embedding: Tensor,
    foreground: Tensor | None,
    find_centers: CentreFinder,
    *,
    max_points: int,
    stride: int = 4,
    max_distance: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Sample -> find centres -> assign: the clustering of k-means, mean-shift, HDBSCAN and
    threshold clustering.

    1. a grid sample of at most ``max_points`` foreground pixels (:func:`foreground_sample`);
    2. ``find_centers(sample)`` on the (M, E) sample gives the centres (:class:`Centres`);
    3. every foreground pixel goes to its nearest centre (exact,
       :func:`instembed.cluster.assign.assign_labels`), then to that centre's cluster.

    Args:
        embedding: (E, H, W) float; foreground: (H, W) bool or None (every pixel).
        find_centers: the method's centre finder.
        max_points: size bound of the sample.
        stride: grid step of the assignment (speed only, the result is exact).
        max_distance: pixels farther than this from their nearest centre (Euclidean, compared
            in the embedding's precision) become background; None: every foreground pixel is
            assigned.

    Returns:
        labels (H, W) int64 (0 = background, cluster c is c + 1) and centers (C, E); no
        foreground or no centre found: all background and (0, E) centres.
    """
    e, h, w = embedding.shape
    fg, sample = foreground_sample(embedding, foreground, max_points)
    found = None if sample is None else find_centers(sample)
    if isinstance(found, Tensor):
        found = Centres(found)
    if found is None or found.assign.shape[0] == 0:
        return torch.zeros(h, w, dtype=torch.long, device=embedding.device), embedding.new_zeros(
            (0, e)
        )
    max_q2 = float("inf")
    if max_distance is not None:
        # q2 <= max_distance^2 in the embedding's precision, as the strict q2 < max_q2
        lim = torch.tensor(max_distance * max_distance, dtype=embedding.dtype)
        max_q2 = float(torch.nextafter(lim, torch.tensor(float("inf"), dtype=lim.dtype)).item())
    labels = assign_labels(embedding, fg, found.assign, None, stride, max_q2)  # centre id + 1
    centers = found.assign if found.centers is None else found.centers
    k = found.assign.shape[0]
    if found.groups is not None and centers.shape[0] < k:  # centre -> cluster
        lut = torch.cat([found.groups.new_zeros(1), found.groups + 1])
        labels = lut.index_select(0, labels.reshape(-1)).reshape(h, w)
    return labels, centers

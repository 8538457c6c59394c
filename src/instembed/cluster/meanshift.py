"""Mean-shift clustering (Comaniciu & Meer 2002), equal to scikit-learn's ``MeanShift``.

:func:`mean_shift` follows ``sklearn.cluster.MeanShift`` step by step, vectorised over the seeds:

* seeds: every point, or with ``seeding="bin"`` the occupied cells of a grid of side
  ``bandwidth`` (cell (round(x / bandwidth)) * bandwidth, cells with at least ``min_bin_freq``
  points; when every point has its own cell, the points themselves, as scikit-learn does);
* each seed moves to the mean of the points within ``bandwidth`` (flat kernel), until it moves at
  most ``tol`` (default 1e-3 * bandwidth) or after ``max_iter`` moves; a seed with no point in
  reach is dropped;
* the converged centres, sorted by the number of points within reach (then by their coordinates,
  both descending), suppress the later centres within ``bandwidth`` (greedy NMS);
* every point goes to its nearest centre (or to none, -1, beyond ``bandwidth`` when
  ``cluster_all=False``).

``kernel="gaussian"`` weights the points by exp(-d^2 / (2 bandwidth^2)) within 3 bandwidths
instead (scikit-learn has no Gaussian kernel); everything else is unchanged.

:func:`meanshift_cluster` clusters an embedding map: the centres are found on a grid sample of at
most ``max_points`` foreground pixels, then every pixel goes to its nearest centre.
"""

from __future__ import annotations

import torch
from torch import Tensor

from instembed.cluster.assign import nearest_center
from instembed.cluster.sampling import cluster_on_sample

KERNELS = ("flat", "gaussian")


def bin_seeds(points: Tensor, bin_size: float, min_bin_freq: int = 1) -> Tensor:
    """Seeds on a grid of side ``bin_size`` (scikit-learn's ``get_bin_seeds``).

    Args:
        points: (N, D).

    Returns:
        (S, D) grid points round(x / bin_size) * bin_size of the cells holding at least
        ``min_bin_freq`` points; the points themselves when every point has its own cell.
    """
    cells, counts = torch.unique(torch.round(points / bin_size), dim=0, return_counts=True)
    cells = cells[counts >= min_bin_freq]
    if cells.shape[0] == points.shape[0]:
        return points
    return cells * bin_size


def _shift(
    points: Tensor,
    seeds: Tensor,
    bandwidth: float,
    kernel: str,
    tol: float,
    max_iter: int,
    chunk_elements: int,
) -> tuple[Tensor, Tensor]:
    """Move every seed to its mode; returns (centres (S, D), points within reach (S,))."""
    n = points.shape[0]
    cur = seeds.clone()
    size = torch.zeros(seeds.shape[0], dtype=torch.long, device=points.device)
    active = torch.ones(seeds.shape[0], dtype=torch.bool, device=points.device)
    bw2 = bandwidth * bandwidth
    pn = (points * points).sum(1)
    step = max(1, chunk_elements // max(1, n))
    for it in range(max_iter + 1):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        for s in range(0, idx.numel(), step):
            sel = idx[s : s + step]
            c = cur.index_select(0, sel)
            d2 = (pn.unsqueeze(0) - 2.0 * c @ points.t() + (c * c).sum(1, keepdim=True)).clamp(
                min=0
            )
            within = d2 <= bw2
            cnt = within.sum(1)
            if kernel == "flat":
                wgt = within.to(points.dtype)
            else:
                wgt = torch.exp(-0.5 * d2 / bw2) * (d2 <= 9.0 * bw2).to(points.dtype)
            new = (wgt @ points) / wgt.sum(1, keepdim=True).clamp(min=1e-30)
            empty = cnt == 0
            done = empty | ((new - c).norm(dim=1) <= tol) | (it == max_iter)
            size[sel] = cnt
            cur[sel] = torch.where(empty.unsqueeze(1), c, new)
            active[sel] = ~done
    return cur, size


def mean_shift(
    points: Tensor,
    bandwidth: float,
    *,
    kernel: str = "flat",
    seeding: str | Tensor = "bin",
    min_bin_freq: int = 1,
    tol: float | None = None,
    max_iter: int = 300,
    cluster_all: bool = True,
    chunk_elements: int = 1 << 22,
) -> tuple[Tensor, Tensor]:
    """Mean-shift on a point set (see the module docstring).

    Args:
        points: (N, D) float.
        bandwidth: kernel radius.
        kernel: "flat" or "gaussian".
        seeding: "bin", "all" or an (S, D) tensor of seeds.
        min_bin_freq: with bin seeding, the fewest points a cell needs to give a seed.
        tol: convergence distance (default 1e-3 * bandwidth, as scikit-learn).
        max_iter: most moves per seed.
        cluster_all: False leaves points beyond ``bandwidth`` of every centre unlabelled (-1).
        chunk_elements: memory bound of the (seeds x points) tables.

    Returns:
        labels (N,) int64 in [0, K) (or -1) and centers (K, D) in order of decreasing support.
    """
    if bandwidth <= 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth}")
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    n, d = points.shape
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=points.device), points.new_zeros((0, d))
    if isinstance(seeding, Tensor):
        seeds = seeding.to(points)
    elif seeding == "bin":
        seeds = bin_seeds(points, bandwidth, min_bin_freq)
    elif seeding == "all":
        seeds = points
    else:
        raise ValueError(f"seeding must be 'bin', 'all' or a tensor of seeds, got {seeding!r}")
    tol = 1e-3 * bandwidth if tol is None else tol
    cur, size = _shift(points, seeds, bandwidth, kernel, tol, max_iter, chunk_elements)
    keep = size > 0
    cur, size = cur[keep], size[keep]
    if cur.shape[0] == 0:
        raise ValueError(f"no seed has a point within bandwidth {bandwidth}; try a larger one")
    # sort by (size, coordinates) descending: stable sorts from the last key to the first
    order = torch.arange(cur.shape[0], device=points.device)
    for j in range(d - 1, -1, -1):
        order = order[torch.sort(cur[order, j], descending=True, stable=True).indices]
    order = order[torch.sort(size[order], descending=True, stable=True).indices]
    cur = cur[order]
    near = (torch.cdist(cur, cur) <= bandwidth).cpu()
    unique = torch.ones(cur.shape[0], dtype=torch.bool)
    for i in range(cur.shape[0]):
        if unique[i]:
            unique &= ~near[i]
            unique[i] = True
    centers = cur[unique.to(points.device)]
    labels, q2 = nearest_center(points, centers)
    if not cluster_all:
        labels = torch.where(q2 <= bandwidth * bandwidth, labels, -1)
    return labels, centers


def meanshift_cluster(
    embedding: Tensor,
    foreground: Tensor | None = None,
    *,
    bandwidth: float,
    kernel: str = "flat",
    seeding: str = "bin",
    min_bin_freq: int = 1,
    tol: float | None = None,
    max_iter: int = 300,
    cluster_all: bool = True,
    max_points: int = 4096,
    stride: int = 4,
) -> tuple[Tensor, Tensor]:
    """Mean-shift clustering of an embedding map.

    Args:
        embedding: (E, H, W); foreground: (H, W) bool or None (every pixel).
        bandwidth, kernel, seeding, min_bin_freq, tol, max_iter, cluster_all: see
            :func:`mean_shift`.
        max_points: size of the grid sample on which the centres are found.
        stride: grid step of the final assignment (speed only).

    Returns:
        labels (H, W) int64 (0 = background) and centers (K, E).
    """

    def find_centers(sample: Tensor) -> Tensor:
        return mean_shift(
            sample,
            bandwidth,
            kernel=kernel,
            seeding=seeding,
            min_bin_freq=min_bin_freq,
            tol=tol,
            max_iter=max_iter,
        )[1]

    return cluster_on_sample(
        embedding,
        foreground,
        find_centers,
        max_points=max_points,
        stride=stride,
        max_distance=None if cluster_all else bandwidth,
    )

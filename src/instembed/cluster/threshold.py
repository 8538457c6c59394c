"""Threshold clustering (De Brabandere et al. 2017, "Semantic instance segmentation with a
discriminative loss function", Sec. 3.3).

Procedure on a set of points: pick an unassigned point, take all points within ``delta_v`` of
its embedding, move to their mean, repeat until the mean moves less than ``tol``; the unassigned
points within ``delta_v`` of that mean form one cluster; continue until every point is assigned.

Why the margins matter: the discriminative loss pulls every pixel to within ``delta_v`` of its
instance mean and pushes instance means at least ``2 * delta_d`` apart. A ball of radius
``2 * delta_v`` around any pixel then holds its whole instance (diameter ``2 * delta_v``) and no
pixel of another instance exactly when ``2 * delta_d - 2 * delta_v > 2 * delta_v``, i.e.
``delta_d > 2 * delta_v``. Around a re-centred mean a radius of ``delta_v`` suffices, which is what
this function uses.

Known weakness, and the fix offered here: when the spread of a cluster approaches ``delta_v`` the
leftover pixels at its rim form many small extra clusters (fragments). ``merge_radius`` merges
clusters whose centres are closer than that distance (connected components of the "closer than"
graph) -- with ``merge_radius ~ delta_v`` wide clusters stay whole.

For speed the procedure runs on a grid sample of at most ``max_points`` foreground pixels
(:mod:`instembed.cluster.sampling`), then every foreground pixel goes to its nearest cluster
centre (the mean of the cluster's sample points), exactly and in chunks
(:func:`instembed.cluster.assign.assign_labels`). Below ``max_points`` foreground pixels the sample is every pixel.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor

from instembed.cluster.sampling import Centres, cluster_on_sample
from instembed.cluster.threads import one_intra_op_thread

log = logging.getLogger(__name__)


def threshold_modes(
    points: Tensor, delta_v: float, tol: float | None = None, max_iter: int = 100
) -> tuple[Tensor, Tensor]:
    """The sequential threshold procedure on a set of points.

    Args:
        points: (M, D) float.
        delta_v: ball radius.
        tol: stop re-centring when the mean moves less than this (default 1e-3 * delta_v).
        max_iter: at most this many re-centrings per cluster.

    Returns:
        labels (M,) int64 in [0, K) in order of discovery, and centers (K, D), the mean of each
        cluster's points.
    """
    if delta_v <= 0:
        raise ValueError(f"delta_v must be positive, got {delta_v}")
    tol = 1e-3 * delta_v if tol is None else tol
    if points.shape[0] == 0:
        return (
            torch.zeros(0, dtype=torch.long, device=points.device),
            points.new_zeros((0, points.shape[1])),
        )
    if points.device.type == "cpu" and points.dtype in (torch.float32, torch.float64):
        # the same steps in numpy: a few thousand tiny operations, each ~3x cheaper to launch
        labels, centers = _modes_numpy(points.detach().numpy(), delta_v, tol, max_iter)
        return torch.from_numpy(labels), torch.from_numpy(centers)
    return _modes_torch(points, delta_v, tol, max_iter)


def _modes_torch(
    points: Tensor, delta_v: float, tol: float, max_iter: int
) -> tuple[Tensor, Tensor]:
    m, d = points.shape
    labels = torch.full((m,), -1, dtype=torch.long, device=points.device)
    pn = (points * points).sum(1)
    # (D+1, M): one contiguous row per dimension plus a row of ones, so that one matrix-vector
    # product gives the sum and the count of the points in a ball; distances use the transposed
    # view (the fast layout for torch's gemv with a short D)
    points_t = torch.cat([points.t(), points.new_ones((1, m))], 0).contiguous()
    rows = points_t[:d].t()
    r2 = delta_v * delta_v
    unassigned = torch.ones(m, dtype=torch.bool, device=points.device)
    centers: list[Tensor] = []
    k = 0
    first = 0
    while True:
        # the first unassigned point (never before the previous seed)
        i = first + int(unassigned[first:].to(torch.uint8).argmax().item())
        if not bool(unassigned[i].item()):
            break
        first = i
        c = points[i]
        for _ in range(max_iter):
            # |x - c|^2 < r^2  <=>  |x|^2 - 2 x.c < r^2 - |c|^2
            ball = torch.addmv(pn, rows, c, alpha=-2.0) < (r2 - float(c.dot(c).item()))
            sums = torch.mv(points_t, ball.to(points.dtype))
            new = sums[:d] / sums[d].clamp(min=1.0)
            shift = float(torch.dist(new, c).item())
            c = new
            if shift <= tol:
                break
        d2 = torch.addmv(pn, rows, c, alpha=-2.0) + c.dot(c)
        members = unassigned & (d2 < r2)
        members[i] = True
        labels[members] = k
        sums = torch.mv(points_t, members.to(points.dtype))
        centers.append(sums[:d] / sums[d])
        unassigned &= ~members
        k += 1
    return labels, torch.stack(centers)


def _modes_numpy(
    points: np.ndarray, delta_v: float, tol: float, max_iter: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_modes_torch` step for step on a (M, D) float32/float64 array."""
    m, d = points.shape
    dt = points.dtype
    pn = np.einsum("ij,ij->i", points, points)
    points_t = np.ascontiguousarray(np.concatenate([points.T, np.ones((1, m), dt)], 0))
    rows = points_t[:d].T
    r2 = delta_v * delta_v
    labels = np.full(m, -1, dtype=np.int64)
    unassigned = np.ones(m, dtype=bool)
    centers: list[np.ndarray] = []
    k = 0
    first = 0
    while True:
        i = first + int(unassigned[first:].argmax())
        if not unassigned[i]:
            break
        first = i
        c = points[i]
        for _ in range(max_iter):
            ball = (pn - 2 * (rows @ c)) < (r2 - float(c @ c))
            sums = points_t @ ball.astype(dt)
            new = sums[:d] / max(sums[d], 1.0)
            shift = float(np.sqrt(np.square(new - c).sum()))
            c = new
            if shift <= tol:
                break
        members = unassigned & ((pn - 2 * (rows @ c) + c @ c) < r2)
        members[i] = True
        labels[members] = k
        sums = points_t @ members.astype(dt)
        centers.append(sums[:d] / sums[d])
        unassigned &= ~members
        k += 1
    return labels, np.stack(centers).astype(dt)


def merge_close_centers(centers: Tensor, radius: float) -> Tensor:
    """Connected components of the graph "centre i within ``radius`` of centre j".

    Args:
        centers: (K, D).
        radius: merge distance.

    Returns:
        (K,) int64 component of each centre, numbered 0.. in order of first appearance.
    """
    k = centers.shape[0]
    if k == 0:
        return torch.zeros(0, dtype=torch.long, device=centers.device)
    adj = torch.cdist(centers, centers) < radius
    comp = torch.arange(k, device=centers.device)
    while True:
        # each node takes the smallest component id among its neighbours
        nxt = torch.where(adj, comp.unsqueeze(0), k).min(1).values
        if bool((nxt == comp).all().item()):
            break
        comp = nxt
    _, inverse = torch.unique(comp, return_inverse=True)
    return inverse


def threshold_cluster(
    embedding: Tensor,
    foreground: Tensor | None = None,
    *,
    delta_v: float,
    merge_radius: float | None = None,
    max_distance: float | None = None,
    tol: float | None = None,
    max_iter: int = 100,
    max_points: int = 8192,
    stride: int = 4,
) -> tuple[Tensor, Tensor]:
    """Threshold clustering of an embedding map (see the module docstring).

    Args:
        embedding: (E, H, W) float.
        foreground: (H, W) bool; None = every pixel.
        delta_v: radius of the ball (the discriminative loss's delta_v).
        merge_radius: merge clusters whose centres are closer than this (None: no merging).
        max_distance: pixels farther than this from their nearest centre become background
            (None: every foreground pixel is assigned).
        tol, max_iter: re-centring stop criteria (see :func:`threshold_modes`).
        max_points: size of the grid sample on which the centres are found.
        stride: grid step of the nearest-centre assignment (speed only, result unchanged).

    Returns:
        labels (H, W) int64 (0 = background, 1..K) and centers (K, E).
    """
    with one_intra_op_thread():
        return _threshold_cluster(
            embedding,
            foreground,
            delta_v,
            merge_radius,
            max_distance,
            tol,
            max_iter,
            max_points,
            stride,
        )


def _threshold_cluster(
    embedding: Tensor,
    foreground: Tensor | None,
    delta_v: float,
    merge_radius: float | None,
    max_distance: float | None,
    tol: float | None,
    max_iter: int,
    max_points: int,
    stride: int,
) -> tuple[Tensor, Tensor]:
    def find_centers(sample: Tensor) -> Centres:
        return threshold_centers(sample, delta_v, merge_radius, tol, max_iter)

    return cluster_on_sample(
        embedding,
        foreground,
        find_centers,
        max_points=max_points,
        stride=stride,
        max_distance=max_distance,
    )


def threshold_centers(
    sample: Tensor,
    delta_v: float,
    merge_radius: float | None = None,
    tol: float | None = None,
    max_iter: int = 100,
) -> Centres:
    """Centres of threshold clustering on a point set (the centre finder of
    :func:`threshold_cluster`).

    Args:
        sample: (M, E) float.
        delta_v, tol, max_iter: see :func:`threshold_modes`.
        merge_radius: merge fragments whose centres are closer than this (None: no merging).

    Returns:
        :class:`~instembed.cluster.sampling.Centres`: the fragment centres (pixels go to the
        nearest one), the merged cluster of each fragment, and the centre of each cluster (the
        mean of its sample points).
    """
    e = sample.shape[1]
    sample_labels, centers = threshold_modes(sample, delta_v, tol, max_iter)
    n_frag = centers.shape[0]
    if merge_radius is not None and n_frag > 1:
        comp = merge_close_centers(centers, merge_radius)
    else:
        comp = torch.arange(n_frag, device=sample.device)
    k = int(comp.max().item()) + 1 if n_frag > 0 else 0
    # centre of a merged cluster: mean of its sample points
    sums = torch.zeros(k, e, dtype=sample.dtype, device=sample.device)
    sums.index_add_(0, comp.index_select(0, sample_labels), sample)
    counts = torch.bincount(comp.index_select(0, sample_labels), minlength=k).clamp(min=1)
    log.debug("threshold clustering: %d fragments -> %d clusters", n_frag, k)
    return Centres(centers, comp, sums / counts.unsqueeze(1).to(sample.dtype))

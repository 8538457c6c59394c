"""k-means with a known number of clusters (Lloyd's algorithm, k-means++ initialisation of
Arthur & Vassilvitskii 2007, best of ``n_init`` runs by inertia, as scikit-learn's ``KMeans``).

This is the protocol of the synthetic "coloring dilemma" experiments of Novotny et al. 2018: the
number of instances is given and the question is only whether the embedding separates them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from instembed.cluster.assign import nearest_center
from instembed.cluster.sampling import cluster_on_sample


def _kmeans_pp(points: Tensor, k: int, gen: torch.Generator) -> Tensor:
    n = points.shape[0]
    first = int(torch.randint(n, (1,), generator=gen).item())
    centers = [points[first]]
    d2 = ((points - points[first]) ** 2).sum(1)
    for _ in range(1, k):
        total = float(d2.sum().item())
        if total <= 0:
            nxt = int(torch.randint(n, (1,), generator=gen).item())
        else:
            nxt = int(torch.multinomial((d2 / total).double().cpu(), 1, generator=gen).item())
        centers.append(points[nxt])
        d2 = torch.minimum(d2, ((points - points[nxt]) ** 2).sum(1))
    return torch.stack(centers)


def kmeans(
    points: Tensor,
    k: int,
    *,
    n_init: int = 4,
    max_iter: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """k-means of a point set.

    Args:
        points: (N, D) float; k: number of clusters (>= 1).
        n_init: restarts, the run with the lowest inertia is kept.
        max_iter: most Lloyd iterations per run.
        tol: stop when no centre moves more than ``tol`` times the mean per-dimension variance.
        seed: random seed of the initialisation.

    Returns:
        labels (N,) int64 in [0, k') and centers (k', D), k' = min(k, N).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n, d = points.shape
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=points.device), points.new_zeros((0, d))
    k = min(k, n)
    gen = torch.Generator().manual_seed(seed)
    thresh = tol * float(points.var(0, unbiased=False).mean().item()) if n > 1 else 0.0
    best_inertia = float("inf")
    best = points[:k]
    for _ in range(max(1, n_init)):
        centers = _kmeans_pp(points, k, gen)
        for _ in range(max_iter):
            labels, _ = nearest_center(points, centers)
            sums = torch.zeros_like(centers).index_add_(0, labels, points)
            counts = torch.bincount(labels, minlength=k).unsqueeze(1).to(points.dtype)
            new = torch.where(counts > 0, sums / counts.clamp(min=1), centers)
            moved = float(((new - centers) ** 2).sum(1).max().item())
            centers = new
            if moved <= thresh:
                break
        labels, q2 = nearest_center(points, centers)
        inertia = float(q2.sum().item())
        if inertia < best_inertia:
            best_inertia, best = inertia, centers
    labels, _ = nearest_center(points, best)
    return labels, best


def kmeans_cluster(
    embedding: Tensor,
    foreground: Tensor | None = None,
    *,
    k: int,
    n_init: int = 4,
    max_iter: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    max_points: int = 16384,
    stride: int = 4,
) -> tuple[Tensor, Tensor]:
    """k-means clustering of an embedding map (centres on a grid sample, then every pixel to its
    nearest centre).

    Args:
        embedding: (E, H, W); foreground: (H, W) bool or None.
        k, n_init, max_iter, tol, seed: see :func:`kmeans`.

    Returns:
        labels (H, W) int64 (0 = background) and centers (K, E).
    """

    def find_centers(sample: Tensor) -> Tensor:
        return kmeans(sample, k, n_init=n_init, max_iter=max_iter, tol=tol, seed=seed)[1]

    return cluster_on_sample(
        embedding, foreground, find_centers, max_points=max_points, stride=stride
    )

"""HDBSCAN (Campello et al. 2013) through scikit-learn's ``sklearn.cluster.HDBSCAN``.

HDBSCAN needs no bandwidth and no number of clusters, but its cost grows faster than linearly with
the number of points: it runs on a grid sample of at most ``max_points`` foreground pixels; the
mean of each cluster's sample points is its centre and every foreground pixel goes to the nearest
centre (HDBSCAN's noise points included).

HDBSCAN's sizes count sample points, and a grid step ``s`` makes each point stand for ``s^2``
pixels, so a fixed ``min_cluster_size`` drops small objects once the image (and the step) grows.
``min_cluster_area`` gives the size in pixels instead: ``min_cluster_size = ceil(area / s^2)``
(at least 2) on each image's sample, the same objects at any image size.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import Tensor

from instembed.cluster.sampling import cluster_on_sample, grid_step


def hdbscan_cluster(
    embedding: Tensor,
    foreground: Tensor | None = None,
    *,
    min_cluster_size: int = 20,
    min_samples: int | None = None,
    cluster_selection_epsilon: float = 0.0,
    max_points: int = 5000,
    stride: int = 4,
    min_cluster_area: int | None = None,
    **hdbscan_params: object,
) -> tuple[Tensor, Tensor]:
    """HDBSCAN clustering of an embedding map.

    Args:
        embedding: (E, H, W); foreground: (H, W) bool or None.
        min_cluster_size, min_samples, cluster_selection_epsilon, **hdbscan_params: passed to
            ``sklearn.cluster.HDBSCAN`` (sizes count sample points, i.e. pixels / step^2).
        max_points: size of the grid sample.
        min_cluster_area: when given, ``min_cluster_size`` in pixels (see the module doc).

    Returns:
        labels (H, W) int64 (0 = background) and centers (K, E).
    """

    if min_cluster_area is not None:
        n_fg = int(embedding.shape[-2] * embedding.shape[-1]) if foreground is None else None
        n_fg = int(foreground.count_nonzero()) if n_fg is None else n_fg
        step = grid_step(max(n_fg, 1), max_points)
        min_cluster_size = max(2, math.ceil(float(min_cluster_area) / (step * step)))

    def find_centers(pts: Tensor) -> Tensor:
        return hdbscan_centers(
            pts,
            min_cluster_size=min_cluster_size,
            min_samples=min_samples,
            cluster_selection_epsilon=cluster_selection_epsilon,
            **hdbscan_params,
        )

    return cluster_on_sample(
        embedding, foreground, find_centers, max_points=max_points, stride=stride
    )


def hdbscan_centers(
    pts: Tensor,
    *,
    min_cluster_size: int = 20,
    min_samples: int | None = None,
    cluster_selection_epsilon: float = 0.0,
    **hdbscan_params: object,
) -> Tensor:
    """The mean of each HDBSCAN cluster of a point set (noise points left out).

    Args:
        pts: (M, E) float.

    Returns:
        (K, E) centres (K = 0 when HDBSCAN finds only noise; the point itself when M == 1).
    """
    from sklearn.cluster import HDBSCAN

    e = pts.shape[1]
    if pts.shape[0] < 2:
        return pts.clone()
    extra = dict(hdbscan_params)
    if "copy" in inspect.signature(HDBSCAN).parameters and "copy" not in extra:
        extra["copy"] = True  # the input is a fresh array: let scikit-learn use it
    model = HDBSCAN(
        min_cluster_size=max(2, min(min_cluster_size, pts.shape[0])),
        min_samples=min_samples,
        cluster_selection_epsilon=cluster_selection_epsilon,
        **extra,
    )
    lab = torch.as_tensor(model.fit_predict(pts.detach().cpu().double().numpy()), device=pts.device)
    k = max(0, int(lab.max().item()) + 1)
    inside = lab >= 0
    sums = torch.zeros(k, e, dtype=pts.dtype, device=pts.device).index_add_(
        0, lab[inside], pts[inside]
    )
    counts = torch.bincount(lab[inside], minlength=k).clamp(min=1).unsqueeze(1).to(pts.dtype)
    return sums / counts

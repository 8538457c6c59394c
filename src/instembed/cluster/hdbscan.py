"""HDBSCAN (Campello et al. 2013) through scikit-learn's ``sklearn.cluster.HDBSCAN``.

HDBSCAN needs no bandwidth and no number of clusters, but its cost grows faster than linearly with
the number of points: it runs on a grid sample of at most ``max_points`` foreground pixels; the
mean of each cluster's sample points is its centre and every foreground pixel goes to the nearest
centre (HDBSCAN's noise points included).
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor

from instembed.cluster.assign import assign_pixels
from instembed.cluster.sampling import foreground_sample


def hdbscan_cluster(
    embedding: Tensor,
    foreground: Tensor | None = None,
    *,
    min_cluster_size: int = 20,
    min_samples: int | None = None,
    cluster_selection_epsilon: float = 0.0,
    max_points: int = 5000,
    stride: int = 4,
    **hdbscan_params: object,
) -> tuple[Tensor, Tensor]:
    """HDBSCAN clustering of an embedding map.

    Args:
        embedding: (E, H, W); foreground: (H, W) bool or None.
        min_cluster_size, min_samples, cluster_selection_epsilon, **hdbscan_params: passed to
            ``sklearn.cluster.HDBSCAN`` (sizes count sample points, i.e. pixels / step^2).
        max_points: size of the grid sample.

    Returns:
        labels (H, W) int64 (0 = background) and centers (K, E).
    """
    from sklearn.cluster import HDBSCAN

    e, h, w = embedding.shape
    fg, pts = foreground_sample(embedding, foreground, max_points)
    zeros = torch.zeros(h, w, dtype=torch.long, device=embedding.device)
    if pts is None:
        return zeros, embedding.new_zeros((0, e))
    if pts.shape[0] < 2:
        return torch.where(fg, 1, zeros), pts.clone()
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
    k = int(lab.max().item()) + 1
    if k <= 0:
        return zeros, embedding.new_zeros((0, e))
    inside = lab >= 0
    sums = torch.zeros(k, e, dtype=pts.dtype, device=pts.device).index_add_(
        0, lab[inside], pts[inside]
    )
    counts = torch.bincount(lab[inside], minlength=k).clamp(min=1).unsqueeze(1).to(pts.dtype)
    centers = sums / counts
    index, _ = assign_pixels(embedding, fg, centers, None, stride)
    return index + 1, centers

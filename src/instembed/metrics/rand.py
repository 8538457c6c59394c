"""Adjusted Rand index between two labelings of the same pixels (Hubert & Arabie 1985)."""

from __future__ import annotations

import numpy as np


def _compact(values: np.ndarray) -> tuple[np.ndarray, int]:
    _, inv = np.unique(values, return_inverse=True)
    return inv.ravel(), int(inv.max()) + 1 if inv.size else 0


def adjusted_rand_index(
    gt_labels: np.ndarray, pred_labels: np.ndarray, mask: np.ndarray | None = None
) -> float:
    """Adjusted Rand index of two labelings, every label value a cluster (0 included).

    Args:
        gt_labels: (...) int labels.
        pred_labels: same shape.
        mask: optional bool, same shape; only ``True`` pixels are compared.

    Returns:
        ARI in [-1, 1]; 1.0 when both labelings agree on every pair (including when there are
        fewer than two pixels). Equal to ``sklearn.metrics.adjusted_rand_score``.
    """
    a = np.asarray(gt_labels)
    b = np.asarray(pred_labels)
    if a.shape != b.shape:
        raise ValueError(f"labelings differ in shape: {a.shape} vs {b.shape}")
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != a.shape:
            raise ValueError(f"mask shape {mask.shape} != labels shape {a.shape}")
        a, b = a[mask], b[mask]
    a, na = _compact(a.ravel())
    b, nb = _compact(b.ravel())
    n = a.size
    if n < 2:
        return 1.0
    table = np.bincount(a.astype(np.int64) * nb + b, minlength=na * nb).reshape(na, nb)
    # pair counts as Python ints: products overflow int64 on large images
    same_both = int((table * (table - 1)).sum()) // 2
    same_a = int((np.bincount(a) * (np.bincount(a) - 1)).sum()) // 2
    same_b = int((np.bincount(b) * (np.bincount(b) - 1)).sum()) // 2
    pairs = n * (n - 1) // 2
    expected = same_a * same_b / pairs
    maximum = (same_a + same_b) / 2
    if maximum == expected:  # both labelings trivial (one cluster, or all singletons)
        return 1.0
    return float((same_both - expected) / (maximum - expected))

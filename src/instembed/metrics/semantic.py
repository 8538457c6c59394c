"""Semantic segmentation: confusion matrix and mean IoU with an ignore label."""

from __future__ import annotations

import numpy as np


def confusion_matrix(
    gt_sem: np.ndarray, pred_sem: np.ndarray, num_classes: int, ignore_index: int = 255
) -> np.ndarray:
    """(K, K+1) int64 pixel counts, rows = ground-truth class, columns = predicted class.

    Pixels whose ground truth is ``ignore_index`` are left out. Column ``K`` counts predictions
    outside ``0..K-1`` (e.g. ``ignore_index`` as "no prediction"): wrong for their row, no class's
    false positive. Counts add up over images.
    """
    gt = np.asarray(gt_sem)
    pred = np.asarray(pred_sem)
    if gt.shape != pred.shape:
        raise ValueError(f"semantic maps differ in shape: gt {gt.shape}, pred {pred.shape}")
    if not (np.issubdtype(gt.dtype, np.integer) and np.issubdtype(pred.dtype, np.integer)):
        raise ValueError(f"semantic maps must be integer, got {gt.dtype} and {pred.dtype}")
    g = gt.ravel().astype(np.int64)
    p = pred.ravel().astype(np.int64)
    keep = g != ignore_index
    g, p = g[keep], p[keep]
    bad = (g < 0) | (g >= num_classes)
    if bad.any():
        raise ValueError(
            f"ground-truth class {int(g[bad][0])} outside 0..{num_classes - 1} "
            f"(and not the ignore index {ignore_index})"
        )
    p = np.where((p < 0) | (p >= num_classes), num_classes, p)
    cm = np.bincount(g * (num_classes + 1) + p, minlength=num_classes * (num_classes + 1))
    return cm.reshape(num_classes, num_classes + 1).astype(np.int64)


def miou_from_confusion(cm: np.ndarray) -> dict:
    """Per-class IoU = TP / (TP + FP + FN) and their mean over classes present on either side.

    ``cm`` is (K, K) or (K, K+1) as from :func:`confusion_matrix`. Classes absent from both
    ground truth and prediction are left out of the mean; with no class present at all (every
    pixel ignored) mIoU is 1.0.
    """
    cm = np.asarray(cm, np.float64)
    k = cm.shape[0]
    tp = np.diag(cm[:, :k])
    union = cm.sum(1) + cm[:, :k].sum(0) - tp
    per_class = {int(c): float(tp[c] / union[c]) for c in np.flatnonzero(union > 0)}
    value = float(np.mean(list(per_class.values()))) if per_class else 1.0
    return {"mIoU": value, "per_class": per_class}


def miou(
    gt_sem: np.ndarray, pred_sem: np.ndarray, num_classes: int, ignore_index: int = 255
) -> dict:
    """Mean IoU of one pair of semantic maps (H, W) int; see :func:`miou_from_confusion`.

    Returns ``{"mIoU": float, "per_class": {class: IoU}}``.
    """
    return miou_from_confusion(confusion_matrix(gt_sem, pred_sem, num_classes, ignore_index))

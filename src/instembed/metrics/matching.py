"""One-to-one matching of instances at an IoU threshold (AP_dsb and its TP/FP/FN counts).

AP_dsb@τ = TP / (TP + FP + FN), the metric of the 2018 Data Science Bowl as used by StarDist
(Schmidt et al. 2018) and EmbedSeg (Lalit et al. 2021): a pair (gt, pred) may be a true
positive when IoU >= τ; pairs are chosen one-to-one to maximise the number of true positives
(and, among maximal matchings, the summed IoU) with the Hungarian algorithm
(``scipy.optimize.linear_sum_assignment``). It is *not* COCO AP: there are no scores and no
precision/recall curve.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

DSB_THRESHOLDS = np.round(np.arange(0.5, 0.951, 0.05), 2)


def match_counts(iou: np.ndarray, threshold: float) -> tuple[int, np.ndarray, np.ndarray]:
    """Maximum one-to-one matching among pairs with IoU >= ``threshold``.

    Args:
        iou: (G, P) IoU matrix.
        threshold: the IoU a pair needs.

    Returns:
        ``(tp, gt_matched (G,) bool, pred_matched (P,) bool)``.
    """
    g, p = iou.shape
    gt_matched = np.zeros(g, bool)
    pred_matched = np.zeros(p, bool)
    if g == 0 or p == 0:
        return 0, gt_matched, pred_matched
    ok = iou >= threshold
    rows = np.flatnonzero(ok.any(1))
    if rows.size == 0:
        return 0, gt_matched, pred_matched
    cols = np.flatnonzero(ok.any(0))
    sub_ok = ok[np.ix_(rows, cols)]
    if (sub_ok.sum(1) == 1).all() and (sub_ok.sum(0) == 1).all():
        # every candidate pair is alone in its row and column: nothing to choose
        gt_matched[rows] = True
        pred_matched[cols] = True
        return int(rows.size), gt_matched, pred_matched
    sub_iou = iou[np.ix_(rows, cols)]
    # count first, IoU second: the IoU term sums to < 1 over any matching
    n = min(sub_ok.shape)
    cost = -(sub_ok.astype(np.float64)) - sub_iou * sub_ok / (2.0 * n)
    r, c = linear_sum_assignment(cost)
    keep = sub_ok[r, c]
    gt_matched[rows[r[keep]]] = True
    pred_matched[cols[c[keep]]] = True
    return int(keep.sum()), gt_matched, pred_matched


def dsb_counts(
    iou: np.ndarray,
    thresholds: np.ndarray = DSB_THRESHOLDS,
    pred_excused: np.ndarray | None = None,
) -> np.ndarray:
    """(T, 3) int64 TP, FP, FN at each threshold.

    ``pred_excused`` (P,) bool marks predictions that are not false positives when unmatched
    (mostly on void or crowd pixels).
    """
    out = np.zeros((len(thresholds), 3), np.int64)
    g, p = iou.shape
    for i, t in enumerate(thresholds):
        tp, _, pm = match_counts(iou, float(t))
        fp_mask = ~pm if pred_excused is None else ~pm & ~pred_excused
        out[i] = (tp, int(fp_mask.sum()), g - tp)
    return out


def ap_from_counts(counts: np.ndarray) -> np.ndarray:
    """AP_dsb = TP / (TP + FP + FN) per row of a (..., 3) count array; 1.0 where all are 0."""
    counts = np.asarray(counts, np.float64)
    den = counts.sum(-1)
    out = np.ones(den.shape)
    np.divide(counts[..., 0], den, out=out, where=den > 0)
    return out

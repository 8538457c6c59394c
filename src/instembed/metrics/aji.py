"""Aggregated Jaccard Index (Kumar et al. 2017, *A dataset and a technique for generalized nuclear
segmentation for computational pathology*, IEEE TMI; the MoNuSeg evaluation code).

Ground-truth objects are visited in increasing id order (stack order for a mask stack). Each
takes, among the predictions **not used yet**, the one of highest IoU (ties: the lowest id):
C += |G ∩ S|, U += |G ∪ S|, and S is marked used, so every prediction enters U at most once.
A ground-truth object that overlaps no unused prediction adds |G| to U and uses nothing (the
MoNuSeg MATLAB code would pair it with prediction 1 there, a known bug). Finally the area of every
unused prediction is added to U. AJI = C / U; 1.0 when U = 0 (no object on either side).
"""

from __future__ import annotations

import numpy as np

from instembed.metrics.overlap import as_instances, overlap_table


def aji_counts(inter: np.ndarray, gt_area: np.ndarray, pred_area: np.ndarray) -> tuple[int, int]:
    """(C, U) of one image from its overlap counts.

    Args:
        inter: (G, P) pixels in both objects, rows in ground-truth order.
        gt_area: (G,) ground-truth areas.
        pred_area: (P,) predicted areas.
    """
    inter = np.asarray(inter, np.int64)
    gt_area = np.asarray(gt_area, np.int64)
    pred_area = np.asarray(pred_area, np.int64)
    g, p = inter.shape
    used = np.zeros(p, bool)
    c = u = 0
    if g and p:
        union = gt_area[:, None] + pred_area[None, :] - inter
        iou = np.zeros(inter.shape, np.float64)
        np.divide(inter, union, out=iou, where=union > 0)
        best = iou.argmax(1)
        # rows whose best prediction is theirs alone (and has IoU > 0) need no sequential pass
        has = iou[np.arange(g), best] > 0
        counts = np.bincount(best[has], minlength=p)
        if (counts <= 1).all():
            rows = np.flatnonzero(has)
            cols = best[has]
            c = int(inter[rows, cols].sum())
            u = int(union[rows, cols].sum()) + int(gt_area[~has].sum())
            used[cols] = True
        else:
            for i in range(g):
                cand = np.flatnonzero((inter[i] > 0) & ~used)
                if cand.size == 0:
                    u += int(gt_area[i])
                    continue
                j = int(cand[np.argmax(iou[i, cand])])  # first maximum: lowest id
                c += int(inter[i, j])
                u += int(union[i, j])
                used[j] = True
    else:
        u += int(gt_area.sum())
    u += int(pred_area[~used].sum())
    return c, u


def aji_from_counts(c: float, u: float) -> float:
    """C / U, 1.0 when U = 0."""
    return float(c / u) if u > 0 else 1.0


def aggregated_jaccard_index(
    gt: np.ndarray, pred: np.ndarray, ignore: np.ndarray | None = None
) -> float:
    """AJI of one image (label images or mask stacks; ``ignore`` pixels removed first)."""
    table = overlap_table(as_instances(gt, "gt"), as_instances(pred, "pred"), ignore)
    return aji_from_counts(*aji_counts(table.inter, table.gt_area, table.pred_area))

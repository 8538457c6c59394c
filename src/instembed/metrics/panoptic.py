"""Panoptic quality (PQ, SQ, RQ) with panopticapi's rules, and PQ† (Porzi et al. 2019).

Per image, from an :class:`~instembed.metrics.overlap.OverlapTable` whose void pixels are
already removed (Kirillov et al. 2019, "Panoptic Segmentation"; the behaviour matched is
``panopticapi/evaluation.py``, ``pq_compute_single_core``):

* a ground truth and a prediction of the **same class** match iff IoU > 0.5 (strictly), the
  ground truth is not crowd, and IoU = intersection / (union minus the prediction's void
  pixels) -- with void removed from the table this is plain ``inter / union``;
* matched pairs are true positives (their IoU is summed), unmatched non-crowd ground truths are
  false negatives;
* an unmatched prediction is a false positive unless more than half of its pixels (void
  included) lie on void or on the crowd region of its own class.

Over a data set the counts are summed per class; then PQ_c = ΣIoU / (TP + FP/2 + FN/2),
SQ_c = ΣIoU / TP (0 without TP), RQ_c = TP / (TP + FP/2 + FN/2), and PQ, SQ, RQ are the means
over classes with TP + FP + FN > 0, reported over all classes, over things and over stuff.

PQ† (Porzi et al. 2019, "Seamless Scene Segmentation") replaces PQ_c of each stuff class by its
IoU over the data set, ΣIntersection / ΣUnion of the class's stuff segments (void removed).

With non-overlapping segments (label images, panoptic PNGs) at most one pair per ground truth and
per prediction can pass IoU > 0.5. With overlapping mask stacks several can; pairs are then made
one-to-one in decreasing IoU order (panopticapi does not define this case).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from instembed.metrics.overlap import OverlapTable


def pq_counts(
    table: OverlapTable,
    gt_classes: np.ndarray,
    pred_classes: np.ndarray,
    gt_crowd: np.ndarray,
) -> dict[int, np.ndarray]:
    """Per-class ``[TP, FP, FN, ΣIoU]`` (float64) of one image.

    Args:
        table: overlap table, void already removed.
        gt_classes: (G,) int class of each ground truth.
        pred_classes: (P,) int class of each prediction.
        gt_crowd: (G,) bool crowd flag of each ground truth.
    """
    iou = table.iou()
    same = gt_classes[:, None] == pred_classes[None, :]
    cand = (iou > 0.5) & same & ~gt_crowd[:, None]
    gi, pi = np.nonzero(cand)
    if gi.size and (np.bincount(gi).max() > 1 or np.bincount(pi).max() > 1):
        order = np.argsort(-iou[gi, pi], kind="stable")
        used_g, used_p, keep = set(), set(), []
        for k in order:
            g, p = int(gi[k]), int(pi[k])
            if g in used_g or p in used_p:
                continue
            used_g.add(g)
            used_p.add(p)
            keep.append(k)
        keep = np.sort(np.asarray(keep, np.intp))
        gi, pi = gi[keep], pi[keep]
    gt_tp = np.zeros(table.n_gt, bool)
    pred_tp = np.zeros(table.n_pred, bool)
    gt_tp[gi] = True
    pred_tp[pi] = True

    out: dict[int, np.ndarray] = {}

    def row(c: int) -> np.ndarray:
        if c not in out:
            out[c] = np.zeros(4)
        return out[c]

    for g, p in zip(gi.tolist(), pi.tolist()):
        r = row(int(gt_classes[g]))
        r[0] += 1
        r[3] += iou[g, p]
    for g in np.flatnonzero(~gt_tp & ~gt_crowd).tolist():
        row(int(gt_classes[g]))[2] += 1
    full_area = table.pred_area + table.pred_void
    for p in np.flatnonzero(~pred_tp).tolist():
        c = int(pred_classes[p])
        on_void = float(table.pred_void[p])
        crowd_same = gt_crowd & (gt_classes == c)
        if crowd_same.any():
            on_void += float(table.inter[crowd_same, p].sum())
        if full_area[p] > 0 and on_void / full_area[p] > 0.5:
            continue
        row(c)[1] += 1
    return out


def stuff_iou_counts(table: OverlapTable, gt_classes: np.ndarray, pred_classes: np.ndarray):
    """Per stuff class ``[intersection, union]`` of one image (one segment per class per side)."""
    out: dict[int, np.ndarray] = {}
    classes = set(gt_classes.tolist()) | set(pred_classes.tolist())
    for c in classes:
        g = np.flatnonzero(gt_classes == c)
        p = np.flatnonzero(pred_classes == c)
        ga = float(table.gt_area[g].sum())
        pa = float(table.pred_area[p].sum())
        inter = float(table.inter[np.ix_(g, p)].sum())
        out[int(c)] = np.array([inter, ga + pa - inter])
    return out


def add_counts(total: dict[int, np.ndarray], part: dict[int, np.ndarray]) -> None:
    """In-place ``total += part`` per class."""
    for c, v in part.items():
        if c in total:
            total[c] = total[c] + v
        else:
            total[c] = np.array(v, np.float64)


def pq_from_counts(
    counts: dict[int, np.ndarray],
    stuff_classes: Iterable[int] = (),
    stuff_iou: dict[int, np.ndarray] | None = None,
) -> dict:
    """PQ, SQ, RQ overall / things / stuff, per class, and PQ† from summed counts.

    A group with no class having TP + FP + FN > 0 (nothing to find, nothing predicted) scores
    1.0 (panopticapi divides by zero there).
    """
    stuff = set(int(c) for c in stuff_classes)
    per_class = {}
    for c in sorted(counts):
        tp, fp, fn, iou = counts[c]
        if tp + fp + fn == 0:
            continue
        den = tp + 0.5 * fp + 0.5 * fn
        per_class[c] = {
            "PQ": iou / den,
            "SQ": iou / tp if tp else 0.0,
            "RQ": tp / den,
            "TP": int(tp),
            "FP": int(fp),
            "FN": int(fn),
            "isthing": c not in stuff,
        }

    def group(pred) -> dict[str, float]:
        sel = [v for c, v in per_class.items() if pred(c)]
        if not sel:
            return {"PQ": 1.0, "SQ": 1.0, "RQ": 1.0, "n": 0}
        return {k: float(np.mean([v[k] for v in sel])) for k in ("PQ", "SQ", "RQ")} | {
            "n": len(sel)
        }

    result = {
        "all": group(lambda c: True),
        "things": group(lambda c: c not in stuff),
        "stuff": group(lambda c: c in stuff),
        "per_class": per_class,
    }
    # PQ†: things by PQ, stuff by data-set IoU
    dagger = [v["PQ"] for c, v in per_class.items() if c not in stuff]
    for c, (inter, union) in sorted((stuff_iou or {}).items()):
        if c in stuff and union > 0:
            dagger.append(inter / union)
    result["PQ_dagger"] = float(np.mean(dagger)) if dagger else 1.0
    return result

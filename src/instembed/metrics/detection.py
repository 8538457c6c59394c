"""Precision, recall, F1 and matched-score statistics at an overlap threshold (StarDist's rules).

The numbers equal ``stardist.matching.matching`` / ``matching_dataset`` (Schmidt et al. 2018):

* score of a (gt, pred) pair: IoU (``criterion="iou"``), intersection over the ground truth
  (``"iot"``) or over the prediction (``"iop"``), **rounded to float32** as StarDist computes it;
* a pair may match when its float32 score >= ``thresh`` rounded to float32 (NumPy 2 promotion,
  as in StarDist); the matching is StarDist's one-to-one optimum:
  ``linear_sum_assignment`` of the full (n_true, n_pred) cost ``-(s >= thresh) - s / (2 n)``
  with ``n = min(n_true, n_pred)`` (as many matches as possible, then the largest summed score of
  *all* assigned pairs, below-threshold ones included);
* TP = matches, FP = n_pred - TP, FN = n_true - TP; precision TP/(TP+FP), recall TP/(TP+FN),
  accuracy TP/(TP+FP+FN), F1 2TP/(2TP+FP+FN), each 0 when TP = 0;
  mean_matched_score = ΣIoU(matches)/TP, mean_true_score = ΣIoU(matches)/n_true,
  panoptic_quality = ΣIoU(matches)/(TP + FP/2 + FN/2), each 0 when the denominator is 0.

Data set (``matching_dataset``): ``by_image=False`` sums TP, FP, FN, n_true, n_pred and the
matched scores over the images first, ``by_image=True`` averages the per-image ratios.

The summed scores are the exact float64 IoUs of the matched pairs (StarDist sums the float32
values): ratios differ from StarDist's by float32 rounding only (< 1e-6).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from instembed.metrics.overlap import as_instances, overlap_table

CRITERIA = ("iou", "iot", "iop")
#: per threshold: TP, FP, FN, summed score of the matches
COUNT_FIELDS = ("tp", "fp", "fn", "sum_score")


def pair_scores(
    inter: np.ndarray, gt_area: np.ndarray, pred_area: np.ndarray, criterion: str = "iou"
) -> np.ndarray:
    """(G, P) float64 matching score of every pair; 0 where the denominator is 0."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown matching criterion {criterion!r}; choose from {CRITERIA}")
    inter = np.asarray(inter, np.float64)
    ga = np.asarray(gt_area, np.float64)[:, None]
    pa = np.asarray(pred_area, np.float64)[None, :]
    den = {"iou": ga + pa - inter, "iot": ga + 0 * pa, "iop": pa + 0 * ga}[criterion]
    out = np.zeros(inter.shape, np.float64)
    np.divide(inter, den, out=out, where=den > 0)
    return out


def matching_counts(
    scores: np.ndarray,
    thresholds: Iterable[float] = (0.5,),
    pred_excused: np.ndarray | None = None,
) -> np.ndarray:
    """StarDist's optimal matching at each threshold.

    Args:
        scores: (G, P) float64 pair scores (:func:`pair_scores`).
        thresholds: score a pair needs to match.
        pred_excused: (P,) bool, predictions that are not false positives when unmatched
            (mostly on void or crowd); ``None`` = none (StarDist).

    Returns:
        (T, 4) float64: TP, FP, FN and the summed float64 score of the matched pairs.
    """
    scores = np.asarray(scores, np.float64)
    thresholds = [float(t) for t in thresholds]
    n_true, n_pred = scores.shape
    n = min(n_true, n_pred)
    s32 = scores.astype(np.float32)  # StarDist's dtype: every decision is taken on it
    out = np.zeros((len(thresholds), 4), np.float64)
    for k, thr in enumerate(thresholds):
        pm = np.zeros(n_pred, bool)
        tp, total = 0, 0.0
        if n > 0:
            ok = s32 >= thr
            cand_r, cand_c = np.nonzero(ok)
            if cand_r.size and (
                np.bincount(cand_r, minlength=n_true).max() > 1
                or np.bincount(cand_c, minlength=n_pred).max() > 1
            ):
                costs = -ok.astype(float) - s32 / (2 * n)
                r, c = linear_sum_assignment(costs)
                keep = ok[r, c]
                r, c = r[keep], c[keep]
            else:
                # every candidate pair is alone in its row and column: all are matched
                r, c = cand_r, cand_c
            tp = int(r.size)
            total = float(scores[r, c].sum())
            pm[c] = True
        fp_mask = ~pm if pred_excused is None else ~pm & ~np.asarray(pred_excused, bool)
        out[k] = (tp, int(fp_mask.sum()), n_true - tp, total)
    return out


def _ratio(num: float, den: float) -> float:
    return float(num / den) if abs(den) > 1e-10 else 0.0


def stats_from_counts(
    tp: float, fp: float, fn: float, sum_score: float, n_true: int, n_pred: int
) -> dict:
    """StarDist's fields from the counts (ratios 0 when TP = 0 or a denominator is 0)."""
    tp, fp, fn = int(tp), int(fp), int(fn)
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": tp / (tp + fp) if tp > 0 else 0.0,
        "recall": tp / (tp + fn) if tp > 0 else 0.0,
        "accuracy": tp / (tp + fp + fn) if tp > 0 else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp > 0 else 0.0,
        "n_true": int(n_true),
        "n_pred": int(n_pred),
        "mean_true_score": _ratio(sum_score, n_true),
        "mean_matched_score": _ratio(sum_score, tp),
        "panoptic_quality": _ratio(sum_score, tp + fp / 2 + fn / 2),
    }


def _image_counts(gt, pred, thresholds, criterion):
    gt = as_instances(gt, "gt")
    pred = as_instances(pred, "pred")
    table = overlap_table(gt, pred)
    gk = np.flatnonzero(table.gt_area > 0)
    pk = np.flatnonzero(table.pred_area > 0)
    table = table.select(gk, pk)
    s = pair_scores(table.inter, table.gt_area, table.pred_area, criterion)
    return matching_counts(s, thresholds), table.n_gt, table.n_pred


def match_stats(
    gt: np.ndarray,
    pred: np.ndarray,
    thresh: float | Sequence[float] = 0.5,
    criterion: str = "iou",
) -> dict | tuple[dict, ...]:
    """Matching statistics of one image, equal to ``stardist.matching.matching``.

    Args:
        gt: ground-truth label image (or (N, H, W) bool mask stack).
        pred: predicted label image (or mask stack).
        thresh: one threshold (returns a dict) or several (returns a tuple of dicts).
        criterion: ``"iou"``, ``"iot"`` or ``"iop"``.

    Returns:
        dict with ``criterion, thresh, tp, fp, fn, precision, recall, accuracy, f1, n_true,
        n_pred, mean_true_score, mean_matched_score, panoptic_quality``.
    """
    single = np.isscalar(thresh)
    thr = [float(thresh)] if single else [float(t) for t in thresh]
    counts, n_true, n_pred = _image_counts(gt, pred, thr, criterion)
    res = tuple(
        {"criterion": criterion, "thresh": t, **stats_from_counts(*c, n_true, n_pred)}
        for t, c in zip(thr, counts)
    )
    return res[0] if single else res


def match_stats_dataset(
    gts: Iterable[np.ndarray],
    preds: Iterable[np.ndarray],
    thresh: float | Sequence[float] = 0.5,
    criterion: str = "iou",
    by_image: bool = False,
) -> dict | tuple[dict, ...]:
    """Data-set statistics, equal to ``stardist.matching.matching_dataset``.

    ``by_image=False`` pools TP, FP, FN, n_true, n_pred and the matched scores over the images
    before taking the ratios; ``by_image=True`` averages the per-image ratios (TP, FP, FN,
    n_true, n_pred are summed either way).
    """
    single = np.isscalar(thresh)
    thr = [float(thresh)] if single else [float(t) for t in thresh]
    per_image = []
    for g, p in zip(gts, preds, strict=True):
        counts, n_true, n_pred = _image_counts(g, p, thr, criterion)
        per_image.append((counts, n_true, n_pred))
    if not per_image:
        raise ValueError("match_stats_dataset needs at least one image")
    return _reduce(per_image, thr, criterion, by_image, single)


def _reduce(per_image, thr, criterion, by_image, single):
    counts = np.stack([c for c, _, _ in per_image])  # (I, T, 4)
    n_true = sum(n for _, n, _ in per_image)
    n_pred = sum(n for _, _, n in per_image)
    res = []
    for k, t in enumerate(thr):
        tp, fp, fn, total = counts[:, k].sum(0)
        row = stats_from_counts(tp, fp, fn, total, n_true, n_pred)
        if by_image:
            rows = [stats_from_counts(*c[k], nt, npd) for c, nt, npd in per_image]
            for key in (
                "precision",
                "recall",
                "accuracy",
                "f1",
                "mean_true_score",
                "mean_matched_score",
                "panoptic_quality",
            ):
                row[key] = float(np.mean([r[key] for r in rows]))
        res.append({"criterion": criterion, "thresh": t, "by_image": bool(by_image), **row})
    res = tuple(res)
    return res[0] if single else res

"""COCO mask AP, computed the way pycocotools' ``COCOeval`` (iouType="segm") computes it.

Per image and category (:func:`match_image`):

1. predictions are ranked by score (stable sort, ties keep their input order) and the first
   ``max_dets`` kept;
2. IoU between every prediction and every ground truth; for a *crowd* ground truth the IoU is
   ``intersection / prediction area``;
3. for each area range, ground truths that are crowd or whose area lies outside the range are
   "ignored"; for each IoU threshold t in .50:.05:.95, predictions in score order take the
   not-yet-taken, non-ignored ground truth of highest IoU >= t (ties: the later one); only when
   there is none, the ignored ground truth of highest IoU >= t (crowd ones can be taken again).
   A prediction matched to an ignored ground truth, or unmatched with an area outside the range,
   is ignored.

Over the data set (:func:`accumulate`), per category and area range: all kept predictions of
all images ranked by score (stable), cumulative TP/FP, precision made monotone, sampled at the
101 recall points 0:.01:1 (``searchsorted`` left; 0 past the last recall). A category with no
non-ignored ground truth is undefined (pycocotools' -1) and left out of the means.

References: Lin et al. 2014, "Microsoft COCO"; the behaviour matched is pycocotools 2.0
``cocoeval.py`` (``evaluateImg`` and ``accumulate``), checked to 1e-6 in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
# name -> (min area, max area), both inclusive, as in pycocotools
AREA_RANGES: dict[str, tuple[float, float]] = {
    "all": (0.0, 1e5**2),
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e5**2),
}


@dataclass
class CocoRecord:
    """Matching result of one (image, category, area range): additive over images.

    Attributes:
        scores: (D,) float64 scores of the kept predictions, in rank order.
        matched: (T, D) bool, prediction matched at threshold t.
        ignored: (T, D) bool, prediction ignored at threshold t.
        n_gt: number of non-ignored ground truths.
        n_dt: number of kept predictions whose area lies in the range.
    """

    scores: np.ndarray
    matched: np.ndarray
    ignored: np.ndarray
    n_gt: int
    n_dt: int = 0


def coco_iou(
    inter: np.ndarray, gt_area: np.ndarray, dt_area: np.ndarray, gt_crowd: np.ndarray
) -> np.ndarray:
    """(G, D) float64 IoU; crowd ground truths use intersection / prediction area."""
    union = gt_area[:, None] + dt_area[None, :] - inter
    union = np.where(gt_crowd[:, None], np.broadcast_to(dt_area[None, :], union.shape), union)
    out = np.zeros(inter.shape, np.float64)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def _match_fast(m_dg: np.ndarray, gt_ignore: np.ndarray, thresholds: np.ndarray):
    """Matching when no non-crowd ground truth can be wanted by two predictions.

    ``m_dg`` (D, G) IoU with ground truths in pycocotools' order (non-ignored first).
    Returns (T, D) matched and matched-to-ignored.
    """
    d = m_dg.shape[0]
    out = []
    for part in (m_dg[:, ~gt_ignore], m_dg[:, gt_ignore]):
        if part.shape[1] == 0:
            out.append(np.full(d, -np.inf))
        else:
            out.append(part.max(1))
    best_real, best_ign = out
    thr = np.minimum(thresholds, 1 - 1e-10)[:, None]
    real = best_real[None, :] >= thr
    ign = (best_ign[None, :] >= thr) & ~real
    return real | ign, ign


def _match_loop(
    m_dg: np.ndarray, gt_ignore: np.ndarray, gt_crowd: np.ndarray, thresholds: np.ndarray
):
    """The general greedy matching, one prediction at a time (pycocotools' loop)."""
    n_t, (d, g) = thresholds.size, m_dg.shape
    matched = np.zeros((n_t, d), bool)
    ignored = np.zeros((n_t, d), bool)
    for ti, t in enumerate(thresholds):
        thr = min(float(t), 1 - 1e-10)
        taken = np.zeros(g, bool)
        for di in range(d):
            free = ~taken | gt_crowd
            row = m_dg[di]
            chosen = -1
            for group in (~gt_ignore, gt_ignore):
                cand = np.flatnonzero(free & group & (row >= thr))
                if cand.size:
                    vals = row[cand]
                    # the highest IoU, the later ground truth on ties
                    chosen = int(cand[np.flatnonzero(vals == vals.max())[-1]])
                    break
            if chosen < 0:
                continue
            matched[ti, di] = True
            ignored[ti, di] = gt_ignore[chosen]
            taken[chosen] = True
    return matched, ignored


def match_image(
    inter: np.ndarray,
    gt_area: np.ndarray,
    dt_area: np.ndarray,
    scores: np.ndarray,
    gt_crowd: np.ndarray,
    *,
    max_dets: int = 100,
    thresholds: np.ndarray = IOU_THRESHOLDS,
    area_ranges: dict[str, tuple[float, float]] = AREA_RANGES,
) -> dict[str, CocoRecord]:
    """COCO matching of one image and one category, for each area range.

    Args:
        inter: (G, D) intersection pixel counts.
        gt_area: (G,) ground-truth areas.
        dt_area: (D,) prediction areas.
        scores: (D,) prediction scores.
        gt_crowd: (G,) bool, crowd ground truths.
        max_dets: predictions kept per image and category (highest scores).

    Returns:
        ``{area range name: CocoRecord}``.
    """
    order = np.argsort(-np.asarray(scores, np.float64), kind="mergesort")[:max_dets]
    scores = np.asarray(scores, np.float64)[order]
    dt_area = np.asarray(dt_area)[order]
    gt_crowd = np.asarray(gt_crowd, bool)
    iou = coco_iou(np.asarray(inter)[:, order], gt_area, dt_area, gt_crowd)
    n_t, d = thresholds.size, order.size
    lowest = min(float(thresholds.min()), 1 - 1e-10)
    # a non-crowd ground truth wanted by two predictions makes the greedy order matter
    wanted = (iou >= lowest).sum(1)
    conflict = bool(np.any((wanted > 1) & ~gt_crowd))
    records = {}
    for name, (lo, hi) in area_ranges.items():
        gt_ignore = gt_crowd | (gt_area < lo) | (gt_area > hi)
        gt_order = np.argsort(gt_ignore, kind="mergesort")
        m_dg = iou[gt_order].T
        ig_s = gt_ignore[gt_order]
        if d == 0:
            matched = np.zeros((n_t, 0), bool)
            ignored = matched.copy()
        elif conflict:
            matched, ignored = _match_loop(m_dg, ig_s, gt_crowd[gt_order], thresholds)
        else:
            matched, ignored = _match_fast(m_dg, ig_s, thresholds)
        outside = (dt_area < lo) | (dt_area > hi)
        ignored = ignored | (~matched & outside[None, :])
        records[name] = CocoRecord(
            scores,
            matched,
            ignored,
            int(np.count_nonzero(~gt_ignore)),
            int(np.count_nonzero(~outside)),
        )
    return records


def accumulate(
    records: list[CocoRecord], max_dets: int = 100, thresholds: np.ndarray = IOU_THRESHOLDS
) -> tuple[np.ndarray, np.ndarray] | None:
    """Precision (T, R) at the 101 recall points and recall (T,) of one category and area range.

    ``records`` are in image order. Returns ``None`` when there is no non-ignored ground truth
    (pycocotools' -1).
    """
    n_gt = sum(r.n_gt for r in records)
    if n_gt == 0:
        return None
    n_t = thresholds.size
    if records:
        scores = np.concatenate([r.scores[:max_dets] for r in records])
        matched = np.concatenate([r.matched[:, :max_dets] for r in records], axis=1)
        ignored = np.concatenate([r.ignored[:, :max_dets] for r in records], axis=1)
    else:
        scores = np.zeros(0)
        matched = ignored = np.zeros((n_t, 0), bool)
    order = np.argsort(-scores, kind="mergesort")
    matched, ignored = matched[:, order], ignored[:, order]
    tp = np.cumsum(matched & ~ignored, axis=1).astype(np.float64)
    fp = np.cumsum(~matched & ~ignored, axis=1).astype(np.float64)
    n_rec = RECALL_THRESHOLDS.size
    precision = np.zeros((n_t, n_rec))
    recall = np.zeros(n_t)
    nd = tp.shape[1]
    if nd == 0:
        return precision, recall
    rc = tp / n_gt
    pr = tp / (fp + tp + np.spacing(1))
    recall[:] = rc[:, -1]
    # precision envelope: the maximum of the precisions to the right
    pr = np.flip(np.maximum.accumulate(np.flip(pr, 1), axis=1), 1)
    for ti in range(n_t):
        idx = np.searchsorted(rc[ti], RECALL_THRESHOLDS, side="left")
        ok = idx < nd
        precision[ti, ok] = pr[ti, idx[ok]]
    return precision, recall


def summarize(
    per_category: dict[object, dict[str, list[CocoRecord]]],
    max_dets: int = 100,
    thresholds: np.ndarray = IOU_THRESHOLDS,
) -> tuple[dict[str, float | None], dict]:
    """COCO AP numbers from per-category, per-area-range record lists.

    Returns ``(stats, per_class)``: ``stats`` maps AP, AP50, AP75, APs, APm, APl, AR to a float or
    ``None`` where pycocotools would report -1 (no non-ignored ground truth); ``per_class`` maps
    each category to its AP (area "all") or ``None``.
    """
    i50 = (
        int(np.flatnonzero(np.isclose(thresholds, 0.5))[0])
        if np.any(np.isclose(thresholds, 0.5))
        else None
    )
    i75 = (
        int(np.flatnonzero(np.isclose(thresholds, 0.75))[0])
        if np.any(np.isclose(thresholds, 0.75))
        else None
    )
    prec: dict[str, list[np.ndarray]] = {a: [] for a in AREA_RANGES}
    rec_all: list[np.ndarray] = []
    per_class: dict = {}
    for cat, by_area in per_category.items():
        for area in AREA_RANGES:
            res = accumulate(by_area.get(area, []), max_dets, thresholds)
            if area == "all":
                per_class[cat] = None if res is None else float(np.mean(res[0]))
            if res is None:
                continue
            prec[area].append(res[0])
            if area == "all":
                rec_all.append(res[1])

    def mean(arrs: list[np.ndarray], t: int | None = None) -> float | None:
        if not arrs:
            return None
        stack = np.stack(arrs, axis=-1)  # (T, R, K)
        if t is not None:
            stack = stack[t]
        return float(np.mean(stack))

    stats = {
        "AP": mean(prec["all"]),
        "AP50": mean(prec["all"], i50) if i50 is not None else None,
        "AP75": mean(prec["all"], i75) if i75 is not None else None,
        "APs": mean(prec["small"]),
        "APm": mean(prec["medium"]),
        "APl": mean(prec["large"]),
        "AR": float(np.mean(np.stack(rec_all))) if rec_all else None,
    }
    return stats, per_class

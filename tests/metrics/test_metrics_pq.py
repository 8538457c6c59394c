"""PQ / SQ / RQ / PQ† against a slow, literal re-implementation of panopticapi's rules.

The reference below follows ``panopticapi/evaluation.py`` (``pq_compute_single_core`` and
``PQStat.pq_average``) step by step on panoptic id maps: a Counter of (gt id, pred id) pixel
pairs, VOID = 0 in the ground truth, crowd regions recorded per category, the "more than half on
void or same-class crowd" rule for unmatched predictions. Our scenes are translated to that format:
ground-truth background that is not void becomes a segment of a category that is not scored.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from instembed.metrics import InstanceEvaluator, panoptic_quality

VOID = 0
BG_CAT = 99  # ground-truth background: a segment of a category that is never scored


def reference_pq_single(gt_map, gt_segms, pred_map, pred_segms, stats):
    """panopticapi's per-image rules; ``stats`` is {cat: [tp, fp, fn, iou]} updated in place."""
    pairs = Counter(zip(gt_map.ravel().tolist(), pred_map.ravel().tolist()))

    def row(c):
        return stats.setdefault(c, [0, 0, 0, 0.0])

    gt_matched, pred_matched = set(), set()
    for (g, p), inter in pairs.items():
        if g not in gt_segms or p not in pred_segms:
            continue
        if gt_segms[g]["iscrowd"] == 1:
            continue
        if gt_segms[g]["category_id"] != pred_segms[p]["category_id"]:
            continue
        union = pred_segms[p]["area"] + gt_segms[g]["area"] - inter - pairs.get((VOID, p), 0)
        iou = inter / union
        if iou > 0.5:
            r = row(gt_segms[g]["category_id"])
            r[0] += 1
            r[3] += iou
            gt_matched.add(g)
            pred_matched.add(p)
    crowd_by_cat = {}
    for g, info in gt_segms.items():
        if g in gt_matched:
            continue
        if info["iscrowd"] == 1:
            crowd_by_cat[info["category_id"]] = g
            continue
        row(info["category_id"])[2] += 1
    for p, info in pred_segms.items():
        if p in pred_matched:
            continue
        inter = pairs.get((VOID, p), 0)
        if info["category_id"] in crowd_by_cat:
            inter += pairs.get((crowd_by_cat[info["category_id"]], p), 0)
        if inter / info["area"] > 0.5:
            continue
        row(info["category_id"])[1] += 1


def reference_pq_average(stats, categories, isthing=None):
    pq = sq = rq = 0.0
    n = 0
    for c, thing in categories.items():
        if isthing is not None and thing != isthing:
            continue
        tp, fp, fn, iou = stats.get(c, [0, 0, 0, 0.0])
        if tp + fp + fn == 0:
            continue
        n += 1
        pq += iou / (tp + 0.5 * fp + 0.5 * fn)
        sq += iou / tp if tp != 0 else 0
        rq += tp / (tp + 0.5 * fp + 0.5 * fn)
    return pq / n, sq / n, rq / n


def random_labels(rng, h, w, n, n_classes, size=(3, 14)):
    """A label image of up to n random rectangles (later on top), and a class per id."""
    lab = np.zeros((h, w), np.int32)
    for k in range(1, n + 1):
        y, x = rng.integers(0, h), rng.integers(0, w)
        dy, dx = rng.integers(*size, 2)
        lab[y : y + dy, x : x + dx] = k
    ids = np.unique(lab)
    ids = ids[ids > 0]
    classes = {int(i): int(rng.integers(1, n_classes + 1)) for i in ids}
    return lab, classes


def perturbed_prediction(rng, gt, gt_cls, n_classes):
    """Predictions: each gt object shifted a little (some dropped, some relabelled) + extras."""
    h, w = gt.shape
    pred = np.zeros_like(gt)
    cls = {}
    nid = 1
    for i, c in gt_cls.items():
        if rng.random() < 0.15:
            continue
        m = np.roll(gt == i, tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
        pred[m] = nid
        cls[nid] = c if rng.random() < 0.85 else int(rng.integers(1, n_classes + 1))
        nid += 1
    extra, extra_cls = random_labels(rng, h, w, int(rng.integers(0, 4)), n_classes)
    for i, c in extra_cls.items():
        pred[extra == i] = nid
        cls[nid] = c
        nid += 1
    present = set(np.unique(pred).tolist()) - {0}
    return pred, {i: c for i, c in cls.items() if i in present}


def make_scene(rng, h=40, w=48, n_classes=3, stuff=(), void=True):
    gt, gt_cls = random_labels(rng, h, w, int(rng.integers(0, 10)), n_classes)
    ids = sorted(gt_cls)
    crowd = {i: False for i in ids}
    # at most one crowd region per category (the COCO panoptic convention)
    used = set()
    for i in ids:
        if rng.random() < 0.2 and gt_cls[i] not in used:
            crowd[i] = True
            used.add(gt_cls[i])
    pred, pred_cls = perturbed_prediction(rng, gt, gt_cls, n_classes)
    ignore = np.zeros((h, w), bool)
    if void:
        for _ in range(int(rng.integers(0, 3))):
            y, x = rng.integers(0, h), rng.integers(0, w)
            ignore[y : y + rng.integers(2, 12), x : x + rng.integers(2, 12)] = True
    gt_sem = pred_sem = None
    if stuff:
        gt_sem = np.zeros((h, w), np.int64)
        pred_sem = np.zeros((h, w), np.int64)
        for c in stuff:
            y, x = rng.integers(0, h), rng.integers(0, w)
            dy, dx = rng.integers(5, 25, 2)
            region = np.zeros((h, w), bool)
            region[y : y + dy, x : x + dx] = True
            gt_sem[region & (gt == 0)] = c
            shifted = np.roll(region, tuple(rng.integers(-4, 5, 2)), axis=(0, 1))
            if rng.random() < 0.85:
                pred_sem[shifted & (pred == 0)] = c
    return dict(
        gt=gt,
        pred=pred,
        gt_cls=gt_cls,
        pred_cls=pred_cls,
        crowd=crowd,
        ignore=ignore,
        gt_sem=gt_sem,
        pred_sem=pred_sem,
    )


def to_panoptic(sc, stuff):
    """Translate a scene to panoptic id maps + segment dicts as panopticapi sees them."""
    gt, pred, ignore = sc["gt"], sc["pred"], sc["ignore"]
    h, w = gt.shape
    gt_map = np.zeros((h, w), np.int64)
    gt_segms = {}
    nid = 1
    bg = gt == 0
    if sc["gt_sem"] is not None:
        for c in stuff:
            m = (sc["gt_sem"] == c) & ~ignore & (gt == 0)
            if m.any():
                gt_map[m] = nid
                gt_segms[nid] = {"category_id": c, "iscrowd": 0, "area": int(m.sum())}
                nid += 1
            bg &= sc["gt_sem"] != c
    for i, c in sc["gt_cls"].items():
        m = (gt == i) & ~ignore
        if m.any():
            gt_map[m] = nid
            gt_segms[nid] = {"category_id": c, "iscrowd": int(sc["crowd"][i]), "area": int(m.sum())}
            nid += 1
    m = bg & ~ignore
    if m.any():
        gt_map[m] = nid
        gt_segms[nid] = {"category_id": BG_CAT, "iscrowd": 0, "area": int(m.sum())}
    pred_map = np.zeros((h, w), np.int64)
    pred_segms = {}
    nid = 1
    if sc["pred_sem"] is not None:
        for c in stuff:
            m = (sc["pred_sem"] == c) & (pred == 0)
            if m.any():
                pred_map[m] = nid
                pred_segms[nid] = {"category_id": c, "area": int(m.sum())}
                nid += 1
    for i, c in sc["pred_cls"].items():
        m = pred == i
        pred_map[m] = nid
        pred_segms[nid] = {"category_id": c, "area": int(m.sum())}
        nid += 1
    return gt_map, gt_segms, pred_map, pred_segms


def _ours(scenes, stuff):
    ev = InstanceEvaluator(("pq",), stuff_classes=stuff)
    for sc in scenes:
        ev.add(
            sc["gt"],
            sc["pred"],
            gt_classes=sc["gt_cls"],
            pred_classes=sc["pred_cls"],
            crowd=sc["crowd"],
            ignore=sc["ignore"],
            gt_semantic=sc["gt_sem"],
            pred_semantic=sc["pred_sem"],
        )
    return ev.summary(per_image=False)


@pytest.mark.parametrize("seed", range(4))
def test_pq_things_equals_panopticapi_rules(seed):
    rng = np.random.default_rng(seed)
    scenes = [make_scene(rng) for _ in range(12)]
    stats = {}
    for sc in scenes:
        reference_pq_single(*to_panoptic(sc, ()), stats)
    cats = {1: True, 2: True, 3: True}
    ref = reference_pq_average(stats, cats)
    s = _ours(scenes, ())
    assert (s["PQ"], s["SQ"], s["RQ"]) == pytest.approx(ref, abs=1e-12)
    for c, (tp, fp, fn, iou) in stats.items():
        if c == BG_CAT or tp + fp + fn == 0:
            continue
        got = s["per_class"]["PQ"][c]
        assert (got["TP"], got["FP"], got["FN"]) == (tp, fp, fn)
        assert got["PQ"] == pytest.approx(iou / (tp + 0.5 * fp + 0.5 * fn), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_pq_things_and_stuff_and_pq_dagger(seed):
    rng = np.random.default_rng(100 + seed)
    stuff = (10, 11)
    scenes = [make_scene(rng, stuff=stuff) for _ in range(10)]
    stats = {}
    st_inter = {c: 0 for c in stuff}
    st_union = {c: 0 for c in stuff}
    for sc in scenes:
        reference_pq_single(*to_panoptic(sc, stuff), stats)
        void = sc["ignore"]
        for c in stuff:
            g = (sc["gt_sem"] == c) & (sc["gt"] == 0) & ~void
            p = (sc["pred_sem"] == c) & (sc["pred"] == 0) & ~void
            st_inter[c] += int((g & p).sum())
            st_union[c] += int((g | p).sum())
    cats = {1: True, 2: True, 3: True, 10: False, 11: False}
    s = _ours(scenes, stuff)
    assert (s["PQ"], s["SQ"], s["RQ"]) == pytest.approx(reference_pq_average(stats, cats))
    assert (s["PQ_th"], s["SQ_th"], s["RQ_th"]) == pytest.approx(
        reference_pq_average(stats, cats, True)
    )
    assert (s["PQ_st"], s["SQ_st"], s["RQ_st"]) == pytest.approx(
        reference_pq_average(stats, cats, False)
    )
    # PQ†: things by PQ_c, stuff by data-set IoU (Porzi et al. 2019)
    vals = []
    for c in (1, 2, 3):
        tp, fp, fn, iou = stats.get(c, [0, 0, 0, 0.0])
        if tp + fp + fn:
            vals.append(iou / (tp + 0.5 * fp + 0.5 * fn))
    vals += [st_inter[c] / st_union[c] for c in stuff if st_union[c]]
    assert s["PQ_dagger"] == pytest.approx(np.mean(vals))


def test_pq_hand_example_with_void_and_crowd():
    # gt: object 1 (class 1) rows 0-3 x cols 0-3 (16 px); crowd region 2 (class 1) cols 6-9.
    # void: column 4 of rows 0-3.
    # pred 1: rows 0-3 x cols 1-4 (16 px, 4 of them on void): evaluated 12 px, inter 12 with
    #   gt 1 -> IoU = 12 / (16 + 12 - 12) = 0.75 > 0.5: TP (void removed from the union).
    # pred 2: rows 0-1 x cols 5-8 (8 px), 6 of them on the crowd region -> 6/8 > 0.5: not FP.
    # pred 3: rows 6-7 x cols 0-3 (8 px) on background: FP.
    # => TP 1, FP 1, FN 0: SQ = 0.75, RQ = 1 / (1 + 0.5) = 2/3, PQ = 0.5.
    gt = np.zeros((8, 10), np.int32)
    gt[0:4, 0:4] = 1
    gt[:, 6:10] = 2
    pred = np.zeros((8, 10), np.int32)
    pred[0:4, 1:5] = 1
    pred[0:2, 5:9] = 2
    pred[6:8, 0:4] = 3
    ignore = np.zeros((8, 10), bool)
    ignore[0:4, 4] = True
    s = panoptic_quality(gt, pred, crowd=[False, True], ignore=ignore)
    assert s["SQ"] == pytest.approx(0.75)
    assert s["RQ"] == pytest.approx(2 / 3)
    assert s["PQ"] == pytest.approx(0.5)


def test_pq_strict_threshold_at_one_half():
    # gt 4 px, pred covers them and 4 more: IoU = 4 / 8 = 0.5 exactly -> no match (IoU > 0.5)
    gt = np.zeros((2, 4), np.int32)
    gt[:, :2] = 1
    pred = np.ones((2, 4), np.int32)
    s = panoptic_quality(gt, pred)
    assert (s["PQ"], s["RQ"]) == (0.0, 0.0)


def test_pq_symmetric_and_id_invariant():
    rng = np.random.default_rng(5)
    for _ in range(10):
        sc = make_scene(rng, n_classes=1, void=False)
        a = panoptic_quality(sc["gt"], sc["pred"])
        b = panoptic_quality(sc["pred"], sc["gt"])
        assert (a["PQ"], a["SQ"], a["RQ"]) == pytest.approx((b["PQ"], b["SQ"], b["RQ"]))
        perm = np.concatenate([[0], rng.permutation(np.arange(1, sc["pred"].max() + 1)) + 50])
        c = panoptic_quality(sc["gt"], perm[sc["pred"]])
        assert (a["PQ"], a["SQ"], a["RQ"]) == pytest.approx((c["PQ"], c["SQ"], c["RQ"]))

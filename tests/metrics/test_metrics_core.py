"""Hand-derived values, properties and empty cases of the instance metrics."""

from __future__ import annotations

import itertools
import math
import pickle

import numpy as np
import pytest

from conftest import require
from instembed.metrics import (
    InstanceEvaluator,
    adjusted_rand_index,
    evaluate_image,
    miou,
    overlap_table,
)
from instembed.metrics.matching import match_counts

ALL_KEYS = [
    "SBD",
    "BestDice_gt_pred",
    "BestDice_pred_gt",
    "FBD",
    "DiC",
    "absDiC",
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AP_dsb@0.5",
    "AP_dsb@0.5:0.95",
    "PQ",
    "SQ",
    "RQ",
]


def hand_scene():
    """gt: two 2x2 objects; pred: 6 px over gt 1, 1 px in gt 2, 1 px on background.

    gt              pred
    1 1 0 0         1 1 1 0
    1 1 0 0         1 1 1 0
    0 0 2 2         4 0 0 0
    0 0 2 2         0 0 0 3
    """
    gt = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 2, 2], [0, 0, 2, 2]])
    pred = np.array([[1, 1, 1, 0], [1, 1, 1, 0], [4, 0, 0, 0], [0, 0, 0, 3]])
    return gt, pred


def test_hand_values_all_metrics():
    gt, pred = hand_scene()
    # scores in the order of the sorted pred ids 1, 3, 4
    s = evaluate_image(gt, pred, scores=[0.9, 0.8, 0.7])
    # Dice(g1, p1) = 2*4/(4+6) = 0.8; Dice(g2, p3) = 2*1/(4+1) = 0.4; p4 touches nothing.
    # BestDice gt->pred = (0.8 + 0.4) / 2 = 0.6; pred->gt = (0.8 + 0.4 + 0) / 3 = 0.4.
    assert s["BestDice_gt_pred"] == pytest.approx(0.6)
    assert s["BestDice_pred_gt"] == pytest.approx(0.4)
    assert s["SBD"] == pytest.approx(0.4)
    # foreground: gt 8 px, pred 8 px, both 4 + 1 = 5 -> FBD = 10 / 16
    assert s["FBD"] == pytest.approx(0.625)
    assert (s["DiC"], s["absDiC"]) == (1.0, 1.0)
    # IoU(g1, p1) = 4/6 = 0.667, IoU(g2, p3) = 1/4. AP_dsb: TP 1, FP 2, FN 1 -> 1/4 for
    # tau in {.5, .55, .6, .65}; TP 0 for tau >= .7 -> 0. Mean over 10 thresholds = 1/10.
    assert s["AP_dsb@0.5"] == pytest.approx(0.25)
    assert s["AP_dsb@0.5:0.95"] == pytest.approx(0.1)
    # PQ: TP 1 (IoU 2/3 > .5), FP 2, FN 1: SQ 2/3, RQ 1/(1 + 1 + .5) = .4, PQ = 4/15
    assert s["SQ"] == pytest.approx(2 / 3)
    assert s["RQ"] == pytest.approx(0.4)
    assert s["PQ"] == pytest.approx(4 / 15)
    # COCO: p1 (score .9) is the TP for t <= .65, then two FPs: precision 1 up to recall .5,
    # so 51 of 101 recall points have precision 1 -> AP50 = 51/101; no match for t >= .7.
    assert s["AP50"] == pytest.approx(51 / 101)
    assert s["AP75"] == 0.0
    assert s["AP"] == pytest.approx(4 / 10 * 51 / 101)
    # every object is small (< 32^2 px): APs = AP; no medium/large object and no prediction
    # there -> 1.0 by the documented convention, flagged as undefined
    assert s["APs"] == pytest.approx(s["AP"])
    assert (s["APm"], s["APl"]) == (1.0, 1.0)
    assert set(s["coco_undefined"]) == {"APm", "APl"}


def test_coco_ranking_uses_scores():
    # the false positive p4 ranked first: at recall .5 precision is 1/2 -> AP50 = 51 * .5 / 101
    gt, pred = hand_scene()
    s = evaluate_image(gt, pred, scores={1: 0.5, 3: 0.1, 4: 0.95}, metrics=("coco",))
    assert s["AP50"] == pytest.approx(51 * 0.5 / 101)


def _finite(s):
    return all(isinstance(s[k], float) and math.isfinite(s[k]) for k in ALL_KEYS)


def test_empty_prediction():
    gt, _ = hand_scene()
    s = evaluate_image(gt, np.zeros_like(gt))
    assert _finite(s)
    # nothing found: CVPPP BestDice is 0 both ways, FBD = 0/(8+0), DiC = 0 - 2
    assert (s["SBD"], s["FBD"], s["DiC"], s["absDiC"]) == (0.0, 0.0, -2.0, 2.0)
    # COCO: 2 objects, no prediction -> precision 0 everywhere
    assert s["AP"] == 0.0 and s["APs"] == 0.0
    assert (s["AP_dsb@0.5"], s["PQ"], s["SQ"], s["RQ"]) == (0.0, 0.0, 0.0, 0.0)


def test_empty_ground_truth():
    _, pred = hand_scene()
    s = evaluate_image(np.zeros_like(pred), pred)
    assert _finite(s)
    assert (s["SBD"], s["FBD"], s["DiC"]) == (0.0, 0.0, 3.0)
    # no ground truth but predictions: pycocotools' -1 -> 0.0 (every prediction is wrong)
    assert s["AP"] == 0.0 and "AP" in s["coco_undefined"]
    assert (s["AP_dsb@0.5"], s["PQ"]) == (0.0, 0.0)


def test_both_empty():
    z = np.zeros((5, 6), np.int32)
    s = evaluate_image(z, z)
    assert _finite(s)
    # CVPPP: BestDice of an empty image is 0, a Dice of two empty sets is 0
    assert (s["SBD"], s["FBD"], s["DiC"]) == (0.0, 0.0, 0.0)
    # nothing to find and nothing found: AP (undefined in pycocotools), AP_dsb and PQ are 1
    assert (s["AP"], s["AP_dsb@0.5"], s["PQ"]) == (1.0, 1.0, 1.0)
    stack = np.zeros((0, 5, 6), bool)
    assert _finite(evaluate_image(stack, stack))


def random_label_image(rng, shape=(30, 40), n=8):
    lab = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        dy, dx = rng.integers(3, 12, 2)
        lab[y : y + dy, x : x + dx] = k
    return lab


def noisy_copy(rng, lab):
    out = np.roll(lab, tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
    out[rng.random(lab.shape) < 0.05] = 0
    return out


def _relabel(rng, lab, offset=7):
    ids = np.unique(lab)
    ids = ids[ids > 0]
    perm = rng.permutation(ids.size) + offset
    lut = np.zeros(lab.max() + 1, np.int64)
    lut[ids] = perm
    return lut[lab], dict(zip(ids.tolist(), perm.tolist()))


def test_permuting_instance_ids_changes_nothing():
    rng = np.random.default_rng(0)
    for _ in range(5):
        gt = random_label_image(rng)
        pred = noisy_copy(rng, gt)
        ids = np.unique(pred)
        ids = ids[ids > 0]
        scores = {int(i): float(rng.random()) for i in ids}
        a = evaluate_image(gt, pred, scores=scores)
        gt2, _ = _relabel(rng, gt)
        pred2, mapping = _relabel(rng, pred, offset=100)
        scores2 = {mapping[i]: s for i, s in scores.items()}
        b = evaluate_image(gt2, pred2, scores=scores2)
        for k in ALL_KEYS:
            assert a[k] == pytest.approx(b[k]), k


def test_swapping_gt_and_pred_for_symmetric_metrics():
    rng = np.random.default_rng(1)
    for _ in range(5):
        gt = random_label_image(rng)
        pred = noisy_copy(rng, random_label_image(rng) if rng.random() < 0.3 else gt)
        a = evaluate_image(gt, pred)
        b = evaluate_image(pred, gt)
        for k in ("SBD", "FBD", "absDiC", "AP_dsb@0.5", "AP_dsb@0.5:0.95", "PQ", "SQ", "RQ"):
            assert a[k] == pytest.approx(b[k]), k
        assert a["DiC"] == -b["DiC"]
        assert a["BestDice_gt_pred"] == pytest.approx(b["BestDice_pred_gt"])


def test_perfect_prediction_scores_one():
    rng = np.random.default_rng(2)
    gt = random_label_image(rng)
    s = evaluate_image(gt, gt)
    for k in ("SBD", "FBD", "AP", "AP50", "AP75", "AP_dsb@0.5", "AP_dsb@0.5:0.95", "PQ"):
        assert s[k] == pytest.approx(1.0), k
    assert s["DiC"] == 0.0


def test_label_image_and_stack_give_the_same_table():
    rng = np.random.default_rng(3)
    gt = random_label_image(rng)
    pred = noisy_copy(rng, gt)
    ignore = rng.random(gt.shape) < 0.1
    a = overlap_table(gt, pred, ignore)
    gstack = np.stack([gt == i for i in a.gt_ids])
    pstack = np.stack([pred == i for i in a.pred_ids])
    b = overlap_table(gstack, pstack, ignore)
    c = overlap_table(gt, pstack, ignore)
    for t in (b, c):
        for f in ("inter", "gt_area", "pred_area", "pred_void", "gt_void"):
            assert np.array_equal(getattr(a, f), getattr(t, f)), f
        assert (a.fg_inter, a.gt_fg, a.pred_fg, a.n_pixels) == (
            t.fg_inter,
            t.gt_fg,
            t.pred_fg,
            t.n_pixels,
        )


def test_overlap_table_against_loops():
    # slow reference: count every pair with boolean masks
    rng = np.random.default_rng(4)
    gt = random_label_image(rng) * 3  # non-consecutive ids 3, 6, ...
    pred = noisy_copy(rng, random_label_image(rng))
    ignore = rng.random(gt.shape) < 0.2
    t = overlap_table(gt, pred, ignore)
    for i, g in enumerate(t.gt_ids):
        assert t.gt_area[i] == ((gt == g) & ~ignore).sum()
        for j, p in enumerate(t.pred_ids):
            assert t.inter[i, j] == ((gt == g) & (pred == p) & ~ignore).sum()
    for j, p in enumerate(t.pred_ids):
        assert t.pred_void[j] == ((pred == p) & ignore).sum()


def test_overlapping_stack_foreground_counts_pixels_once():
    # two gt masks overlapping on 2 px: foreground = 6 px, not 8
    gt = np.zeros((2, 2, 4), bool)
    gt[0, :, 0:2] = True
    gt[1, :, 1:3] = True
    pred = np.zeros((2, 4), np.int32)
    pred[:, 0:3] = 1
    t = overlap_table(gt, pred)
    assert t.gt_fg == 6 and t.fg_inter == 6
    assert t.inter.tolist() == [[4], [4]]
    # FBD = 2 * 6 / (6 + 6) = 1
    assert evaluate_image(gt, pred)["FBD"] == 1.0


def test_hungarian_beats_greedy():
    # IoU(A,P)=.6, IoU(A,Q)=.4, IoU(B,P)=.4 at tau=.35: greedy by IoU matches A-P only (TP 1);
    # the one-to-one optimum is A-Q, B-P (TP 2).
    iou = np.array([[0.6, 0.4], [0.4, 0.0]])
    tp, gm, pm = match_counts(iou, 0.35)
    assert tp == 2 and gm.all() and pm.all()


def test_matching_against_brute_force():
    rng = np.random.default_rng(5)
    for _ in range(100):
        g, p = (int(x) for x in rng.integers(0, 5, 2))
        iou = rng.random((g, p)) * (rng.random((g, p)) < 0.6)
        t = float(rng.uniform(0.1, 0.7))
        tp, _, _ = match_counts(iou, t)
        best = 0
        for perm in itertools.permutations(range(p), min(g, p)):
            best = max(best, sum(iou[i, j] >= t for i, j in zip(range(g), perm)))
        if p < g:  # permute the other side
            for perm in itertools.permutations(range(g), p):
                best = max(best, sum(iou[i, j] >= t for i, j in zip(perm, range(p))))
        assert tp == best


def test_ap_dsb_per_image_mean_versus_pooled():
    # image 1: perfect (AP 1); image 2: 1 TP, 3 FN (AP 1/4).
    # per-image mean = (1 + 1/4) / 2 = 0.625; pooled = (1 + 1) / (1 + 1 + 0 + 3) = 0.4
    a = np.zeros((8, 8), np.int32)
    a[:2, :2] = 1
    b = np.zeros((8, 8), np.int32)
    b[:2, :2], b[4:6, :2], b[:2, 4:6], b[4:6, 4:6] = 1, 2, 3, 4
    ev = InstanceEvaluator(("dsb",))
    ev.add(a, a)
    ev.add(b, a)
    s = ev.summary()
    assert s["AP_dsb@0.5"] == pytest.approx(0.625)
    assert s["AP_dsb_pooled@0.5"] == pytest.approx(0.4)
    assert [r["AP_dsb@0.5"] for r in s["per_image"]] == pytest.approx([1.0, 0.25])


def test_prediction_mostly_on_void_is_not_a_false_positive():
    # pred 2 has 3 of its 4 px on void -> not FP for AP_dsb and PQ; pred 1 matches gt 1 exactly
    gt = np.zeros((4, 6), np.int32)
    gt[:2, :2] = 1
    pred = gt.copy()
    pred[2:4, 4:6] = 2
    ignore = np.zeros_like(gt, bool)
    ignore[2:4, 4:6] = True
    ignore[2, 4] = False
    s = evaluate_image(gt, pred, ignore=ignore)
    assert s["AP_dsb@0.5"] == 1.0 and s["PQ"] == 1.0
    # without the void mask it is a false positive: AP_dsb = 1/2, PQ = 1/(1 + .5)
    s = evaluate_image(gt, pred)
    assert s["AP_dsb@0.5"] == 0.5 and s["PQ"] == pytest.approx(2 / 3)


def test_merge_and_state_equal_one_pass():
    rng = np.random.default_rng(6)
    pairs = []
    for _ in range(6):
        gt = random_label_image(rng)
        pred = noisy_copy(rng, gt)
        ids = np.unique(pred)
        pairs.append((gt, pred, rng.random((ids > 0).sum())))
    one = InstanceEvaluator()
    for gt, pred, sc in pairs:
        one.add(gt, pred, scores=sc)
    a, b = InstanceEvaluator(), InstanceEvaluator()
    for gt, pred, sc in pairs[:4]:
        a.add(gt, pred, scores=sc)
    for gt, pred, sc in pairs[4:]:
        b.add(gt, pred, scores=sc)
    b = InstanceEvaluator.from_state(pickle.loads(pickle.dumps(b.state())))
    merged = a.merge(b).summary()
    ref = one.summary()
    for k in ALL_KEYS + ["AP_dsb_pooled@0.5"]:
        assert merged[k] == ref[k], k
    # per-image rows add up: the mean of the per-image SBD is the data-set SBD
    assert np.mean([r["SBD"] for r in ref["per_image"]]) == pytest.approx(ref["SBD"])


def test_bad_inputs_name_the_problem():
    gt, pred = hand_scene()
    with pytest.raises(ValueError, match="different images"):
        evaluate_image(gt, pred[:, :3])
    with pytest.raises(ValueError, match="one value per instance"):
        evaluate_image(gt, pred, scores=[0.5])
    with pytest.raises(ValueError, match="integer label image"):
        evaluate_image(gt.astype(float), pred)
    with pytest.raises(ValueError, match="both gt_classes and pred_classes"):
        evaluate_image(gt, pred, gt_classes=[1, 1])
    with pytest.raises(ValueError, match="unknown metric"):
        InstanceEvaluator(("nope",))


def test_adjusted_rand_index_against_sklearn():
    metrics = require("sklearn.metrics")
    rng = np.random.default_rng(7)
    for _ in range(20):
        a = rng.integers(0, rng.integers(1, 6), (20, 30))
        b = np.where(rng.random(a.shape) < 0.3, rng.integers(0, 4, a.shape), a)
        ref = metrics.adjusted_rand_score(a.ravel(), b.ravel())
        assert adjusted_rand_index(a, b) == pytest.approx(ref, abs=1e-12)
    # identical partitions up to renaming -> 1; mask selects pixels
    a = np.array([[0, 0, 1, 1], [2, 2, 3, 3]])
    assert adjusted_rand_index(a, a * 10 + 5) == 1.0
    b = np.array([[5, 0, 1, 1], [2, 2, 3, 3]])  # differs from a only at the masked pixel
    mask = np.array([[False, True, True, True], [True, True, True, True]])
    assert adjusted_rand_index(a, b, mask=mask) == 1.0
    assert adjusted_rand_index(a, b) < 1.0


def test_miou_hand_example():
    # 2 classes + void (255). gt row: 0 0 1 1 255; pred row: 0 1 1 1 0.
    # class 0: TP 1, FP 0 (the void pixel is not scored), FN 1 -> IoU 1/2
    # class 1: TP 2, FP 1, FN 0 -> IoU 2/3; mIoU = 7/12
    gt = np.array([[0, 0, 1, 1, 255]])
    pred = np.array([[0, 1, 1, 1, 0]])
    r = miou(gt, pred, num_classes=2)
    assert r["per_class"] == pytest.approx({0: 0.5, 1: 2 / 3})
    assert r["mIoU"] == pytest.approx(7 / 12)
    # class 2 absent from both sides: left out of the mean
    assert miou(gt, pred, num_classes=3)["mIoU"] == pytest.approx(7 / 12)


def test_evaluator_miou_accumulates_over_images():
    gt = np.array([[0, 0, 1, 1, 255]])
    pred = np.array([[0, 1, 1, 1, 0]])
    lab = np.zeros((1, 5), np.int32)
    ev = InstanceEvaluator(("miou",), num_classes=2)
    ev.add(lab, lab, gt_semantic=gt, pred_semantic=pred)
    ev.add(lab, lab, gt_semantic=gt, pred_semantic=gt.clip(0, 1))
    # image 1 as in the hand example; image 2 is right everywhere (its prediction at the void
    # pixel is not scored). Summed: class 0 TP 1+2, FN 1 -> 3/4; class 1 TP 2+2, FP 1 -> 4/5.
    assert ev.summary()["mIoU"] == pytest.approx((0.75 + 0.8) / 2)

"""Precision / recall / F1 / mean scores (StarDist's matching), AJI, adapted Rand error and VI:
hand-derived values, slow literal references, and the reference tools (stardist.matching,
skimage.metrics) on random and real label images."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import require
from instembed.metrics import (
    InstanceEvaluator,
    adapted_rand_error,
    aggregated_jaccard_index,
    evaluate_image,
    match_stats,
    match_stats_dataset,
    variation_of_information,
)
from instembed.metrics.aji import aji_counts
from instembed.metrics.detection import matching_counts

FIELDS_INT = ("tp", "fp", "fn", "n_true", "n_pred")
FIELDS_FLOAT = (
    "precision",
    "recall",
    "accuracy",
    "f1",
    "mean_true_score",
    "mean_matched_score",
    "panoptic_quality",
)


def random_label_image(rng, shape=(40, 50), n=10):
    lab = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        dy, dx = rng.integers(2, 14, 2)
        lab[y : y + dy, x : x + dx] = k
    return lab


def random_pair(rng):
    g = random_label_image(rng, n=int(rng.integers(0, 12)))
    if rng.random() < 0.6:
        p = np.roll(g, tuple(int(s) for s in rng.integers(-3, 4, 2)), (0, 1)).copy()
    else:
        p = random_label_image(rng, n=int(rng.integers(0, 12)))
    p[rng.random(p.shape) < 0.05] = 0
    return g, p


# ------------------------------------------------------------------ precision / recall / F1


def test_matching_hand_values():
    # gt 1 (4 px) and gt 2 (4 px); pred 1 covers gt 1 + 2 px (IoU 4/6), pred 3 is 1 px of gt 2
    # (IoU 1/4), pred 4 on background.
    gt = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 2, 2], [0, 0, 2, 2]])
    pred = np.array([[1, 1, 1, 0], [1, 1, 1, 0], [4, 0, 0, 0], [0, 0, 0, 3]])
    s = match_stats(gt, pred, 0.5)
    assert (s["tp"], s["fp"], s["fn"], s["n_true"], s["n_pred"]) == (1, 2, 1, 2, 3)
    assert s["precision"] == pytest.approx(1 / 3)
    assert s["recall"] == pytest.approx(1 / 2)
    assert s["accuracy"] == pytest.approx(1 / 4)
    assert s["f1"] == pytest.approx(2 / 5)
    assert s["mean_matched_score"] == pytest.approx(2 / 3)
    assert s["mean_true_score"] == pytest.approx(1 / 3)
    assert s["panoptic_quality"] == pytest.approx((2 / 3) / (1 + 1 + 0.5))
    # at tau = 0.2 both objects match: ΣIoU = 2/3 + 1/4
    s = match_stats(gt, pred, 0.2)
    assert (s["tp"], s["fp"], s["fn"]) == (2, 1, 0)
    assert s["f1"] == pytest.approx(4 / 5)
    assert s["mean_matched_score"] == pytest.approx((2 / 3 + 1 / 4) / 2)
    # nothing matches at 0.7: every ratio is 0
    s = match_stats(gt, pred, 0.7)
    assert s["tp"] == 0 and all(s[k] == 0.0 for k in FIELDS_FLOAT)


def test_threshold_is_compared_in_float32_like_stardist():
    # IoU = 7/10 matches at tau = 0.7
    gt = np.zeros((1, 10), np.int32)
    gt[0, :7] = 1
    pred = np.ones((1, 10), np.int32)
    assert match_stats(gt, pred, 0.7)["tp"] == 1
    assert match_stats(gt, pred, 0.71)["tp"] == 0
    # StarDist compares float32 scores with the threshold rounded to float32 (NumPy 2's
    # promotion): 0.69999999 rounds to float32(0.7) and matches at tau = 0.7
    counts = matching_counts(np.array([[0.69999999, 0.0]]), (0.7, 0.7000001))
    assert counts[:, 0].tolist() == [1, 0]
    assert counts[0, 3] == 0.69999999  # the summed score is the float64 IoU


def _brute(gt, pred, thr):
    """Every one-to-one assignment of the smaller side: most matches (IoU >= thr in float32),
    then the largest summed IoU of all assigned pairs (StarDist's cost)."""
    ids_g = [i for i in np.unique(gt) if i]
    ids_p = [j for j in np.unique(pred) if j]
    iou = np.zeros((len(ids_g), len(ids_p)))
    for a, i in enumerate(ids_g):
        for b, j in enumerate(ids_p):
            inter = np.sum((gt == i) & (pred == j))
            iou[a, b] = inter / np.sum((gt == i) | (pred == j))
    s32 = iou.astype(np.float32)
    g, p = iou.shape
    best = (-1, -1.0, 0.0)
    if g <= p:
        perms = [list(zip(range(g), perm)) for perm in itertools.permutations(range(p), g)]
    else:
        perms = [list(zip(perm, range(p))) for perm in itertools.permutations(range(g), p)]
    for pairs in perms:
        ok = [(a, b) for a, b in pairs if s32[a, b] >= thr]
        key = (len(ok), round(float(sum(s32[a, b] for a, b in pairs)), 6))
        if key[:2] > best[:2]:
            best = (*key, float(sum(iou[a, b] for a, b in ok)))
    return max(best[0], 0), best[2], g, p


def test_matching_against_brute_force_reference():
    rng = np.random.default_rng(7)
    n_checked = 0
    for _ in range(60):
        g = random_label_image(rng, (14, 16), n=int(rng.integers(0, 5)))
        p = random_label_image(rng, (14, 16), n=int(rng.integers(0, 5)))
        if rng.random() < 0.5:
            p = np.roll(g, 1, 1)
        for thr in (0.1, 0.3, 0.5):
            tp, total, n_true, n_pred = _brute(g, p, thr)
            s = match_stats(g, p, thr)
            assert (s["tp"], s["n_true"], s["n_pred"]) == (tp, n_true, n_pred)
            assert (s["fp"], s["fn"]) == (n_pred - tp, n_true - tp)
            if tp:
                assert s["mean_matched_score"] == pytest.approx(total / tp, abs=1e-6)
            n_checked += tp
    assert n_checked > 20


@pytest.fixture(scope="module")
def stardist_matching():
    return require("stardist.matching", "reference for matching / matching_dataset")


THRESHOLDS = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.7, 0.8, 0.9]


def _max_diff(ref, ours):
    for k in FIELDS_INT:
        assert getattr(ref, k) == ours[k], k
    return max(abs(float(getattr(ref, k)) - ours[k]) for k in FIELDS_FLOAT)


def test_matching_equals_stardist(stardist_matching):
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(150):
        g, p = random_pair(rng)
        for crit in ("iou", "iot", "iop"):
            ref = stardist_matching.matching(g, p, thresh=THRESHOLDS, criterion=crit)
            ours = match_stats(g, p, THRESHOLDS, crit)
            for r, o in zip(ref, ours):
                worst = max(worst, _max_diff(r, o))
    assert worst < 1e-6, worst  # StarDist keeps the scores in float32


def test_matching_dataset_equals_stardist(stardist_matching):
    rng = np.random.default_rng(1)
    pairs = [random_pair(rng) for _ in range(40)]
    gts, preds = [g for g, _ in pairs], [p for _, p in pairs]
    for by_image in (False, True):
        ref = stardist_matching.matching_dataset(
            gts, preds, thresh=THRESHOLDS, by_image=by_image, show_progress=False
        )
        ours = match_stats_dataset(gts, preds, THRESHOLDS, by_image=by_image)
        worst = max(_max_diff(r, o) for r, o in zip(ref, ours))
        assert worst < 1e-6, (by_image, worst)


def test_matching_on_real_images_equals_stardist(stardist_matching, bbbc039_pairs):
    for g, p in bbbc039_pairs:
        for r, o in zip(
            stardist_matching.matching(g, p, thresh=THRESHOLDS), match_stats(g, p, THRESHOLDS)
        ):
            assert _max_diff(r, o) < 1e-6


def test_evaluator_prf_keys_equal_matching_dataset():
    rng = np.random.default_rng(2)
    pairs = [random_pair(rng) for _ in range(6)]
    ev = InstanceEvaluator(("prf",), prf_thresholds=(0.5, 0.75))
    for g, p in pairs:
        ev.add(g, p)
    s = ev.summary()
    ref = match_stats_dataset([g for g, _ in pairs], [p for _, p in pairs], (0.5, 0.75))
    for r, t in zip(ref, ("0.5", "0.75")):
        assert s[f"precision@{t}"] == r["precision"]
        assert s[f"recall@{t}"] == r["recall"]
        assert s[f"F1@{t}"] == r["f1"]
        assert s[f"mean_matched_score@{t}"] == pytest.approx(r["mean_matched_score"])
        assert s[f"mean_true_score@{t}"] == pytest.approx(r["mean_true_score"])
    assert s["per_image"][0]["F1@0.5"] == match_stats(*pairs[0], 0.5)["f1"]


# ------------------------------------------------------------------------------------ AJI


def aji_literal(gt, pred):
    """The MoNuSeg procedure pixel by pixel: ground truths in id order; each takes the unused
    prediction of highest IoU (first on ties), which is then removed; a ground truth that
    overlaps none adds its area (the bug fix); the pixels left in the prediction add at the end."""
    pred = pred.copy()
    c = u = 0
    for i in [v for v in np.unique(gt) if v]:
        g = gt == i
        ids = [v for v in np.unique(pred) if v]
        ji = [np.sum(g & (pred == j)) / np.sum(g | (pred == j)) for j in ids]
        if not ids or max(ji) == 0:
            u += g.sum()
            continue
        s = pred == ids[int(np.argmax(ji))]
        c += np.sum(g & s)
        u += np.sum(g | s)
        pred[s] = 0
    u += np.count_nonzero(pred)
    return c / u if u else 1.0


def test_aji_hand_values():
    gt = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 2, 2], [0, 0, 2, 2]])
    pred = np.array([[1, 1, 1, 0], [1, 1, 1, 0], [4, 0, 0, 0], [0, 0, 0, 3]])
    # g1 - p1: C 4, U 6; g2 - p3: C 1, U 4; unused p4: U + 1 -> 5 / 11
    assert aggregated_jaccard_index(gt, pred) == pytest.approx(5 / 11)
    # one prediction over both objects: g1 takes it (C 4, U 4 + 8 - 4 = 8); g2 finds no unused
    # prediction: U + 4 -> 4 / 12 (counting the prediction twice would give 8 / 16)
    merged = (gt > 0).astype(np.int32)
    assert aggregated_jaccard_index(gt, merged) == pytest.approx(4 / 12)
    # nothing predicted: C 0, U 8; nothing anywhere: 1.0
    assert aggregated_jaccard_index(gt, np.zeros_like(gt)) == 0.0
    assert aggregated_jaccard_index(np.zeros_like(gt), np.zeros_like(gt)) == 1.0
    # a prediction taken by an earlier ground truth is not available to a later one:
    # g1 (ids first) takes p1 (IoU 2/4 vs g2's 2/6); g2 then takes p2 (IoU 1/6)
    gt2 = np.array([[1, 1, 2, 2, 2, 2]])
    pred2 = np.array([[1, 1, 1, 1, 2, 0]])
    assert aji_counts(np.array([[2, 0], [2, 1]]), np.array([2, 4]), np.array([4, 1])) == (3, 8)
    assert aggregated_jaccard_index(gt2, pred2) == pytest.approx(3 / 8)


def test_aji_against_literal_reference():
    rng = np.random.default_rng(3)
    for _ in range(40):
        g, p = random_pair(rng)
        if rng.random() < 0.3:  # merges: one prediction over several objects
            p = (p > 0).astype(np.int32) * 5
        assert aggregated_jaccard_index(g, p) == pytest.approx(aji_literal(g, p), abs=1e-12)


def test_evaluator_aji_mean_and_pooled():
    gt = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 2, 2], [0, 0, 2, 2]])
    pred = np.array([[1, 1, 1, 0], [1, 1, 1, 0], [4, 0, 0, 0], [0, 0, 0, 3]])
    ev = InstanceEvaluator(("aji",))
    ev.add(gt, pred)  # 5 / 11
    ev.add(gt, gt)  # 8 / 8
    s = ev.summary()
    assert s["AJI"] == pytest.approx((5 / 11 + 1) / 2)
    assert s["AJI_pooled"] == pytest.approx(13 / 19)


# -------------------------------------------------------------- adapted Rand error and VI


def _skimage_refs(g, p, ignore_labels_are=(0,), ignore_labels_vi=()):
    skm = require("skimage.metrics")
    are = skm.adapted_rand_error(g, p, ignore_labels=ignore_labels_are)
    vi = skm.variation_of_information(g, p, ignore_labels=ignore_labels_vi)
    return np.array(are), np.asarray(vi)


def test_rand_vi_equal_skimage_on_random_labels():
    rng = np.random.default_rng(4)
    worst = 0.0
    for it in range(60):
        g = rng.integers(0, int(rng.integers(2, 20)), (30, 40))
        p = rng.integers(0, int(rng.integers(2, 20)), (30, 40))
        if it % 2:
            p = g.copy()
            p[rng.random(g.shape) < 0.1] = 99
        for ig in ((0,), (), (0, 1)):
            are_ref, vi_ref = _skimage_refs(g, p, ig, ig)
            worst = max(
                worst, np.abs(np.array(adapted_rand_error(g, p, ignore_labels=ig)) - are_ref).max()
            )
            worst = max(
                worst, np.abs(variation_of_information(g, p, ignore_labels=ig) - vi_ref).max()
            )
    assert worst < 1e-9, worst


def test_rand_vi_hand_values():
    # gt: one segment of 4 px; pred splits it 2 + 2. Pairs: n(n-1): gt 12, pred 2 + 2, both 4.
    g = np.array([[1, 1, 1, 1]])
    p = np.array([[1, 1, 2, 2]])
    are, prec, rec = adapted_rand_error(g, p)
    assert (prec, rec) == (pytest.approx(4 / 12), pytest.approx(1.0))
    assert are == pytest.approx(1 - 4 / (0.5 * 12 + 0.5 * 4))
    # VI: H(pred | gt) = 1 bit (a fair split), H(gt | pred) = 0
    assert variation_of_information(g, p).tolist() == pytest.approx([1.0, 0.0])


def _eroded_and_shifted(lab, rng):
    from scipy import ndimage

    out = np.roll(lab, tuple(int(s) for s in rng.integers(-3, 4, 2)), (0, 1))
    keep = ndimage.grey_erosion(out, size=3) == out
    return np.where(keep, out, 0).astype(lab.dtype)


@pytest.fixture(scope="module")
def bbbc039_pairs(shared_data):
    from PIL import Image
    from skimage.measure import label

    root = Path(shared_data("bbbc039"))
    files = sorted(root.rglob("masks/*.png"))[:3]
    assert files, f"no BBBC039 masks under {root}"
    rng = np.random.default_rng(5)
    pairs = []
    for f in files:
        arr = np.asarray(Image.open(f))
        arr = arr[..., 0] if arr.ndim == 3 else arr
        gt = label(arr, connectivity=1).astype(np.int32)
        pairs.append((gt, _eroded_and_shifted(gt, rng)))
    return pairs


def test_rand_vi_equal_skimage_on_bbbc039(bbbc039_pairs):
    worst = 0.0
    for g, p in bbbc039_pairs:
        are_ref, vi_ref = _skimage_refs(g, p)
        worst = max(worst, np.abs(np.array(adapted_rand_error(g, p)) - are_ref).max())
        worst = max(worst, np.abs(variation_of_information(g, p) - vi_ref).max())
        # the evaluator's numbers come from the overlap table: the same values
        s = evaluate_image(g, p, metrics=("rand", "aji"))
        assert s["ARE"] == pytest.approx(are_ref[0], abs=1e-9)
        assert (s["ARE_precision"], s["ARE_recall"]) == pytest.approx(are_ref[1:], abs=1e-9)
        assert (s["VI_split"], s["VI_merge"]) == pytest.approx(vi_ref, abs=1e-9)
        assert s["VI"] == pytest.approx(vi_ref.sum(), abs=1e-9)
        assert s["AJI"] == pytest.approx(aji_literal(g, p), abs=1e-12)
    assert worst < 1e-9, worst


def test_evaluator_rand_with_void_and_stacks():
    rng = np.random.default_rng(6)
    g, p = random_pair(rng)
    ignore = rng.random(g.shape) < 0.2
    s = evaluate_image(g, p, ignore=ignore, metrics=("rand",))
    # void = a ground-truth label scikit-image ignores
    g2 = np.where(ignore, 10**6, g)
    are_ref, _ = _skimage_refs(g2, p, (0, 10**6))
    _, vi_ref = _skimage_refs(g2, p, (0, 10**6), (10**6,))
    assert s["ARE"] == pytest.approx(are_ref[0], abs=1e-9)
    assert (s["VI_split"], s["VI_merge"]) == pytest.approx(vi_ref, abs=1e-9)
    # a stack of disjoint masks is the same partition; overlapping masks are not one
    ids = [i for i in np.unique(p) if i]
    stack = np.stack([p == i for i in ids]) if ids else np.zeros((0,) + p.shape, bool)
    assert evaluate_image(g, stack, metrics=("rand",))["VI"] == pytest.approx(
        evaluate_image(g, p, metrics=("rand",))["VI"]
    )
    over = np.ones((2,) + g.shape, bool)
    assert "VI" not in evaluate_image(g, over, metrics=("rand",))


def test_new_keys_are_finite_in_empty_cases():
    z = np.zeros((5, 6), np.int32)
    g = z.copy()
    g[:2, :2] = 1
    for a, b in ((g, z), (z, g), (z, z)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            s = evaluate_image(a, b)
        for k in ("precision@0.5", "recall@0.5", "F1@0.5", "AJI", "ARE", "VI"):
            assert isinstance(s[k], float) and np.isfinite(s[k]), k
    assert evaluate_image(z, z)["AJI"] == 1.0

"""COCO AP parity with pycocotools (the reference tool) on random instance sets.

Random scenes: overlapping mask stacks and label images, random scores, several classes, crowd
regions, empty images; every COCO number must equal pycocotools' to 1e-6.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from conftest import require
from instembed.metrics import InstanceEvaluator
from instembed.metrics.coco import _match_fast, _match_loop, match_image

mask_util = require("pycocotools.mask")
coco_mod = require("pycocotools.coco")
cocoeval_mod = require("pycocotools.cocoeval")

H, W = 96, 128


def _random_mask(rng, h=H, w=W, lo=3, hi=70):
    """A filled ellipse or rectangle of random size (areas span small / medium / large)."""
    yy, xx = np.mgrid[:h, :w]
    ry, rx = rng.integers(lo, hi, 2) / 2
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    if rng.random() < 0.5:
        m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    else:
        m = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
    if not m.any():
        m[int(min(cy, h - 1)), int(min(cx, w - 1))] = True
    return m


def _perturb(rng, m):
    """A prediction near a ground truth: shifted and grown / shrunk a little."""
    dy, dx = rng.integers(-4, 5, 2)
    out = np.roll(m, (dy, dx), axis=(0, 1))
    if rng.random() < 0.5:
        from scipy import ndimage

        out = ndimage.binary_dilation(out) if rng.random() < 0.5 else ndimage.binary_erosion(out)
    if not out.any():
        out = m.copy()
    return out


def random_scene(rng, n_gt, n_extra, n_classes=1, p_crowd=0.0, p_dup=0.0):
    gt = np.stack([_random_mask(rng) for _ in range(n_gt)]) if n_gt else np.zeros((0, H, W), bool)
    gt_cls = rng.integers(1, n_classes + 1, n_gt)
    crowd = rng.random(n_gt) < p_crowd
    preds, p_cls = [], []
    for k in range(n_gt):
        if rng.random() < 0.8:
            preds.append(_perturb(rng, gt[k]))
            # mostly the right class
            p_cls.append(gt_cls[k] if rng.random() < 0.85 else rng.integers(1, n_classes + 1))
        if rng.random() < p_dup:  # a duplicate detection: two predictions want one object
            preds.append(_perturb(rng, gt[k]))
            p_cls.append(gt_cls[k])
    for _ in range(n_extra):
        preds.append(_random_mask(rng))
        p_cls.append(rng.integers(1, n_classes + 1))
    pred = np.stack(preds) if preds else np.zeros((0, H, W), bool)
    scores = rng.random(len(preds))
    return gt, gt_cls, crowd, pred, np.asarray(p_cls, np.int64), scores


def stack_to_labels(stack):
    lab = np.zeros(stack.shape[1:], np.int32)
    for k, m in enumerate(stack, start=1):
        lab[m] = k
    return lab


def labels_to_stack(lab):
    ids = np.unique(lab)
    ids = ids[ids > 0]
    return np.stack([lab == i for i in ids]) if ids.size else np.zeros((0, *lab.shape), bool)


def pycocotools_eval(scenes, n_classes, max_dets=(1, 10, 100)):
    """Run COCOeval(segm) on the scenes; returns the COCOeval object."""
    images, anns, dets = [], [], []
    aid = 1
    for img_id, (gt, gt_cls, crowd, pred, p_cls, scores) in enumerate(scenes, start=1):
        images.append({"id": img_id, "height": H, "width": W})
        for m, c, cr in zip(gt, gt_cls, crowd):
            rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
            anns.append(
                {
                    "id": aid,
                    "image_id": img_id,
                    "category_id": int(c),
                    "segmentation": rle,
                    "area": float(m.sum()),
                    "bbox": list(mask_util.toBbox(rle)),
                    "iscrowd": int(cr),
                }
            )
            aid += 1
        for m, c, s in zip(pred, p_cls, scores):
            rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
            dets.append(
                {"image_id": img_id, "category_id": int(c), "segmentation": rle, "score": float(s)}
            )
    gt_coco = coco_mod.COCO()
    gt_coco.dataset = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": c, "name": str(c)} for c in range(1, n_classes + 1)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt_coco.createIndex()
        dt_coco = gt_coco.loadRes(dets)
        ev = cocoeval_mod.COCOeval(gt_coco, dt_coco, "segm")
        ev.params.maxDets = list(max_dets)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def ours(scenes, as_labels=False, max_dets=100, classes=True):
    ev = InstanceEvaluator(("coco",), max_dets=max_dets)
    for gt, gt_cls, crowd, pred, p_cls, scores in scenes:
        if as_labels:
            gt, pred = stack_to_labels(gt), stack_to_labels(pred)
        kw = {"gt_classes": gt_cls, "pred_classes": p_cls} if classes else {}
        ev.add(gt, pred, scores=scores, crowd=crowd, **kw)
    return ev.summary(per_image=False)


KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]


def _compare(summary, ref):
    stats = ref.stats
    ref_vals = dict(zip(KEYS, stats[:6])) | {"AR": stats[8]}
    for k, v in ref_vals.items():
        if v == -1:
            assert k in summary["coco_undefined"], k
        else:
            assert summary[k] == pytest.approx(v, abs=1e-6), (k, summary[k], v)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coco_parity_overlapping_stacks_crowd_classes(seed):
    rng = np.random.default_rng(seed)
    scenes = []
    for i in range(8):
        n_gt = 0 if i == 3 else int(rng.integers(1, 12))
        n_extra = 0 if i == 5 else int(rng.integers(0, 5))
        scenes.append(random_scene(rng, n_gt, n_extra, n_classes=3, p_crowd=0.15, p_dup=0.3))
    ref = pycocotools_eval(scenes, 3)
    _compare(ours(scenes), ref)


@pytest.mark.parametrize("seed", [3, 4])
def test_coco_parity_label_images(seed):
    # label images: the stacks flattened (later objects on top), no crowd, one class
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(8):
        gt, gt_cls, _, pred, p_cls, scores = random_scene(rng, int(rng.integers(0, 15)), 3)
        gt = labels_to_stack(stack_to_labels(gt))
        pred = labels_to_stack(stack_to_labels(pred))
        # the flattening may hide whole objects: keep scores for the visible ones
        scores = rng.random(len(pred))
        n_gt = len(gt)
        scenes.append(
            (gt, np.ones(n_gt, int), np.zeros(n_gt, bool), pred, np.ones(len(pred), int), scores)
        )
    ref = pycocotools_eval(scenes, 1)
    _compare(ours(scenes, as_labels=True, classes=False), ref)


def test_coco_parity_small_max_dets_and_tied_scores():
    # max_dets=3 with many predictions per image; scores rounded to create ties (stable order)
    rng = np.random.default_rng(7)
    scenes = []
    for _ in range(6):
        gt, gt_cls, crowd, pred, p_cls, scores = random_scene(rng, 8, 4, p_crowd=0.1)
        scenes.append((gt, gt_cls, crowd, pred, p_cls, np.round(scores, 1)))
    ref = pycocotools_eval(scenes, 1, max_dets=(1, 2, 3))  # COCOeval sorts maxDets
    s = ours(scenes, max_dets=3)
    prec = ref.eval["precision"][:, :, :, 0, 2]  # area all, maxDets index 2 (= 3)
    assert s["AP"] == pytest.approx(float(np.mean(prec[prec > -1])), abs=1e-6)
    p50 = prec[0]
    assert s["AP50"] == pytest.approx(float(np.mean(p50[p50 > -1])), abs=1e-6)


def test_fast_matching_equals_the_loop():
    # the vectorised path is only taken when no non-crowd ground truth is wanted (IoU >= 0.5) by
    # two predictions; on such random IoU matrices it must agree with the exact greedy loop
    rng = np.random.default_rng(11)
    thresholds = np.linspace(0.5, 0.95, 10)
    for _ in range(200):
        g, d = (int(x) for x in rng.integers(1, 8, 2))
        crowd = rng.random(g) < 0.3
        ignored = crowd | (rng.random(g) < 0.2)
        m_dg = rng.uniform(0, 0.49, (d, g))
        for j in range(g):  # each non-crowd gt wanted by at most one prediction
            if rng.random() < 0.7:
                m_dg[rng.integers(0, d), j] = rng.uniform(0.5, 1.0)
        for j in np.flatnonzero(crowd):  # crowd regions may be wanted by several
            m_dg[:, j] = np.where(rng.random(d) < 0.5, rng.uniform(0.5, 1.0, d), m_dg[:, j])
        order = np.argsort(ignored, kind="mergesort")
        m_dg, ign_s, crowd_s = m_dg[:, order], ignored[order], crowd[order]
        slow = _match_loop(m_dg, ign_s, crowd_s, thresholds)
        fast = _match_fast(m_dg, ign_s, thresholds)
        assert np.array_equal(slow[0], fast[0]) and np.array_equal(slow[1], fast[1])


def test_greedy_loop_hand_case():
    # 2 predictions (rows, in score order) x 2 ground truths; gt 1 is crowd (so ignored)
    thresholds = np.linspace(0.5, 0.95, 10)
    m_dg = np.array([[0.6, 0.9], [0.2, 0.8]])
    ignored = np.array([False, True])
    crowd = np.array([False, True])
    matched, ign = _match_loop(m_dg, ignored, crowd, thresholds)
    # pred 0: the real gt for t <= 0.6 (preferred over the better crowd match), then the
    # crowd region (IoU 0.9) for 0.65 <= t <= 0.9, nothing at 0.95
    assert matched[:, 0].tolist() == [True] * 9 + [False]
    assert ign[:, 0].tolist() == [False, False, False] + [True] * 6 + [False]
    # pred 1: only the crowd region (reusable), IoU 0.8 -> matched and ignored for t <= 0.8
    assert matched[:, 1].tolist() == [True] * 7 + [False] * 3
    assert ign[:, 1].tolist() == [True] * 7 + [False] * 3


def test_greedy_takes_the_higher_scored_prediction_first():
    # one gt (area 100), two predictions with IoU 0.6 (score 0.9) and 0.8 (score 0.5):
    # the first in score order takes the gt at t <= 0.6; the second is then a false positive
    # there, and takes the gt itself for 0.65 <= t <= 0.8.
    inter = np.array([[60.0, 80.0]])
    recs = match_image(inter, np.array([100.0]), np.array([60.0, 80.0]), [0.9, 0.5], [False])
    r = recs["all"]
    assert r.scores.tolist() == [0.9, 0.5]
    assert r.matched[:, 0].tolist() == [True] * 3 + [False] * 7
    assert r.matched[:, 1].tolist() == [False] * 3 + [True] * 4 + [False] * 3

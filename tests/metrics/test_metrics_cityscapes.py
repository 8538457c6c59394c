"""Cityscapes instance AP against cityscapesScripts' evalInstanceLevelSemanticLabeling, run on
Cityscapes-layout files written to a temporary folder."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import require
from instembed.metrics.cityscapes import (
    CityscapesInstanceEvaluator,
    evaluate_cityscapes_files,
    read_cityscapes_prediction,
)

PERSON, CAR, BICYCLE, RIDER, TRUCK = 24, 26, 33, 25, 27
ROAD, UNLABELED, EGO = 7, 0, 1


def _box(shape, rng, lo=6, hi=30):
    h, w = shape
    dy, dx = (int(v) for v in rng.integers(lo, hi, 2))
    y, x = int(rng.integers(0, h - dy)), int(rng.integers(0, w - dx))
    m = np.zeros(shape, bool)
    m[y : y + dy, x : x + dx] = True
    return m


def make_scene(rng, shape=(96, 128)):
    """One image: instanceIds array and predictions (masks, label ids, confidences)."""
    gt = np.full(shape, ROAD, np.int32)
    gt[:6] = UNLABELED  # void
    gt[-5:, :40] = EGO  # void
    gt[40:60, 90:128] = CAR  # a car group (crowd) region
    inst = []
    for cls, n in ((PERSON, 3), (CAR, 4), (BICYCLE, 2)):
        for k in range(n):
            m = _box(shape, rng, 5 if k == 0 else 9, 30)
            gt[m] = cls * 1000 + k
    for v in np.unique(gt):
        if v >= 1000:
            inst.append(v)
    masks, labels, confs = [], [], []
    for v in inst:
        m = gt == v
        if not m.any():
            continue
        r = rng.random()
        if r < 0.35:
            p = m.copy()  # exact
        elif r < 0.7:
            p = np.roll(m, tuple(int(s) for s in rng.integers(-3, 4, 2)), axis=(0, 1))
        elif r < 0.85:
            p = m & (rng.random(shape) < 0.8)
        else:
            continue  # missed
        masks.append(p)
        labels.append(v // 1000)
        confs.append(round(float(rng.random()), 2))  # rounding makes ties
        if rng.random() < 0.25:  # duplicate
            masks.append(np.roll(p, 1, axis=1))
            labels.append(v // 1000)
            confs.append(round(float(rng.random()), 2))
    extra = [(CAR, None), (PERSON, None), (RIDER, None), (TRUCK, None), (ROAD, None)]
    for cls, _ in extra:  # false positives, riders/trucks without ground truth, a non-class
        masks.append(_box(shape, rng))
        labels.append(cls)
        confs.append(round(float(rng.random()), 2))
    group = np.zeros(shape, bool)  # mostly on the car group: ignored for cars
    group[42:58, 95:120] = True
    masks.append(group)
    labels.append(CAR)
    confs.append(0.9)
    void = np.zeros(shape, bool)  # mostly void
    void[:8, 10:30] = True
    masks.append(void)
    labels.append(PERSON)
    confs.append(0.8)
    masks.append(np.zeros(shape, bool))  # an empty mask is skipped
    labels.append(PERSON)
    confs.append(0.99)
    return gt, masks, labels, confs


def write_scene(root, city, idx, gt, masks, labels, confs):
    gt_dir = root / "gtFine" / "val" / city
    res_dir = root / "results"
    gt_dir.mkdir(parents=True, exist_ok=True)
    (res_dir / "masks").mkdir(parents=True, exist_ok=True)
    stem = f"{city}_{idx:06d}_000019"
    gt_path = gt_dir / f"{stem}_gtFine_instanceIds.png"
    Image.fromarray(gt.astype(np.uint16)).save(gt_path)
    lines = []
    for k, (m, lab, c) in enumerate(zip(masks, labels, confs)):
        name = f"masks/{stem}_{k:03d}.png"
        Image.fromarray(m.astype(np.uint8) * 255).save(res_dir / name)
        lines.append(f"{name} {lab} {c}")
    txt = res_dir / f"{stem}_pred.txt"
    txt.write_text("\n".join(lines) + "\n")
    return gt_path, txt


def run_reference(monkeypatch, root, gt_files, txt_files):
    ev = require("cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling")
    # NumPy 2.4 removed np.in1d, which cityscapesScripts 2.3 still calls
    monkeypatch.setattr(np, "in1d", lambda a, b: np.isin(a, b).ravel(), raising=False)
    # its JSON dumps (gt cache, matches.json) fail on NumPy 2 integers; they only cache
    monkeypatch.setattr(ev, "writeDict2JSON", lambda data, path: None)
    args = ev.args
    for k, v in {
        "gtInstancesFile": str(root / "gtInstances.json"),
        "predictionPath": str((root / "results").resolve()),
        "exportFile": str(root / "result.json"),
        "JSONOutput": False,
        "quiet": True,
        "colorized": False,
    }.items():
        monkeypatch.setattr(args, k, v)
    monkeypatch.chdir(root)
    res = ev.evaluateImgLists([str(p) for p in txt_files], [str(p) for p in gt_files], args)
    return res


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_cityscapesscripts(tmp_path, monkeypatch, seed):
    rng = np.random.default_rng(seed)
    gt_files, txt_files = [], []
    for i in range(3):
        gt, masks, labels, confs = make_scene(rng)
        g, t = write_scene(
            tmp_path, ["aachen", "bochum", "cologne"][i], i, gt, masks, labels, confs
        )
        gt_files.append(g)
        txt_files.append(t)
    ours = evaluate_cityscapes_files(gt_files, txt_files)
    ref = run_reference(monkeypatch, tmp_path, gt_files, txt_files)
    avg = ref["averages"]
    diffs = [abs(ours["AP"] - avg["allAp"]), abs(ours["AP50"] - avg["allAp50%"])]
    for name, row in avg["classes"].items():
        if np.isnan(row["ap"]):
            assert ours["per_class"][name]["AP"] is None, name
            continue
        diffs += [abs(ours["per_class"][name]["AP"] - row["ap"])]
        diffs += [abs(ours["per_class"][name]["AP50"] - row["ap50%"])]
    ref_m = np.asarray(ref["resultApMatrix"])[0]
    ours_m = np.array([[np.nan if v is None else v for v in r] for r in ours["ap_matrix"]])
    assert np.array_equal(np.isnan(ref_m), np.isnan(ours_m))
    diffs.append(np.nanmax(np.abs(ref_m - ours_m)))
    assert max(diffs) < 1e-12, max(diffs)
    assert 0.0 < ours["AP"] < 1.0


def test_hand_example():
    # one car of 200 px; prediction A = the car (conf .9), prediction B a 100 px box on road
    # (conf .95) -> FP ranked first. Points (increasing conf): .9: tp 1 fp 1 -> p .5 r 1;
    # .95: tp 0 fp 1 -> p 0 r 0; artificial p 1 r 0. Widths: (1-0)/2, (1-0)/2, 0 -> AP = .25
    gt = np.full((40, 40), ROAD, np.int32)
    gt[0:10, 0:20] = CAR * 1000
    a = gt == CAR * 1000
    b = np.zeros_like(a)
    b[20:30, 20:30] = True
    ev = CityscapesInstanceEvaluator()
    ev.add(gt, np.stack([a, b]), [CAR, CAR], [0.9, 0.95])
    s = ev.summary()
    assert s["per_class"]["car"]["AP"] == pytest.approx(0.25)
    assert s["AP"] == pytest.approx(0.25) and s["AP50"] == pytest.approx(0.25)
    assert s["per_class"]["person"]["AP"] is None  # no person ground truth: left out
    # B on a void region instead is not a false positive: AP = 1 (p 1 at r 1, width 1/2 + 1/2)
    gt[20:30, 20:30] = UNLABELED
    ev = CityscapesInstanceEvaluator()
    ev.add(gt, np.stack([a, b]), [CAR, CAR], [0.9, 0.95])
    assert ev.summary()["AP"] == pytest.approx(1.0)


def test_small_ground_truth_is_not_counted_and_no_ground_truth_at_all():
    gt = np.full((30, 30), ROAD, np.int32)
    gt[0:9, 0:9] = PERSON * 1000  # 81 px < 100: not counted
    ev = CityscapesInstanceEvaluator()
    ev.add(gt, (gt == PERSON * 1000)[None], [PERSON], [0.5])
    s = ev.summary()
    assert s["undefined"] and s["AP"] == 0.0  # a prediction but no counted ground truth
    ev = CityscapesInstanceEvaluator()
    ev.add(gt, np.zeros((0, 30, 30), bool), [], [])
    assert ev.summary()["AP"] == 1.0


def test_reader_keeps_the_last_line_of_a_repeated_mask(tmp_path):
    m = np.zeros((4, 5), np.uint8)
    m[1:3, 1:4] = 7
    Image.fromarray(m).save(tmp_path / "m.png")
    (tmp_path / "p.txt").write_text("m.png 26 0.5\nm.png 24 0.25\n")
    masks, labels, confs = read_cityscapes_prediction(tmp_path / "p.txt")
    assert masks.shape == (1, 4, 5) and masks.sum() == 6
    assert labels.tolist() == [24] and confs.tolist() == [0.25]

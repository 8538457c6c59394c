"""COCO crowd regions stay crowd: the readers keep them in ``Sample.meta["crowd"]`` and scoring
(:class:`instembed.engine.evaluation.Scorer`, ``instembed evaluate``) treats them as crowd ground
truths, so COCO AP is pycocotools' and PQ follows panopticapi's crowd rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import require
from instembed.cli import main
from instembed.data.readers import open_dataset
from instembed.engine.evaluation import Scorer
from instembed.metrics import InstanceEvaluator

H = W = 20
CATEGORIES = [{"id": 1, "name": "a", "isthing": 1}, {"id": 2, "name": "b", "isthing": 1}]


def _box(r0, r1, c0, c1) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[r0:r1, c0:c1] = True
    return m


# ground truth: A (class 1), B (class 2) and a crowd region C of class 2
GT_A, GT_B, CROWD = _box(2, 8, 2, 8), _box(2, 8, 12, 18), _box(10, 18, 10, 18)


def prediction() -> tuple[np.ndarray, list[dict]]:
    """Label image + sidecar records (id, score, class) of the prediction scored below."""
    lab = np.zeros((H, W), np.uint16)
    lab[2:8, 2:8] = 1  # = A, class 1
    lab[2:12, 12:18] = 2  # B plus 24 px below it, 12 of them on the crowd region, class 2
    lab[14:18, 10:16] = 3  # class 1, all on the crowd region of class 2
    lab[12:14, 10:18] = 4  # class 2, all on the crowd region of class 2
    recs = [
        {"id": 1, "score": 0.9, "class": 1},
        {"id": 2, "score": 0.8, "class": 2},
        {"id": 3, "score": 0.95, "class": 1},
        {"id": 4, "score": 0.7, "class": 2},
    ]
    return lab, recs


def _rle(mask_util, m: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    return rle


def write_coco(tmp_path):
    """A COCO instances data set (json + image) and predict-style predictions for it."""
    mask_util = require("pycocotools.mask")
    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "images" / "a.png")
    anns = []
    for k, (m, cat, crowd) in enumerate([(GT_A, 1, 0), (GT_B, 2, 0), (CROWD, 2, 1)], start=1):
        rows, cols = np.nonzero(m)
        bbox = [int(cols.min()), int(rows.min()), int(np.ptp(cols) + 1), int(np.ptp(rows) + 1)]
        anns.append(
            {
                "id": k,
                "image_id": 1,
                "category_id": cat,
                "segmentation": _rle(mask_util, m),
                "area": int(m.sum()),
                "bbox": bbox,
                "iscrowd": crowd,
            }
        )
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}],
        "annotations": anns,
        "categories": CATEGORIES,
    }
    gt_json = root / "annotations" / "instances_val.json"
    gt_json.write_text(json.dumps(data))
    pred = tmp_path / "pred"
    pred.mkdir()
    lab, recs = prediction()
    tifffile.imwrite(pred / "a.tif", lab)
    (pred / "a.json").write_text(json.dumps({"image": "a", "instances": recs}))
    return root, gt_json, pred


def write_coco_panoptic(tmp_path):
    """The same scene as COCO panoptic (everything outside A, B and C is void)."""
    root = tmp_path / "pan"
    (root / "images").mkdir(parents=True)
    (root / "annotations" / "panoptic_val").mkdir(parents=True)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "images" / "a.png")
    seg = np.zeros((H, W), np.int64)
    seg[GT_A], seg[GT_B], seg[CROWD] = 1, 2, 3
    rgb = np.stack([seg % 256, seg // 256 % 256, seg // 65536], -1).astype(np.uint8)
    Image.fromarray(rgb).save(root / "annotations" / "panoptic_val" / "a.png")
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}],
        "annotations": [
            {
                "image_id": 1,
                "file_name": "a.png",
                "segments_info": [
                    {"id": 1, "category_id": 1, "iscrowd": 0},
                    {"id": 2, "category_id": 2, "iscrowd": 0},
                    {"id": 3, "category_id": 2, "iscrowd": 1},
                ],
            }
        ],
        "categories": CATEGORIES,
    }
    (root / "annotations" / "panoptic_val.json").write_text(json.dumps(data))
    pred = tmp_path / "pred"
    pred.mkdir()
    lab, recs = prediction()
    tifffile.imwrite(pred / "a.tif", lab)
    (pred / "a.json").write_text(json.dumps({"image": "a", "instances": recs}))
    return root, pred


# --------------------------------------------------------------------------- readers


def test_coco_reader_keeps_crowd_as_crowd(tmp_path):
    root, _, _ = write_coco(tmp_path)
    s = open_dataset(root, format="coco")[0]
    assert s.classes.tolist() == [1, 2] and s.num_instances == 2
    assert s.meta["crowd"].shape == (1, H, W) and s.meta["crowd"].dtype == bool
    assert np.array_equal(s.meta["crowd"][0], CROWD)
    assert s.meta["crowd_classes"].tolist() == [2]
    assert np.array_equal(s.ignore, CROWD)  # still not trained on


def test_coco_panoptic_reader_keeps_crowd_as_crowd(tmp_path):
    root, _ = write_coco_panoptic(tmp_path)
    s = open_dataset(root, format="coco_panoptic")[0]
    assert s.classes.tolist() == [1, 2]
    assert np.array_equal(s.meta["crowd"][0], CROWD) and s.meta["crowd_classes"].tolist() == [2]
    assert np.array_equal(s.ignore, CROWD)
    assert (s.semantic[~(GT_A | GT_B | CROWD)] == 255).all()


def test_scorer_scores_crowd_regions_as_crowd_not_void(tmp_path):
    root, _, _ = write_coco(tmp_path)
    s = open_dataset(root, format="coco")[0]
    lab, recs = prediction()
    from instembed.structures import Instances

    pred = Instances(
        labels=lab.astype(np.int32),
        scores=np.array([r["score"] for r in recs], np.float32),
        classes=np.array([r["class"] for r in recs], np.int64),
    )
    scorer = Scorer()
    scorer.add(s, pred)
    ref = InstanceEvaluator()
    ref.add(
        np.stack([GT_A, GT_B, CROWD]),
        lab,
        scores={r["id"]: r["score"] for r in recs},
        pred_classes={r["id"]: r["class"] for r in recs},
        gt_classes=[1, 2, 2],
        crowd=[False, False, True],
    )
    got, want = scorer.summary(), ref.summary(per_image=False)
    for k, v in got.items():
        assert v == pytest.approx(want[k]), k
    assert got["PQ"] == pytest.approx((2 / 3 + 0.6) / 2)


# --------------------------------------------------------------------------- the CLI


def test_cli_coco_ap_equals_pycocotools_with_a_crowd_region(tmp_path):
    coco_mod = require("pycocotools.coco")
    cocoeval = require("pycocotools.cocoeval")
    mask_util = require("pycocotools.mask")
    root, gt_json, pred = write_coco(tmp_path)
    out = tmp_path / "m.json"
    args = ["evaluate", "--gt", str(root), "--pred", str(pred), "--gt-format", "coco"]
    assert main(args + ["--json", str(out)]) == 0
    res = json.loads(out.read_text())

    # pycocotools on the same files: the ground-truth json and the prediction files
    lab = tifffile.imread(pred / "a.tif")
    recs = json.loads((pred / "a.json").read_text())["instances"]
    dets = [
        {
            "image_id": 1,
            "category_id": r["class"],
            "segmentation": _rle(mask_util, lab == r["id"]),
            "score": r["score"],
        }
        for r in recs
    ]
    gt = coco_mod.COCO(str(gt_json))
    ev = cocoeval.COCOeval(gt, gt.loadRes(dets), "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    stats = dict(zip(["AP", "AP50", "AP75", "APs", "APm", "APl"], ev.stats[:6].tolist()))
    stats["AR"] = float(ev.stats[8])
    for k, v in stats.items():
        if v == -1:
            assert k in res["coco_undefined"], k
        else:
            assert res[k] == pytest.approx(v, abs=1e-9), k
    assert 0 < res["AP"] < 1


def test_cli_pq_follows_panopticapi_crowd_rule(tmp_path):
    # panopticapi: a prediction is no false positive when more than half of it lies on void or
    # on a crowd region *of its own class*; crowd pixels stay in the union (only void leaves it)
    root, _, pred = write_coco(tmp_path)
    out = tmp_path / "m.json"
    args = ["evaluate", "--gt", str(root), "--pred", str(pred), "--gt-format", "coco"]
    assert main(args + ["--json", str(out)]) == 0
    res = json.loads(out.read_text())
    # class 1: TP (IoU 1) + FP (prediction 3 lies on a crowd region of class 2) -> PQ 2/3;
    # class 2: B matched with IoU 36 / 60 = 0.6 (the crowd pixels count in the union);
    # prediction 4 lies on the class-2 crowd region: not a FP -> PQ 0.6
    assert res["PQ"] == pytest.approx((2 / 3 + 0.6) / 2)
    assert res["SQ"] == pytest.approx((1 + 0.6) / 2)
    assert res["RQ"] == pytest.approx((2 / 3 + 1) / 2)
    assert res["n_gt"] == 2  # the crowd region is no object to find


def test_cli_pq_on_coco_panoptic_with_crowd_and_void(tmp_path):
    root, pred = write_coco_panoptic(tmp_path)
    out = tmp_path / "m.json"
    args = ["evaluate", "--gt", str(root), "--pred", str(pred), "--gt-format", "coco_panoptic"]
    assert main(args + ["--json", str(out)]) == 0
    res = json.loads(out.read_text())
    # as above, but the 12 px of prediction 2 on void leave its union: IoU 36 / 48 = 0.75
    assert res["PQ"] == pytest.approx((2 / 3 + 0.75) / 2)
    assert res["RQ"] == pytest.approx((2 / 3 + 1) / 2)

"""``instembed evaluate`` on temporary folders: values, JSON keys and error messages."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from instembed.cli import main


def hand_scene():
    # the scene of test_metrics_core.hand_scene: SBD 0.4, DiC +1, AP_dsb@0.5 = 1/4
    gt = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 2, 2], [0, 0, 2, 2]], np.uint16)
    pred = np.array([[1, 1, 1, 0], [1, 1, 1, 0], [4, 0, 0, 0], [0, 0, 0, 3]], np.uint16)
    return gt, pred


def write_png(path, arr):
    Image.fromarray(np.asarray(arr, np.uint16)).save(path)


@pytest.fixture
def folders(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    gt, pred = hand_scene()
    tifffile.imwrite(gt_dir / "a.tif", gt)
    write_png(pred_dir / "a.png", pred)
    # the false positive (id 4) ranked first
    (pred_dir / "a.json").write_text(
        json.dumps(
            {
                "instances": [
                    {"id": 1, "score": 0.5},
                    {"id": 3, "score": 0.1},
                    {"id": 4, "score": 0.95},
                ]
            }
        )
    )
    perfect = np.zeros((6, 5), np.uint16)
    perfect[1:3, 1:4] = 7
    write_png(gt_dir / "b.png", perfect)
    tifffile.imwrite(pred_dir / "b.tif", perfect)
    return gt_dir, pred_dir


def test_evaluate_values_and_json(folders, tmp_path, capsys):
    gt_dir, pred_dir = folders
    out = tmp_path / "m.json"
    assert main(["evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "SBD" in text and "AP_dsb@0.5" in text
    res = json.loads(out.read_text())
    for k in ["SBD", "BestDice_gt_pred", "BestDice_pred_gt", "FBD", "DiC", "absDiC", "AP", "AP50"]:
        assert k in res
    for k in ["AP75", "APs", "APm", "APl", "AP_dsb@0.5", "AP_dsb@0.5:0.95", "PQ", "SQ", "RQ"]:
        assert k in res
    # image a: SBD 0.4, DiC 1, AP_dsb@0.5 1/4; image b perfect: 1, 0, 1 -> means over images
    assert res["SBD"] == pytest.approx((0.4 + 1.0) / 2)
    assert res["DiC"] == pytest.approx(0.5)
    assert res["AP_dsb@0.5"] == pytest.approx((0.25 + 1.0) / 2)
    rows = {r["image"]: r for r in res["per_image"]}
    assert set(rows) == {"a", "b"}
    # the sidecar scores were used: FP first -> precision 1/2 at recall 1/2 -> AP50 = 51*.5/101
    assert rows["a"]["AP50"] == pytest.approx(51 * 0.5 / 101)
    assert rows["b"]["PQ"] == 1.0


def test_evaluate_mask_stack_ground_truth(tmp_path):
    # two overlapping gt worms as a 3-D TIFF; the prediction finds one exactly
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    stack = np.zeros((2, 5, 5), np.uint8)
    stack[0, 1, :] = 255
    stack[1, :, 2] = 255
    tifffile.imwrite(gt_dir / "w.tif", stack)
    pred = np.zeros((5, 5), np.uint16)
    pred[1, :] = 1
    write_png(pred_dir / "w.png", pred)
    out = tmp_path / "m.json"
    rc = main(["evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir), "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    # TP 1 (IoU 1), FN 1 (the vertical worm: IoU 1/9 with the prediction) -> AP_dsb = 1/2
    assert res["AP_dsb@0.5"] == pytest.approx(0.5)
    assert res["DiC"] == -1.0


def test_missing_stem_is_an_error_naming_it(folders, capsys):
    gt_dir, pred_dir = folders
    (pred_dir / "b.tif").unlink()
    assert main(["evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir)]) == 2
    err = capsys.readouterr().err
    assert "no prediction" in err and "b" in err


def test_extra_prediction_is_an_error(folders, capsys):
    gt_dir, pred_dir = folders
    write_png(pred_dir / "zzz.png", np.zeros((4, 4)))
    assert main(["evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir)]) == 2
    assert "zzz.png" in capsys.readouterr().err


def test_size_mismatch_names_both_files(folders, capsys):
    gt_dir, pred_dir = folders
    write_png(pred_dir / "a.png", np.zeros((4, 5)))
    (pred_dir / "a.json").unlink()
    assert main(["evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir)]) == 2
    err = capsys.readouterr().err
    assert "a.png" in err and "a.tif" in err and "differs" in err


def test_unreadable_file_is_named(folders, capsys):
    gt_dir, pred_dir = folders
    (pred_dir / "b.tif").write_bytes(b"this is not a tiff")
    assert main(["evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir)]) == 2
    assert "b.tif" in capsys.readouterr().err


def test_sidecar_with_unknown_id_is_named(folders, capsys):
    gt_dir, pred_dir = folders
    (pred_dir / "a.json").write_text(json.dumps({"instances": [{"id": 9, "score": 0.3}]}))
    assert main(["evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir)]) == 2
    err = capsys.readouterr().err
    assert "a.json" in err and "id 9" in err


def test_metric_selection(folders, tmp_path):
    gt_dir, pred_dir = folders
    out = tmp_path / "m.json"
    args = ["evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir), "--json", str(out)]
    assert main(args + ["--metrics", "sbd,dsb"]) == 0
    res = json.loads(out.read_text())
    assert "SBD" in res and "AP_dsb@0.5" in res
    assert "AP" not in res and "PQ" not in res
    assert main(args + ["--metrics", "nope"]) == 2


def test_gt_through_a_data_reader_with_classes(tmp_path):
    # --gt-format folder: images/ + labels/ + classes.json (the data readers' generic layout)
    root, pred_dir = tmp_path / "ds", tmp_path / "pred"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    pred_dir.mkdir()
    gt = np.zeros((8, 8), np.uint16)
    gt[:3, :3], gt[5:, 5:] = 1, 2
    write_png(root / "images" / "s.png", (gt * 50).astype(np.uint8))
    write_png(root / "labels" / "s.png", gt)
    (root / "classes.json").write_text(json.dumps({"s": [1, 2]}))
    write_png(pred_dir / "s.png", gt)
    # right masks, but object 2 predicted as class 1: per class, class 1 has TP 1 + FP 1,
    # class 2 has FN 1 -> PQ_1 = 1/(1 + .5) = 2/3, PQ_2 = 0 -> PQ = 1/3
    (pred_dir / "s.json").write_text(
        json.dumps({"instances": [{"id": 1, "class": 1}, {"id": 2, "class": 1}]})
    )
    out = tmp_path / "m.json"
    args = ["evaluate", "--gt", str(root), "--pred", str(pred_dir), "--gt-format", "folder"]
    assert main(args + ["--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["PQ"] == pytest.approx(1 / 3)
    # SBD is class-agnostic (CVPPP): unaffected; AP_dsb matches within a class when classes
    # are given: TP 1, FP 1, FN 1 -> 1/3
    assert res["SBD"] == 1.0
    assert res["AP_dsb@0.5"] == pytest.approx(1 / 3)

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


# --------------------------------------------------------------------------- predict's output


def _labels(shape=(6, 5), box=(slice(1, 3), slice(1, 4)), value=1):
    lab = np.zeros(shape, np.uint16)
    lab[box] = value
    return lab


def _scores(out):
    return json.loads(out.read_text())


def test_overlays_semantic_maps_panoptic_and_json_are_not_predictions(folders, tmp_path):
    gt_dir, pred_dir = folders
    # what predict writes besides the label files
    Image.fromarray(np.full((4, 4, 3), 200, np.uint8)).save(pred_dir / "a_overlay.png")
    Image.fromarray(np.full((6, 5, 3), 200, np.uint8)).save(pred_dir / "b_overlay.png")
    write_png(pred_dir / "b_semantic.png", np.ones((6, 5)))
    (pred_dir / "panoptic").mkdir()
    Image.fromarray(np.zeros((6, 5, 3), np.uint8)).save(pred_dir / "panoptic" / "b.png")
    (pred_dir / "panoptic.json").write_text(json.dumps({"images": [], "annotations": []}))
    (pred_dir / "b.json").write_text(json.dumps({"image": "b", "instances": [{"id": 7}]}))
    out = tmp_path / "m.json"
    assert main(["evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir), "--json", str(out)]) == 0
    res = _scores(out)
    assert [r["image"] for r in res["per_image"]] == ["a", "b"]
    assert res["per_image"][1]["PQ"] == 1.0


def test_an_overlay_named_label_file_with_its_sidecar_is_a_prediction(tmp_path):
    # predict --format png on an image called x_overlay writes x_overlay.png + x_overlay.json
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    tifffile.imwrite(gt_dir / "x_overlay.tif", _labels())
    write_png(pred_dir / "x_overlay.png", _labels())
    (pred_dir / "x_overlay.json").write_text(json.dumps({"instances": [{"id": 1, "score": 1}]}))
    Image.fromarray(np.zeros((6, 5, 3), np.uint8)).save(pred_dir / "x_overlay_overlay.png")
    assert main(["evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir)]) == 0


def test_nested_predictions_match_by_relative_name(tmp_path, capsys):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    for plate, v in (("plate1", 1), ("plate2", 2)):
        (gt_dir / plate).mkdir(parents=True)
        (pred_dir / plate).mkdir(parents=True)
        tifffile.imwrite(gt_dir / plate / "A01.tif", _labels(value=v))
        # plate2's prediction misses its object: equal stems must not be confused
        tifffile.imwrite(pred_dir / plate / "A01.tif", _labels(value=v) * (plate == "plate1"))
        Image.fromarray(np.zeros((6, 5, 3), np.uint8)).save(pred_dir / plate / "A01_overlay.png")
    out = tmp_path / "m.json"
    assert main(["evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir), "--json", str(out)]) == 0
    rows = {r["image"]: r for r in _scores(out)["per_image"]}
    assert set(rows) == {"plate1/A01", "plate2/A01"}
    assert rows["plate1/A01"]["PQ"] == 1.0 and rows["plate2/A01"]["PQ"] == 0.0


def test_bare_stems_match_when_unambiguous_and_errors_name_the_items(tmp_path, capsys):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    (gt_dir / "plate1").mkdir(parents=True)
    (gt_dir / "plate2").mkdir()
    pred_dir.mkdir()
    tifffile.imwrite(gt_dir / "plate1" / "A01.tif", _labels())
    tifffile.imwrite(gt_dir / "plate2" / "B02.tif", _labels())
    tifffile.imwrite(pred_dir / "A01.tif", _labels())
    tifffile.imwrite(pred_dir / "B02.tif", _labels())
    assert main(["evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir)]) == 0
    # a second A01 makes the bare stem ambiguous
    tifffile.imwrite(gt_dir / "plate2" / "A01.tif", _labels())
    assert main(["evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir)]) == 2
    err = capsys.readouterr().err
    assert "A01" in err and "plate1/A01" in err and "plate2/A01" in err
    # an item without prediction and a prediction without ground truth are both named
    (gt_dir / "plate2" / "A01.tif").unlink()
    (pred_dir / "B02.tif").rename(pred_dir / "C03.tif")
    assert main(["evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir)]) == 2
    err = capsys.readouterr().err
    assert "plate2/B02" in err and "C03.tif" in err


def _cvppp_tree(root):
    rng = np.random.default_rng(0)
    leaves = {}
    for tray, plants in (("A1", ("plant001", "plant002")), ("A2", ("plant001",))):
        (root / tray).mkdir(parents=True)
        for plant in plants:
            lab = np.zeros((12, 14), np.uint8)
            lab[2:6, 2:7], lab[7:11, 5:12] = 1, 2
            rgb = (rng.random((12, 14, 3)) * 255).astype(np.uint8)
            Image.fromarray(rgb).save(root / tray / f"{plant}_rgb.png")
            Image.fromarray(lab).save(root / tray / f"{plant}_label.png")
            Image.fromarray((lab > 0).astype(np.uint8) * 255).save(root / tray / f"{plant}_fg.png")
            leaves[f"{tray}/{plant}"] = lab
    return leaves


def test_cvppp_tree_scored_with_the_names_predict_writes(tmp_path, capsys):
    from instembed.engine.outputs import output_names
    from instembed.engine.predict import expand_inputs

    root = tmp_path / "cvppp"
    leaves = _cvppp_tree(root)
    files, bad = expand_inputs([str(root / "A1"), str(root / "A2")])
    assert not bad
    names = output_names(files)  # what `predict ROOT/A1 ROOT/A2 --out DIR` writes
    assert "A1/plant001_rgb" in names and "A2/plant001_rgb" in names
    pred = tmp_path / "pred"
    for name in names:  # every image of the folders, label and fg files included
        (pred / name).parent.mkdir(parents=True, exist_ok=True)
        item = name.rsplit("_", 1)[0]
        lab = leaves[item] if name.endswith("_rgb") else np.zeros((12, 14), np.uint8)
        tifffile.imwrite(pred / f"{name}.tif", lab.astype(np.uint16))
        Image.fromarray(np.zeros((12, 14, 3), np.uint8)).save(pred / f"{name}_overlay.png")
    out = tmp_path / "m.json"
    args = ["evaluate", "--gt-format", "cvppp", "--gt", str(root), "--pred", str(pred)]
    assert main(args + ["--json", str(out)]) == 0
    assert "left out 6 prediction(s)" in capsys.readouterr().out  # the _label and _fg ones
    res = _scores(out)
    assert sorted(r["image"] for r in res["per_image"]) == [
        "A1/plant001",
        "A1/plant002",
        "A2/plant001",
    ]
    assert res["SBD"] == 1.0
    # predictions named after the items (A1/plant001.tif) work as well
    pred2 = tmp_path / "pred2"
    for item, lab in leaves.items():
        (pred2 / item).parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(pred2 / f"{item}.tif", lab.astype(np.uint16))
    assert main(["evaluate", "--gt-format", "cvppp", "--gt", str(root), "--pred", str(pred2)]) == 0


def test_bbbc010_and_dsb2018_match_predictions_named_after_image_files(tmp_path):
    from instembed.engine.outputs import output_names
    from instembed.engine.predict import expand_inputs

    # BBBC010: items are wells (A04), predict names outputs after the image files
    root = tmp_path / "bbbc010"
    (root / "BBBC010_v1_images").mkdir(parents=True)
    (root / "BBBC010_v1_foreground_eachworm").mkdir()
    worm = np.zeros((10, 12), np.uint8)
    worm[2:4, 1:10] = 255
    for well in ("A04", "B11"):
        img = root / "BBBC010_v1_images" / f"1649_1109_0003_Amp5-1_B_20070424_{well}_w2_X1.tif"
        tifffile.imwrite(img, np.zeros((10, 12), np.uint16))
        Image.fromarray(worm).save(
            root / "BBBC010_v1_foreground_eachworm" / f"{well}_01_ground_truth.png"
        )
    pred = tmp_path / "pred010"
    files, _ = expand_inputs([str(root / "BBBC010_v1_images")])
    for name in output_names(files):
        assert name.startswith("1649_")
        (pred / name).parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(pred / f"{name}.tif", (worm > 0).astype(np.uint16))
    out = tmp_path / "m.json"
    args = ["evaluate", "--gt-format", "bbbc010", "--gt", str(root), "--pred", str(pred)]
    assert main(args + ["--json", str(out)]) == 0
    res = _scores(out)
    assert [r["image"] for r in res["per_image"]] == ["A04", "B11"] and res["PQ"] == 1.0

    # DSB2018: items are image ids; predict on two <id>/images folders keeps <id>/images/<id>
    root = tmp_path / "dsb"
    nucleus = np.zeros((8, 9), np.uint8)
    nucleus[2:5, 3:7] = 255
    for i in ("0a1b", "0c2d"):
        (root / "stage1_train" / i / "images").mkdir(parents=True)
        (root / "stage1_train" / i / "masks").mkdir()
        Image.fromarray(np.zeros((8, 9), np.uint8)).save(
            root / "stage1_train" / i / "images" / f"{i}.png"
        )
        Image.fromarray(nucleus).save(root / "stage1_train" / i / "masks" / "m1.png")
    files, _ = expand_inputs([str(root / "stage1_train" / i / "images") for i in ("0a1b", "0c2d")])
    pred = tmp_path / "preddsb"
    for name in output_names(files):
        assert name.endswith("/images/0a1b") or name.endswith("/images/0c2d")
        (pred / name).parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(pred / f"{name}.tif", (nucleus > 0).astype(np.uint16))
    args = ["evaluate", "--gt-format", "dsb2018", "--gt", str(root), "--pred", str(pred)]
    assert main(args + ["--json", str(out)]) == 0
    assert [r["image"] for r in _scores(out)["per_image"]] == ["0a1b", "0c2d"]


# --------------------------------------------------------------------------- one scoring path


def test_new_metric_groups_are_chosen_by_default_and_printed(folders, tmp_path, capsys):
    from instembed.commands.evaluate import GROUPS
    from instembed.metrics.evaluator import METRIC_GROUPS

    assert set(GROUPS) == set(METRIC_GROUPS)
    gt_dir, pred_dir = folders
    out = tmp_path / "m.json"
    args = ["evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir), "--json", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    res = _scores(out)
    for key in ("precision@0.5", "recall@0.5", "F1@0.5", "AJI", "ARE", "VI"):
        assert key in res, key
        assert f"  {key} " in text, key
    assert main(args + ["--metrics", "prf,aji,rand"]) == 0
    res = _scores(out)
    assert "F1@0.5" in res and "AJI" in res and "ARE" in res and "SBD" not in res


def test_evaluate_scores_through_the_engine_scorer(folders, tmp_path, monkeypatch):
    from instembed.engine import evaluation

    calls = []
    original = evaluation.Scorer.add

    def spy(self, gt, pred, *args, **kwargs):
        calls.append(kwargs.get("name"))
        return original(self, gt, pred, *args, **kwargs)

    monkeypatch.setattr(evaluation.Scorer, "add", spy)
    gt_dir, pred_dir = folders
    out = tmp_path / "m.json"
    assert main(["evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir), "--json", str(out)]) == 0
    assert calls == ["a", "b"]
    # and the numbers are those of engine.evaluation.score on the same arrays
    from instembed.structures import Instances

    gt, pred = hand_scene()
    perfect = np.zeros((6, 5), np.int32)
    perfect[1:3, 1:4] = 1
    lab = np.searchsorted([1, 3, 4], pred) + 1
    lab[pred == 0] = 0
    preds = [
        Instances(labels=lab.astype(np.int32), scores=np.array([0.5, 0.1, 0.95], np.float32)),
        Instances(labels=perfect),
    ]
    want = evaluation.score([gt.astype(np.int32), perfect], preds)
    res = _scores(out)
    for k, v in want.items():
        assert res[k] == pytest.approx(v), k


def test_help_shows_every_default_and_threads(capsys):
    from instembed.cli import build_parser

    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("(default: labels)", "(default: all)", "(default: 100)", "(default: off)"):
        assert shown in text, shown
    assert "--threads N" in text
    # every option with a default shows it, in its own block of the help
    ev = next(a for a in parser._actions if a.dest == "command").choices["evaluate"]
    blocks, current = {}, None
    for line in ev.format_help().splitlines():
        if line.startswith("  -"):
            current = line.split()[0].rstrip(",")
            blocks[current] = ""
        if current:
            blocks[current] += " " + line.strip()
    for action in ev._actions:
        if action.option_strings and action.default is not None and action.dest != "help":
            assert "(default: " in blocks[action.option_strings[0]], action.option_strings


def test_threads_option(folders, capsys):
    gt_dir, pred_dir = folders
    assert main(["evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir), "--threads", "1"]) == 0
    assert main(["evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir), "--threads", "0"]) == 2
    assert "--threads" in capsys.readouterr().err

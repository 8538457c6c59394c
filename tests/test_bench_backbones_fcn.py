"""benchmarks/repro_backbones.py --cityscapes (a fake Cityscapes tree written here), the CPU
budget of both benchmarks' full modes, and their RESULTS.md sections (hand-written JSONs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import backbones_cityscapes as bc  # noqa: E402
import collect_backbones_fcn as cbf  # noqa: E402
import repro_backbones as rb  # noqa: E402
import repro_instance_fcn as rif  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

# labelId -> trainId, written out by hand from cityscapesScripts' helpers/labels.py
HAND_TRAIN_ID = {0: 255, 4: 255, 7: 0, 8: 1, 11: 2, 23: 10, 24: 11, 26: 13, 29: 255}
H, W = 64, 128


def label_ids(variant: int) -> np.ndarray:
    """A 64 x 128 labelIds image; every region boundary on even rows / columns, so a 0.5
    nearest-neighbour downscale keeps each 2 x 2 block's single value."""
    lab = np.full((H, W), 7, np.uint8)  # road
    lab[:16] = 23  # sky
    lab[16:32, :40] = 11  # building
    lab[32:48, 100:] = 8  # sidewalk
    lab[48:, :8] = 0  # unlabeled -> void
    lab[40:56, 20 + 8 * variant : 44 + 8 * variant] = 26  # a car, moved per image
    lab[36:46, 80:86] = 24  # a person (apart from the car)
    lab[56:, 70:90] = 29  # caravan (not evaluated) -> void
    lab[0:4, 120:] = 4  # static -> void
    return lab


def instance_ids(lab: np.ndarray) -> np.ndarray:
    inst = lab.astype(np.int32)
    inst[lab == 26] = 26000
    inst[lab == 24] = 24000
    inst[lab == 29] = 29000
    return inst


def fake_cityscapes(root: Path, n_train: int = 2, n_val: int = 1) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            stem = f"testcity_{i:06d}_000019"
            img_dir = root / "leftImg8bit" / split / "testcity"
            gt_dir = root / "gtFine" / split / "testcity"
            img_dir.mkdir(parents=True, exist_ok=True)
            gt_dir.mkdir(parents=True, exist_ok=True)
            lab = label_ids(i + (3 if split == "val" else 0))
            rgb = (rng.random((H, W, 3)) * 60 + lab[..., None] * 6).astype(np.uint8)
            Image.fromarray(rgb).save(img_dir / f"{stem}_leftImg8bit.png")
            Image.fromarray(lab).save(gt_dir / f"{stem}_gtFine_labelIds.png")
            Image.fromarray(instance_ids(lab).astype(np.uint16)).save(
                gt_dir / f"{stem}_gtFine_instanceIds.png"
            )
    return root


def hand_train_ids(lab: np.ndarray) -> np.ndarray:
    out = np.full(lab.shape, -1, np.int64)
    for lid, tid in HAND_TRAIN_ID.items():
        out[lab == lid] = tid
    assert (out >= 0).all()  # every labelId used above is in the hand table
    return out


def test_cityscapes_label_mapping_and_downscale(tmp_path):
    root = fake_cityscapes(tmp_path / "cs")
    train = bc.load_split(root, "train", 0.5, 0)
    val = bc.load_split(root, "val", 0.5, 0)
    assert len(train) == 2 and len(val) == 1
    for s, variant in ((train[0], 0), (train[1], 1), (val[0], 3)):
        assert s.shape == (32, 64) and s.image.shape == (3, 32, 64)
        expected = hand_train_ids(label_ids(variant))[::2, ::2]
        np.testing.assert_array_equal(s.semantic, expected)
    sem = val[0].semantic
    assert sem[0, 0] == 10 and sem[30, 0] == 255 and sem[20, 0] == 0  # sky, void, road
    assert (sem == 13).sum() == 8 * 12  # the car: 16 x 24 px at full size
    # void at half size: static 2 x 4, unlabeled 8 x 4, caravan 4 x 10 pixels
    assert (sem == 255).sum() == 2 * 4 + 8 * 4 + 4 * 10
    assert (sem == 11).sum() == 5 * 3  # the person (a crowd-free instance), 10 x 6 at full size


def test_cityscapes_evenly_spaced_subset():
    assert bc.evenly_spaced(10, 0) == list(range(10))
    assert bc.evenly_spaced(10, 3) == [0, 4, 9]  # linspace(0, 9, 3) = 0, 4.5 -> 4, 9
    assert bc.evenly_spaced(2, 5) == [0, 1]


def test_cityscapes_wrong_layout_names_the_path(tmp_path, capsys):
    bad = tmp_path / "not_cityscapes"
    (bad / "leftImg8bit" / "train").mkdir(parents=True)
    with pytest.raises(SystemExit):
        rb.main(["--cityscapes", str(bad), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert str(bad / "gtFine" / "train") in err and str(bad / "leftImg8bit" / "val") in err
    with pytest.raises(ValueError, match="no such folder"):
        bc.check_layout(tmp_path / "missing")


def slow_miou(gt: np.ndarray, pred: np.ndarray, k: int) -> tuple[float, dict]:
    """Per-class IoU by set counting over the non-void pixels; mean over the classes present in
    ground truth or prediction."""
    keep = gt != 255
    ious = {}
    for c in range(k):
        g, p = (gt == c) & keep, (pred == c) & keep
        union = int((g | p).sum())
        if union:
            ious[c] = int((g & p).sum()) / union
    return sum(ious.values()) / len(ious), ious


def test_cityscapes_two_step_run_scores_19_classes(tmp_path):
    from instembed.engine import checkpoint as ck
    from instembed.models import build_model

    root = fake_cityscapes(tmp_path / "cs")
    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = ["--quick", "--steps", "2", "--backbones", "enet", "--cityscapes", str(root)]
    argv += ["--cityscapes-scale", "0.5", "--cityscapes-crop", "32", "32"]
    assert rb.main(argv + ["--out", str(out), "--runs", str(runs)]) == 0
    r = json.loads((out / "repro_backbones_cityscapes.json").read_text())
    assert r["complete"] and r["dataset"] == "cityscapes" and r["num_classes"] == 19
    assert r["panoptic_rows"] == []
    (row,) = r["semantic_rows"]
    assert row["steps"] == 2 and row["n_val_images"] == 1
    assert row["config"]["model"]["params"]["heads"] == {"semantic": 19}
    assert row["speed_input"] == [32, 64]
    # the trained model's argmax on the val image, scored by hand against the hand-mapped labels
    model = build_model("embedding", backbone="enet", in_channels=3, heads={"semantic": 19})
    state = ck.load_checkpoint(runs / "quick_cityscapes_semantic_enet" / "last.pt")
    ck.load_model_state(model, state["model"])
    (val,) = bc.load_split(root, "val", 0.5, 0)
    with torch.no_grad():
        pred = model.eval()(torch.from_numpy(val.image)[None]).semantic[0].argmax(0).numpy()
    gt = hand_train_ids(label_ids(3))[::2, ::2]
    miou, ious = slow_miou(gt, pred, 19)
    assert len(ious) >= 6  # road, sidewalk, building, sky, person, car are in the ground truth
    assert row["mIoU"] == pytest.approx(miou, abs=1e-9)
    assert {int(c): v for c, v in row["IoU_per_class"].items()} == pytest.approx(ious)


def test_budget_stops_training_by_cpu_seconds(tmp_path):
    """A tiny CPU budget ends the run long before its step cap; the record says so."""
    data = rb.street_data({**rb.MODES["quick"], "n_train": 4, "n_val": 1}, 0)
    cfg = rb.semantic_config("enet", data, 10_000, 0)
    _, rec, _ = rb.train(cfg, tmp_path / "run", data, budget_cpu=0.5)
    assert rec["status"] == "stopped" and 1 <= rec["steps"] < 10_000
    assert 0.5 <= rec["cpu_s"] < 30 and not rec["reused"]
    _, again, _ = rb.train(cfg, tmp_path / "run", data, budget_cpu=0.5)  # same config + budget
    assert again["reused"] and again["steps"] == rec["steps"]
    _, other, _ = rb.train(cfg, tmp_path / "run", data, budget_cpu=0.6)  # another budget
    assert not other["reused"]


def test_instance_fcn_full_mode_budgets():
    full = rif.MODES["full"]
    assert rif.budget_of(full, "dot_grid") == 180 and rif.budget_of(full, "bbbc039") == 420
    assert rif.budget_of({**full, "budget_cpu": 7.0}, "bbbc039") == 7.0
    assert rif.budget_of(rif.MODES["quick"], "dot_grid") is None


# --------------------------------------------------------------------------- RESULTS.md sections
def backbones_json(mode: str, budget: float | None) -> dict:
    row = {
        "backbone": "enet", "params": 360483, "mIoU": 0.5, "images_per_s": 2.0, "peak_mb": 80.0,
        "steps": 321, "train_s": 400.0, "cpu_s": 240.4, "status": "stopped",
        "IoU_per_class": {"0": 0.9, "4": 0.2, "5": 0.4, "6": 0.6},
    }  # fmt: skip
    return {
        "dataset": "street", "num_classes": 7, "thing_classes": [4, 5, 6], "mode": mode,
        "script": "benchmarks/repro_backbones.py --threads 1", "complete": True,
        "settings": {
            "steps": 1500, "speed_size": [256, 512], "n_train": 256, "n_val": 32,
            "size": [128, 256], "crop": [96, 128], "batch_size": 4, "seed": 0, "threads": 1,
        },
        "budget_cpu_per_run": budget, "semantic_rows": [row], "panoptic_rows": [],
        "loadavg_start": [0.25, 0.3, 0.3], "loadavg_end": [1.5, 1.2, 1.0], "cpu_s_total": 2880.0,
    }  # fmt: skip


def test_backbones_section_renders_full_and_quick(tmp_path):
    (tmp_path / "repro_backbones_full.json").write_text(json.dumps(backbones_json("full", 240.0)))
    quick = backbones_json("quick", None)
    for key in ("dataset", "num_classes", "thing_classes", "budget_cpu_per_run", "loadavg_start"):
        del quick[key]  # a quick JSON written before this change
    quick["settings"]["steps"] = 100
    (tmp_path / "repro_backbones.json").write_text(json.dumps(quick))
    text = "\n".join(cbf.section_backbones(tmp_path))
    assert text.index("**street, full mode** (240 CPU s") < text.index("**street, quick mode**")
    full_row = "| enet | 360,483 | 0.500 | 0.400 | 2.00 | 80.0 | 321 | 240 |"  # things: 0.2/.4/.6
    assert full_row in text
    assert "| enet | 360,483 | 0.500 | 0.400 | 2.00 | 80.0 | 321 | 400 |" in text  # quick: wall s
    assert "Load average at start 0.25, at end 1.5." in text and "48.0 CPU-minutes" in text
    assert "Every run trained for 100 steps." in text


def test_backbones_section_cityscapes_things(tmp_path):
    r = backbones_json("full", 240.0)
    r.update(dataset="cityscapes", num_classes=19, thing_classes=list(range(11, 19)))
    r["data"] = {"path": "/data/cityscapes", "scale": 0.25}
    r["semantic_rows"][0]["IoU_per_class"] = {"0": 0.9, "11": 0.1, "13": 0.3}
    (tmp_path / "repro_backbones_cityscapes_full.json").write_text(json.dumps(r))
    text = "\n".join(cbf.section_backbones(tmp_path))
    assert text.startswith("## Backbones on the synthetic street scenes and Cityscapes:")
    assert "**cityscapes, full mode**" in text and "| 0.200 |" in text  # (0.1 + 0.3) / 2
    assert "`{semantic: 19}`" in text and "downscaled by 0.25" in text


def test_instance_fcn_section_renders_full(tmp_path):
    m = {"AP_dsb@0.5": 0.9, "AP": 0.7, "AP50": 0.8, "AP75": 0.6}
    full = {
        "script": "benchmarks/repro_instance_fcn.py", "mode": "full",
        "protocol": {"steps": 1500, "budget_cpu": {"dot_grid": 180.0, "bbbc039": 420.0}},
        "metrics": {"dot_grid": {"isfcn": m, "ordering/components": m}},
        "runs": {"dot_grid": {"isfcn": {"steps": 917, "cpu_s": 180.6}}},
        "loadavg_start": [0.5, 0.5, 0.5], "loadavg_end": [1.0, 1.0, 1.0], "cpu_s_total": 2400.0,
    }  # fmt: skip
    (tmp_path / "repro_instance_fcn_full.json").write_text(json.dumps(full))
    text = "\n".join(cbf.section_instance_fcn(tmp_path))
    assert "(CPU s of training per run: dot_grid 180)" in text  # bbbc039 not run: not listed
    assert "| dot_grid | isfcn | 0.900 | 0.700 | 0.800 | 0.600 | 917 | 181 |" in text
    assert "| dot_grid | ordering/components | 0.900 | 0.700 | 0.800 | 0.600 | - | - |" in text
    assert "40.0 CPU-minutes all in" in text and "Load average at start 0.5, at end 1.0." in text

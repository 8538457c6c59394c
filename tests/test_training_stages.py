"""benchmarks/training_stages.py: a stage recorded from a run folder beside the card it started
from, and its RESULTS.md row. Hand-made files; expected values written out here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import training_stages as ts  # noqa: E402


def metrics(ap, fp):
    return {
        "AP_dsb@0.5": ap,
        "AP_dsb@0.5:0.95": 0.7,
        "AP": 0.6,
        "FP_per_image@0.5": fp,
        "FN_per_image@0.5": 10.0,
    }


@pytest.fixture
def run(tmp_path):
    folder = tmp_path / "runs" / "toy-3"
    folder.mkdir(parents=True)
    summary = {
        "name": "toy",
        "steps": 1400,
        "train_seconds": 3333.9,  # the warm start's 2080.5 s included
        "init": {"model": "toy", "steps": 1300, "train_seconds": 2080.5},
        "cluster": {"method": "seeded", "params": {"seed_thresh": 0.9}},
        "split": {"n_val": 30},
        "val_metrics": metrics(0.883, 4.1),
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    card = {
        "name": "toy",
        "sha256": "a" * 64,
        "val_metrics": metrics(0.904, 2.5),
        "history": [{"version": 1}, {"version": 2}],
    }
    return folder, card


def test_stage_reads_before_and_after_and_its_own_time(run, tmp_path):
    folder, card = run
    e = ts.stage_entry(folder, "gain 0.25-1.25", False, card)
    assert e["before"]["version"] == 2 and e["before"]["AP_dsb@0.5"] == 0.904
    assert e["after"]["AP_dsb@0.5"] == 0.883 and e["after"]["FP_per_image@0.5"] == 4.1
    assert e["train_seconds"] == pytest.approx(3333.9 - 2080.5)
    assert e["steps"] == 1400 and e["cluster"] == {"seed_thresh": 0.9}
    out = tmp_path / "results" / "training_stages.json"
    ts.add(e, out)
    rows = ts.add({**e, "change": "again"}, out)  # the same run folder replaces its entry
    assert [r["change"] for r in rows] == ["again"]
    lines = ts.section(out.parent)
    row = [ln for ln in lines if ln.startswith("| again")][0]
    # 1253.4 s = 21 CPU-min; AP 0.904 -> 0.883; FP / image 2.50 -> 4.10; not shipped
    assert row.startswith("| again | 1400 | 21 | 0.904 -> 0.883 | - | 0.700 -> 0.700 |")
    assert "| 2.50 -> 4.10 | 10.00 -> 10.00 | no |" in row


def test_a_run_of_another_model_is_refused(run):
    folder, card = run
    with pytest.raises(SystemExit, match="is a run of 'toy', not of 'other'"):
        ts.stage_entry(folder, "x", False, {**card, "name": "other"})
    with pytest.raises(SystemExit, match="summary.json: not found"):
        ts.stage_entry(folder.parent, "x", False, card)


def test_a_retune_of_the_shipped_weights_adds_no_steps(run):
    folder, card = run
    summary = json.loads((folder / "summary.json").read_text())
    # --retune: the run carries the shipped card's own steps and time
    card = {**card, "steps": summary["steps"], "train_seconds": summary["train_seconds"]}
    e = ts.stage_entry(folder, "re-tuned", True, card)
    assert e["steps"] == 0 and e["train_seconds"] == 0.0


def test_the_paired_bootstrap_gain_is_shown(run, tmp_path):
    folder, card = run
    summary = json.loads((folder / "summary.json").read_text())
    summary["vs_shipped"] = {"diff": 0.0157, "ci": [-0.0043, 0.0412], "p_not_better": 0.117}
    (folder / "summary.json").write_text(json.dumps(summary))
    e = ts.stage_entry(folder, "low lr", False, card)
    assert e["vs_shipped"]["ci"] == [-0.0043, 0.0412]
    out = tmp_path / "results" / "training_stages.json"
    ts.add(e, out)
    row = [ln for ln in ts.section(out.parent) if ln.startswith("| low lr")][0]
    assert "| 0.904 -> 0.883 | +0.016 [-0.004, +0.041], 0.12 | 0.700 -> 0.700 |" in row

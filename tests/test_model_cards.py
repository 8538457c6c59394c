"""benchmarks/model_cards.py: the history rows of a re-shipped model and the peer table of its
card. Hand-made cards in a temporary folder; every expected value is written out here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import model_cards as mc  # noqa: E402


def card(sha: str, steps: int, init_steps: int | None, ap: float, fpi: float) -> dict:
    return {
        "name": "toy",
        "dataset": "bbbc039",
        "sha256": sha,
        "steps": steps,
        "init": None if init_steps is None else {"model": "toy", "steps": init_steps},
        "train_seconds": 600.0,
        "cluster": {"method": "seeded", "params": {"seed_thresh": 0.875, "connected": True}},
        "val_metrics": {"AP_dsb@0.5": ap, "AP": 0.5, "FP_per_image@0.5": fpi},
    }


@pytest.fixture
def folders(tmp_path, monkeypatch):
    pre, res = tmp_path / "pretrained", tmp_path / "benchmarks" / "results"
    pre.mkdir()
    res.mkdir(parents=True)
    monkeypatch.setattr(mc, "PRETRAINED", pre)
    monkeypatch.setattr(mc, "REPO", tmp_path)
    return pre, res


def test_history_appends_a_version_with_total_steps(folders):
    pre, _ = folders
    first = mc.history_with("toy", card("a" * 64, 1000, None, 0.80, 9.0), "from scratch")
    assert [(r["version"], r["steps"], r["change"]) for r in first] == [(1, 1000, "from scratch")]
    (pre / "toy.json").write_text(
        json.dumps({**card("a" * 64, 1000, None, 0.8, 9.0), "history": first})
    )
    # a warm start of 400 steps from the 1000-step weights: 1400 steps in all, version 2
    second = mc.history_with("toy", card("b" * 64, 400, 1000, 0.85, 3.0), "connected")
    assert [(r["version"], r["steps"]) for r in second] == [(1, 1000), (2, 1400)]
    assert second[1]["AP_dsb@0.5"] == 0.85 and second[1]["FP_per_image@0.5"] == 3.0
    assert second[1]["sha256"] == "b" * 64 and second[1]["cluster"]["connected"] is True
    table = mc.history_table(second)
    assert table[4].startswith("| 1 | from scratch | 1000 |") and "| 0.800 |" in table[4]
    assert table[5].startswith("| 2 | connected | 1400 |") and table[5].endswith("| 3.00 |")


def test_peer_table_shows_only_full_runs_of_this_version(folders):
    _, res = folders

    def row(method, ap):
        return {
            "method": method,
            "AP_dsb@0.5": ap,
            "AP_dsb@0.5:0.95": 0.7,
            "AP": 0.6,
            "FP_per_image@0.5": 2.0,
            "s_per_image": 0.3,
            "train_seconds": 2100.0,
        }

    def peer(sha, smoke, name):
        return {
            "script": f"benchmarks/{name}.py",
            "smoke_test": smoke,
            "shipped_model": {"sha256": sha},
            "rows": [row("instembed", 0.9), row(name, 0.88)],
        }

    this = card("c" * 64, 1000, None, 0.9, 2.0)
    assert mc.peer_table(this) == []  # no peer run yet
    (res / "peer_bbbc039.json").write_text(json.dumps(peer("c" * 64, False, "stardist")))
    (res / "peer_cellpose_bbbc039.json").write_text(json.dumps(peer("c" * 64, False, "cellpose")))
    (res / "peer_old_bbbc039.json").write_text(json.dumps(peer("d" * 64, False, "older")))
    (res / "peer_smoke_bbbc039.json").write_text(json.dumps(peer("c" * 64, True, "smoke")))
    lines = mc.peer_table(this)
    methods = [
        ln.split(" | ")[0].lstrip("| ") for ln in lines if ln.startswith("| ") and "---" not in ln
    ]
    # one instembed row (both files score the same version), then each peer in file-name order
    # (peer_bbbc039 = StarDist, peer_cellpose_bbbc039); the run against another version of the
    # model and the smoke test are left out
    assert methods[1:] == ["instembed", "stardist", "cellpose"]
    assert "| 0.880 |" in lines[5] and "| 2.00 | 0.30 | 35 min |" in lines[5]


def test_peer_table_keeps_peers_of_an_earlier_version_under_their_own_heading(folders):
    _, res = folders

    def peer(sha, ie_ap, name, peer_ap):
        rows = [
            {
                "method": m,
                "AP_dsb@0.5": ap,
                "AP_dsb@0.5:0.95": 0.7,
                "AP": 0.6,
                "FP_per_image@0.5": 2.0,
                "s_per_image": 0.3,
                "train_seconds": 600.0,
            }
            for m, ap in (("instembed", ie_ap), (name, peer_ap))
        ]
        return {"script": f"{name}.py", "shipped_model": {"sha256": sha}, "rows": rows}

    # version 2 (sha f) is shipped; StarDist was trained beside version 1 (sha e) and scored it
    this = card("f" * 64, 400, 1000, 0.93, 2.0)
    this["history"] = [
        {"version": 1, "sha256": "e" * 64},
        {"version": 2, "sha256": "f" * 64},
    ]
    (res / "peer_bbbc039.json").write_text(json.dumps(peer("e" * 64, 0.90, "stardist", 0.77)))
    (res / "peer_unknown_bbbc039.json").write_text(json.dumps(peer("9" * 64, 0.5, "x", 0.5)))
    lines = mc.peer_table(this)
    headings = [ln for ln in lines if ln.startswith("## ")]
    assert len(headings) == 1 and "beside version 1" in headings[0]
    assert "not this version 2" in headings[0]
    body = [ln for ln in lines if ln.startswith("| ") and "---" not in ln][1:]
    assert [ln.split(" | ")[0].lstrip("| ") for ln in body] == ["instembed", "stardist"]
    assert "| 0.900 |" in body[0] and "| 0.770 |" in body[1]
    # a run beside this very version comes first, under the same-budget heading
    (res / "peer_cellpose_bbbc039.json").write_text(json.dumps(peer("f" * 64, 0.93, "cp", 0.8)))
    headings = [ln for ln in mc.peer_table(this) if ln.startswith("## ")]
    assert len(headings) == 2 and "same CPU budget" in headings[0]
    assert "beside version 1" in headings[1]


def test_weights_digest_ignores_the_config_and_sees_every_tensor(tmp_path):
    import torch

    from instembed.engine import checkpoint as ck

    state = {"a.weight": torch.arange(6.0).reshape(2, 3), "b.bias": torch.ones(2)}
    ck.save_checkpoint(tmp_path / "1.pt", model_state=state, config_yaml="data: {}\n", step=5)
    ck.save_checkpoint(
        tmp_path / "2.pt",
        model_state=state,
        config_yaml="data: {object_diameter: [1, 2, 3]}\n",
        step=5,
    )
    changed = {**state, "b.bias": torch.tensor([1.0, 1.0 + 2**-20])}
    ck.save_checkpoint(tmp_path / "3.pt", model_state=changed, config_yaml="data: {}\n", step=5)
    renamed = {"a.weight": state["a.weight"], "c.bias": state["b.bias"]}
    ck.save_checkpoint(tmp_path / "4.pt", model_state=renamed, config_yaml="data: {}\n", step=5)
    d = [mc.weights_digest(tmp_path / f"{i}.pt") for i in (1, 2, 3, 4)]
    assert (tmp_path / "1.pt").read_bytes() != (tmp_path / "2.pt").read_bytes()
    assert d[0] == d[1] and len({d[0], d[2], d[3]}) == 3


def test_same_model_shas_needs_weights_inputs_and_clustering_alike():
    pr = {"normalize": "percentile"}
    hist = [
        {"version": 1, "sha256": "1", "weights": "w", "reader_params": pr, "cluster": {"s": 0.8}},
        {"version": 2, "sha256": "2", "weights": "w", "reader_params": pr, "cluster": {"s": 0.9}},
        {"version": 3, "sha256": "3", "weights": "w", "reader_params": {}, "cluster": {"s": 0.9}},
        {"version": 4, "sha256": "4", "weights": "v", "reader_params": pr, "cluster": {"s": 0.9}},
        {"version": 5, "sha256": "5", "weights": "w", "reader_params": pr, "cluster": {"s": 0.9}},
    ]
    # version 5: same weights, inputs and clustering as version 2 only
    assert mc.same_model_shas({"sha256": "5", "history": hist}) == {"2", "5"}
    # a row without a weights digest (older cards) matches nothing but itself
    old = [{"version": 1, "sha256": "1"}, {"version": 2, "sha256": "2"}]
    assert mc.same_model_shas({"sha256": "2", "history": old}) == {"2"}
    assert mc.same_model_shas({"sha256": "9"}) == {"9"}


def test_peer_table_counts_a_reship_with_the_same_weights_as_this_version(folders):
    _, res = folders
    rows = [
        {
            "method": m,
            "AP_dsb@0.5": 0.8,
            "AP_dsb@0.5:0.95": 0.7,
            "AP": 0.6,
            "FP_per_image@0.5": 2.0,
            "s_per_image": 0.3,
            "train_seconds": 600.0,
        }
        for m in ("instembed", "stardist")
    ]
    this = card("b" * 64, 400, 1000, 0.93, 2.0)
    same = {"weights": "w", "reader_params": {"normalize": "percentile"}, "cluster": {"s": 1}}
    this["history"] = [
        {"version": 1, "sha256": "a" * 64, **same},
        {"version": 2, "sha256": "b" * 64, **same},  # re-shipped: only the config's metadata
    ]
    peer = {"script": "p.py", "shipped_model": {"sha256": "a" * 64}, "rows": rows}
    (res / "peer_bbbc039.json").write_text(json.dumps(peer))
    headings = [ln for ln in mc.peer_table(this) if ln.startswith("## ")]
    assert len(headings) == 1 and "same CPU budget" in headings[0]

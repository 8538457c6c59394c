"""benchmarks/repro_maskrcnn.py (equal-CPU-budget Mask R-CNN / semi-conv / embeddings benchmark)
and its RESULTS.md section (benchmarks/collect_maskrcnn.py via collect_results.py).

Fast checks only: the configs of the benchmark, the CPU budget stopping a tiny synthetic run,
the memory-saving compaction of detections (same instances as the raw outputs for every
setting of the tuning grid), and the collector on hand-written results.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import collect_maskrcnn as cm  # noqa: E402
import collect_results  # noqa: E402
import repro_maskrcnn as rm  # noqa: E402
from instembed.engine.build import cluster_outputs  # noqa: E402
from instembed.engine.config import ClusterConfig, config_from_dict  # noqa: E402
from instembed.structures import Instances, Outputs  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
SEMICONV_ONLY = {"embedding_dim", "coord_scale", "sigma_init", "embedding_grad_scale"}


# --------------------------------------------------------------------------- configs
@pytest.mark.parametrize("dataset", sorted(rm.DATASETS))
def test_every_method_has_a_budget_bound_config(dataset):
    assert set(rm.DATASETS[dataset]) == set(rm.METHODS)
    for method in rm.METHODS:
        cfg = config_from_dict(rm.method_config(dataset, method))
        assert cfg.run.steps == rm.STEP_LIMIT == 10**6
        assert cfg.run.val_every == 0 and cfg.run.ckpt_every == 0
        assert cfg.optim.schedule == "constant"
        assert Path(cfg.data.path).name == dataset and cfg.data.split is None
    # the configs as written keep their own schedule (only the benchmark overrides it)
    raw = config_from_dict(rm.method_config(dataset, "spatial_embedding", step_limit=None))
    assert raw.optim.schedule == "poly"


@pytest.mark.parametrize("dataset", sorted(rm.DATASETS))
def test_maskrcnn_pair_differs_only_by_the_semiconv_parts(dataset):
    a = rm.method_config(dataset, "maskrcnn")
    b = rm.method_config(dataset, "semiconv_maskrcnn")
    assert a["data"] == b["data"] and a["optim"] == b["optim"] and a["cluster"] == b["cluster"]
    pa, pb = a["model"]["params"], b["model"]["params"]
    assert set(pb) - set(pa) == SEMICONV_ONLY and set(pa) <= set(pb)
    assert all(pa[k] == pb[k] for k in pa)
    assert (a["model"]["name"], b["model"]["name"]) == ("maskrcnn", "semiconv_maskrcnn")
    assert (a["loss"]["name"], b["loss"]["name"]) == ("maskrcnn", "semiconv_maskrcnn")


def test_nuclei_maskrcnn_keeps_enough_detections():
    # BBBC039 images hold up to ~230 nuclei: 100 test proposals / detections would cap recall
    p = rm.method_config("bbbc039", "maskrcnn")["model"]["params"]
    assert p["detections_per_img"] >= 250 and p["rpn_post_nms_top_n"][1] >= p["detections_per_img"]
    assert p["anchor_sizes"][:2] == [16, 32]  # P2 / P3 anchors at nucleus size (~25-35 px)


# --------------------------------------------------------------------------- budget
def _tiny_cfg(step_limit: int):
    import yaml

    d = yaml.safe_load((REPO / "configs" / "touching_cells_maskrcnn.yaml").read_text())
    d["data"].update({"n_train": 4, "n_val": 1, "size": [48, 48], "batch_size": 2})
    return config_from_dict(rm.budget_bound(d, step_limit))


def test_cpu_budget_stops_the_run_not_the_step_limit(tmp_path):
    from instembed.engine.build import load_samples

    cfg = _tiny_cfg(rm.STEP_LIMIT)
    train, _ = load_samples(cfg.data, cfg.run.seed)
    budget = 1.0
    _, info = rm.train_budget(cfg, tmp_path / "budget", list(train), budget)
    assert info["stopped_by"] == "cpu budget"
    assert 1 <= info["steps"] < rm.STEP_LIMIT
    # the check runs after each step: at least the budget, at most a few steps more
    assert budget <= info["train_cpu_s"] < budget + 3.0
    expect = info["steps"] * 2 / info["train_cpu_s"]
    assert info["train_images_per_cpu_s"] == pytest.approx(expect, rel=0.05)


def test_step_limit_is_reported_when_it_stops_the_run(tmp_path):
    from instembed.engine.build import load_samples

    cfg = _tiny_cfg(2)
    train, _ = load_samples(cfg.data, cfg.run.seed)
    _, info = rm.train_budget(cfg, tmp_path / "steps", list(train), 1000.0)
    assert info["steps"] == 2 and info["stopped_by"] == "step limit"


# --------------------------------------------------------------------------- compaction
def test_compacted_detections_cluster_like_the_raw_ones():
    g = torch.Generator().manual_seed(0)
    n, h, w = 12, 24, 24
    soft = torch.rand(n, h, w, generator=g) * 0.4  # below the mask threshold ...
    for k in range(n):  # ... except an overlapping square per detection
        y, x = (k * 5) % 14, (k * 3) % 14
        soft[k, y : y + 10, x : x + 10] = 0.6 + 0.03 * k
    scores = torch.tensor([0.95, 0.9, 0.8, 0.72, 0.7, 0.6, 0.5, 0.45, 0.31, 0.3, 0.29, 0.1])
    raw = Outputs(instances=[Instances(masks=soft, scores=scores)])
    cluster = ClusterConfig("detections", {"mask_thresh": 0.5, "min_size": 5})
    grid = {"score_thresh": [0.3, 0.5, 0.7], "nms_iou": [0.3, 0.5, 0.7]}
    small = rm.compact(raw, cluster, grid)
    kept = small.instances[0]
    assert kept.masks.dtype == torch.bool and len(kept) == 10  # 0.29 and 0.1: no setting keeps them
    for st in grid["score_thresh"]:
        for iou in grid["nms_iou"]:
            cc = ClusterConfig("detections", {**cluster.params, "score_thresh": st, "nms_iou": iou})
            a, b = cluster_outputs(raw, cc), cluster_outputs(small, cc)
            assert torch.equal(a.scores, b.scores)
            assert torch.equal(torch.as_tensor(a.masks), torch.as_tensor(b.masks))
    other = Outputs(embedding=torch.zeros(1, 2, 4, 4))
    assert rm.compact(other, ClusterConfig("meanshift", {}), {}) is other


# --------------------------------------------------------------------------- collector
def _rows(ap50: tuple[float, float], ap75: tuple[float, float]) -> list[dict]:
    """(Mask R-CNN, semi-conv Mask R-CNN) AP50 and AP75."""
    return [
        {"method": "maskrcnn", "AP50": ap50[0], "AP75": ap75[0]},
        {"method": "semiconv_maskrcnn", "AP50": ap50[1], "AP75": ap75[1]},
    ]


def test_reading_finding_reproduces():
    text = cm.reading(_rows((0.40, 0.45), (0.10, 0.25)), "on X")
    assert "beats Mask R-CNN at AP75 (0.250 vs 0.100)" in text
    assert "beats Mask R-CNN at AP50 (0.450 vs 0.400)" in text
    assert "reproduces on X (gain +0.150 at AP75 vs +0.050 at AP50)" in text
    assert "not" not in text and "in part" not in text


def test_reading_helps_at_both_but_most_at_low_iou():
    text = cm.reading(_rows((0.30, 0.50), (0.10, 0.15)), "on X")
    assert "not most at high IoU (gain +0.050 at AP75 vs +0.200 at AP50)" in text
    assert "reproduces only in part on X" in text


def test_reading_helps_at_ap75_only():
    text = cm.reading(_rows((0.40, 0.35), (0.10, 0.20)), "on X")
    assert "trails Mask R-CNN at AP50 (0.350 vs 0.400)" in text
    assert "helps at AP75 only" in text and "in part" in text


def test_reading_does_not_reproduce():
    text = cm.reading(_rows((0.334, 0.158), (0.008, 0.003)), "at 600 steps")
    assert "ties Mask R-CNN at AP75 (0.003 vs 0.008; within 0.01)" in text  # |-0.005| < 0.01
    assert "trails Mask R-CNN at AP50 (0.158 vs 0.334)" in text
    assert "does **not** reproduce at 600 steps" in text
    text = cm.reading(_rows((0.40, 0.30), (0.30, 0.10)), "on X")
    assert "trails Mask R-CNN at AP75 (0.100 vs 0.300)" in text and "does **not**" in text


def test_reading_no_signal_and_rounding():
    text = cm.reading(_rows((0.002, 0.0), (0.0, 0.0)), "at 150 steps")
    assert "cannot test" in text and "reproduces" not in text
    # 0.1004 vs 0.1001 both show as 0.100: a tie, as the table reads
    tie = cm.reading(_rows((0.5, 0.6), (0.1001, 0.1004)), "on X")
    assert "ties Mask R-CNN at AP75 (0.100 vs 0.100)" in tie and "helps at AP50 only" in tie
    # +0.009 at AP75 is under the 0.01 tie rule; +0.010 at AP50 is not
    near = cm.reading(_rows((0.400, 0.410), (0.100, 0.109)), "on X")
    assert "ties Mask R-CNN at AP75 (0.109 vs 0.100; within 0.01)" in near
    assert "beats Mask R-CNN at AP50 (0.410 vs 0.400)" in near and "helps at AP50 only" in near


def _run(dataset: str, mode: str, stopped_by: str = "cpu budget") -> dict:
    def row(method, ap, ap50, ap75, dsb, fp, steps, post, tuned):
        return {
            "method": method, "config": f"configs/{method}.yaml", "postprocess": post,
            "AP": ap, "AP50": ap50, "AP75": ap75, "AP_dsb@0.5": dsb, "FP_per_image@0.5": fp,
            "steps": steps, "stopped_by": stopped_by if method == "maskrcnn" else "cpu budget",
            "train_cpu_s": 901.3, "train_wall_s": 1210.0, "train_images_per_cpu_s": 1.8,
            "load_avg_start": 1.2, "load_avg_end": 2.4, "cluster_tuned": tuned,
            "inference": {"images_per_s": 0.5, "network_images_per_s": 0.8},
        }  # fmt: skip

    det = {"nms_iou": 0.5, "score_thresh": 0.7}
    return {
        "dataset": dataset, "mode": mode, "script": f"benchmarks/repro_maskrcnn.py --datasets {dataset}",
        "budget_cpu_s": 900.0, "step_limit": 10**6, "threads": 1, "seconds": 4500.0,
        "split": {"n_train": 40, "n_val": 10, "n_scored": 10}, "machine": "test machine",
        "load_avg_start": [1.0, 1.0, 1.0], "load_avg_end": [2.0, 2.0, 2.0],
        "rows": [
            row("maskrcnn", 0.12, 0.40, 0.10, 0.38, 2.5, 812, "detections", det),
            row("semiconv_maskrcnn", 0.15, 0.42, 0.18, 0.40, 1.25, 790, "detections", det),
            row("semiconv_embedding", 0.30, 0.62, 0.28, 0.65, 0.4, 2400, "meanshift", {"bandwidth": 0.25}),
            row("spatial_embedding", 0.11, 0.39, 0.04, 0.38, 3.0, 1900, "seeded", {}),
        ],
        "speed_512": {"maskrcnn": {"params": 875339, "train_step_s": 1.1, "infer_images_per_s": 2.2}},
    }  # fmt: skip


def test_collector_renders_the_budget_table(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    (res / "repro_maskrcnn_bbbc010.json").write_text(json.dumps(_run("bbbc010", "full")))
    quick = _run("bbbc010", "quick")
    quick["rows"][0]["AP"] = 0.999  # the full run wins over the quick one
    (res / "repro_maskrcnn_bbbc010_quick.json").write_text(json.dumps(quick))
    out = tmp_path / "RESULTS.md"
    assert collect_results.main(["--results", str(res), "--out", str(out)]) == 0
    full = out.read_text()
    assert full.count("## Proposal-based vs embeddings at an equal CPU budget") == 1
    text = full[full.index("## Proposal-based vs embeddings") :]
    text = text[: text.index("\n## ")]  # this section only
    assert (
        "| Mask R-CNN | 0.120 | 0.400 | 0.100 | 0.380 | 2.5 | 812 | 901 | 1210 | 1.80 | "
        "0.50 (0.80) | detections: nms_iou 0.5, score_thresh 0.7 |" in text
    )
    assert "| semi-conv embeddings + mean-shift | 0.300 |" in text and "0.999" not in text
    assert "| spatial embeddings + seeded (U-Net) |" in text and "seeded: as configured" in text
    assert "| Mask R-CNN | 875,339 | 1.10 | 2.20 |" in text  # the 512x512 speed table
    assert "900 CPU-s of training per method" in text and "quick mode: CI-sized" not in text
    assert "the CPU budget stopped every run" in text
    assert "load average (1 min) 1.0 at the start, 2.0 at the end, 1.2-2.4" in text
    # AP75 0.18 vs 0.10 (+0.08), AP50 0.42 vs 0.40 (+0.02): reproduces
    assert "semi-conv Mask R-CNN beats Mask R-CNN at AP75 (0.180 vs 0.100) and beats " in text
    assert "reproduces on BBBC010 at 900 CPU-s per method (one seed) (gain +0.080" in text
    assert "Highest AP_dsb@0.5: semi-conv embeddings + mean-shift (0.650)" in text
    # the other data set: the command that produces it
    assert "not run: `python benchmarks/repro_maskrcnn.py --datasets bbbc039`" in text


def test_collector_flags_quick_runs_and_runs_the_budget_did_not_stop(tmp_path):
    r = _run("bbbc039", "quick", stopped_by="step limit")
    (tmp_path / "repro_maskrcnn_bbbc039_quick.json").write_text(json.dumps(r))
    text = "\n".join(cm.section(tmp_path))
    assert "quick mode: CI-sized, far from converged, not a result" in text
    assert "**not stopped by the budget: maskrcnn**" in text
    assert "not run: `python benchmarks/repro_maskrcnn.py --datasets bbbc010`" in text
    assert "Earlier fixed-step runs" not in text  # no legacy JSON in this folder


def test_collector_keeps_the_earlier_fixed_step_runs(tmp_path):
    old = {
        "script": "benchmarks/repro_maskrcnn.py --steps 600",
        "rows": [
            {"model": "maskrcnn", "steps": 600, "AP": 0.085, "AP50": 0.334, "AP75": 0.008,
             "AP_dsb@0.5": 0.32, "train_s": 705.3, "n_val_images": 10},
            {"model": "semiconv_maskrcnn", "steps": 600, "AP": 0.027, "AP50": 0.158,
             "AP75": 0.003, "AP_dsb@0.5": 0.171, "train_s": 638.8, "n_val_images": 10},
        ],
        "speed_512": {"unet_spatial": {"params": 1942357, "train_step_s": 5.9,
                                       "infer_images_per_s": 0.58}},
    }  # fmt: skip
    (tmp_path / "repro_maskrcnn_steps600.json").write_text(json.dumps(old))
    text = "\n".join(cm.section(tmp_path))
    assert "| semi-conv Mask R-CNN | 600 | 0.027 | 0.158 | 0.003 | 0.171 | 639 | 10 |" in text
    assert "| spatial embeddings + seeded (U-Net) | 1,942,357 | 5.90 | 0.58 |" in text
    assert "does **not** reproduce at 600 steps" in text

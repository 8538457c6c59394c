"""Proposal-based vs embedding-based instance segmentation at an equal CPU training budget:
Mask R-CNN (He et al. 2017), semi-convolutional Mask R-CNN (Novotny et al. 2018, "Semi-
convolutional Operators for Instance Segmentation", ECCV, §3.5 and its BBBC010 worm experiment),
semi-convolutional embeddings + mean-shift (the same paper, §3) and spatial embeddings + seeded
clustering (Neven et al. 2019), on BBBC010 worms and BBBC039 nuclei; plus train-step time and
inference images/s at 512x512 for the same models.

    python benchmarks/repro_maskrcnn.py --quick                      # 60 CPU-s per method, 6 val images
    python benchmarks/repro_maskrcnn.py                              # 900 CPU-s per method, all val images
    python benchmarks/repro_maskrcnn.py --datasets bbbc010           # one data set per process:
    python benchmarks/repro_maskrcnn.py --datasets bbbc039           #   run the two side by side

Options: ``--budget-cpu S`` (training CPU seconds per method and data set), ``--n-val N`` (score
the first N val images), ``--methods ...`` (a subset), ``--threads`` (torch threads, default 1),
``--skip-speed`` (no 512x512 timing), ``--out`` (results folder), ``--runs`` (run folders).

Protocol, per data set (``--datasets bbbc010 bbbc039``, default both, one after the other):

* data: the recorded train / val split of :mod:`instembed.data.splits` (BBBC010 40 / 10 wells,
  BBBC039 120 / 30 images), decoded once (``train_pretrained.load_split``);
* methods (:data:`DATASETS`; each a config in ``configs/``, used as it is except ``data.path``
  and the run length): ``maskrcnn``, ``semiconv_maskrcnn`` (``configs/worms_*maskrcnn.yaml``,
  ``configs/nuclei_*maskrcnn.yaml``), ``semiconv_embedding`` (``configs/bbbc010_semiconv.yaml``,
  ``configs/bbbc039_semiconv.yaml``: the semiconv+meanshift recipe of the method tables),
  ``spatial_embedding`` (the shipped models' recipes, ``configs/pretrained/bbbc010-worms.yaml``,
  ``configs/pretrained/bbbc039-nuclei.yaml``);
* budget: every method trains with the engine's Trainer from scratch (seed 0) until it has spent
  ``budget_cpu`` **CPU seconds** of this process (``Trainer.fit(time_limit_s=..., cpu_time=True)``;
  with one torch thread and no loader workers that is one core's time, so the budget stays equal
  when other work shares the machine). ``run.steps`` is set to :data:`STEP_LIMIT` so the budget,
  not the step count, stops every run, and the learning rate is constant (``optim.schedule:
  constant``; the step a budget reaches is not known in advance, so no schedule can decay to it);
* thresholds: each method's post-processing thresholds are tuned on the val images it is scored
  on with its family's grid (``instembed.engine.tune.tune_thresholds``, grids
  ``instembed.engine.tune.GRIDS``: detections score_thresh x nms_iou, mean-shift bandwidth,
  seeded fg / seed / prob thresholds, + overlap_thresh on BBBC010's mask stacks), best
  AP_dsb@0.5 (ties: COCO AP). The val numbers are therefore slightly optimistic, equally so for
  every method;
* scores (``instembed.engine.evaluation.Scorer``, whole images; BBBC010 against the overlapping
  per-worm mask stacks, BBBC039 against the label images): COCO AP, AP50, AP75 (pycocotools'
  rules, 100 detections per image), AP_dsb@0.5, false positives per image at IoU 0.5;
* inference: a second pass over the val images with the tuned thresholds (network and
  post-processing timed apart, one thread, 520x696 images): images/s;
* speed at 512x512 (:func:`speed`): median train step (batch 1, forward + loss + backward + Adam)
  and inference images/s of each method's model on a crop of the first val image.

Writes ``benchmarks/results/repro_maskrcnn_<dataset>.json`` (``..._quick.json`` with
``--quick``), rendered into ``benchmarks/RESULTS.md`` by ``benchmarks/collect_results.py``. The
full mode takes 4 x 900 CPU-s of training + roughly 10-25 min of tuning, inference and timing per
data set (the Mask R-CNN tuning dominates: mask NMS on whole-image masks); quick mode about
4 x 60 CPU-s + 5-10 min per data set. Earlier fixed-step runs of the Mask R-CNN pair on BBBC010 are in
``results/repro_maskrcnn.json`` and ``results/repro_maskrcnn_steps600.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from instembed.data.dataset import collate, image_targets, sample_to_item  # noqa: E402
from instembed.engine.build import (  # noqa: E402
    build_loss_from_config,
    build_model_from_config,
    cluster_outputs,
)
from instembed.engine.config import config_from_dict  # noqa: E402
from instembed.engine.evaluation import Scorer  # noqa: E402
from instembed.engine.tune import default_grid, tune_thresholds  # noqa: E402
from train_pretrained import data_root, load_split, machine, train_on_split  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
METHODS = ("maskrcnn", "semiconv_maskrcnn", "semiconv_embedding", "spatial_embedding")
DATASETS = {  # data set -> method -> config (relative to configs/)
    "bbbc010": {
        "maskrcnn": "worms_maskrcnn.yaml",
        "semiconv_maskrcnn": "worms_semiconv_maskrcnn.yaml",
        "semiconv_embedding": "bbbc010_semiconv.yaml",
        "spatial_embedding": "pretrained/bbbc010-worms.yaml",
    },
    "bbbc039": {
        "maskrcnn": "nuclei_maskrcnn.yaml",
        "semiconv_maskrcnn": "nuclei_semiconv_maskrcnn.yaml",
        "semiconv_embedding": "bbbc039_semiconv.yaml",
        "spatial_embedding": "pretrained/bbbc039-nuclei.yaml",
    },
}
MODES = {"quick": {"budget_cpu": 60.0, "n_val": 6}, "full": {"budget_cpu": 900.0, "n_val": None}}
STEP_LIMIT = 10**6  # far beyond what any budget here reaches: the budget stops the runs
METRICS = ("AP", "AP50", "AP75", "AP_dsb@0.5")
log = logging.getLogger("repro_maskrcnn")


def budget_bound(d: dict, step_limit: int = STEP_LIMIT) -> dict:
    """``d`` (a run config as a plain dict, changed in place) made budget-bound: ``run.steps =
    step_limit``, no in-training validation or checkpoints, constant learning rate."""
    d.setdefault("run", {}).update(
        steps=step_limit, val_every=0, ckpt_every=0, progress=False, tensorboard=False
    )
    d.setdefault("optim", {})["schedule"] = "constant"
    return d


def method_config(dataset: str, method: str, step_limit: int | None = STEP_LIMIT) -> dict:
    """The run config (plain dict) of ``method`` on ``dataset``: its YAML with ``data.path`` set
    to the shared copy, the split left to :func:`load_split`, and (``step_limit`` given)
    :func:`budget_bound`."""
    d = yaml.safe_load((CONFIGS / DATASETS[dataset][method]).read_text())
    d["data"]["path"] = str(data_root() / dataset)
    d["data"].pop("split", None)
    return d if step_limit is None else budget_bound(d, step_limit)


def train_budget(cfg, out: Path, train_samples, budget_cpu: float) -> tuple[torch.nn.Module, dict]:
    """Train ``cfg`` on ``train_samples`` until ``budget_cpu`` CPU seconds are spent (or
    ``run.steps``); returns the model and what the run took (steps, CPU and wall seconds, what
    stopped it, training images/s, load average before and after)."""
    load0 = os.getloadavg()[0]
    torch.manual_seed(cfg.run.seed)
    trainer, result, wall = train_on_split(cfg, out, train_samples, [], budget_cpu, cpu_time=True)
    images = result.step * cfg.data.batch_size
    stopped_by = {"stopped": "cpu budget", "done": "step limit"}.get(result.status, result.status)
    info = {
        "steps": result.step,
        "stopped_by": stopped_by,
        "train_cpu_s": round(result.cpu_s, 1),
        "train_wall_s": round(wall, 1),
        "batch_size": cfg.data.batch_size,
        "train_images_per_s": round(images / max(wall, 1e-9), 3),
        "train_images_per_cpu_s": round(images / max(result.cpu_s, 1e-9), 3),
        "load_avg_start": round(load0, 2),
        "load_avg_end": round(os.getloadavg()[0], 2),
    }
    return trainer.model, info


def compact(out, cluster, grid: dict):
    """Outputs of one image as the tuning needs them, in less memory: for the "detections"
    post-processing, the detections no setting of ``grid`` keeps (score below its lowest
    ``score_thresh``) are dropped and the soft masks thresholded at ``mask_thresh`` (what
    :func:`instembed.cluster.detections.filter_detections` does first), so every setting
    clusters to the same instances as from the raw outputs. Other methods: unchanged."""
    if cluster.method != "detections" or out.instances is None or "mask_thresh" in grid:
        return out
    lowest = min(grid.get("score_thresh", [cluster.params.get("score_thresh", 0.5)]))
    inst = out.instances[0].tensors()
    inst = inst[inst.scores >= lowest]
    if inst.masks is not None and inst.masks.dtype != torch.bool:
        inst.masks = inst.masks >= cluster.params.get("mask_thresh", 0.5)
    return dataclasses.replace(out, instances=[inst])


def _image(sample) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(sample.image, np.float32))[None]


@torch.no_grad()
def tune(model, samples, cluster) -> tuple:
    """Network outputs on the whole val images (compacted), thresholds tuned on them: (tuned
    params, their metrics, the grid, seconds the tuning took)."""
    model.eval()
    grid = default_grid(cluster.method, samples)
    outputs = [compact(model(_image(s)).map(lambda t: t.float()), cluster, grid) for s in samples]
    t0 = time.perf_counter()
    res = tune_thresholds(outputs, samples, cluster, grid=grid)
    return res.params, res.metrics, grid, round(time.perf_counter() - t0, 1)


@torch.no_grad()
def infer_and_score(model, samples, cluster) -> tuple[dict, dict]:
    """Whole val images through the network and the (tuned) post-processing, one at a time:
    (scalar metrics, timing). Network and post-processing are timed apart (wall and CPU)."""
    model.eval()
    scorer = Scorer()
    wall = {"network": 0.0, "post": 0.0}
    cpu = {"network": 0.0, "post": 0.0}
    for s in samples:
        t0, c0 = time.perf_counter(), time.process_time()
        out = model(_image(s)).map(lambda t: t.float())
        t1, c1 = time.perf_counter(), time.process_time()
        pred = cluster_outputs(out, cluster)
        t2, c2 = time.perf_counter(), time.process_time()
        scorer.add(s, pred)
        wall["network"] += t1 - t0
        wall["post"] += t2 - t1
        cpu["network"] += c1 - c0
        cpu["post"] += c2 - c1
    n = len(samples)
    timing = {
        "images_per_s": round(n / max(wall["network"] + wall["post"], 1e-9), 3),
        "network_images_per_s": round(n / max(wall["network"], 1e-9), 3),
        "cpu_s_per_image": round((cpu["network"] + cpu["post"]) / n, 3),
        "post_cpu_s_per_image": round(cpu["post"] / n, 3),
        "image_size": list(samples[0].image.shape[-2:]),
    }
    return scorer.summary(), timing


def speed(cfg, sample, size: int = 512, reps: int = 3) -> dict:
    """Median train-step seconds (batch 1, forward + loss + backward + Adam step) and
    inference images/s (eval forward; proposal models include their mask pasting) on a
    ``size`` x ``size`` crop of ``sample``."""
    torch.manual_seed(0)
    model = build_model_from_config(cfg.model)
    loss = build_loss_from_config(cfg.loss)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    item = sample_to_item(sample)
    item = {k: (v[..., :size, :size] if torch.is_tensor(v) and v.ndim >= 2 else v)
            for k, v in item.items()}  # fmt: skip
    batch = collate([item])
    if "instance_masks" in batch:  # recompute boxes of the cropped masks
        from instembed.structures import masks_to_boxes

        batch["instance_masks"] = [m[..., :size, :size] for m in batch["instance_masks"]]
        batch["boxes"] = [masks_to_boxes(m) for m in batch["instance_masks"]]
    times = []
    model.train()
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        out = model(batch["image"], coords_origin=batch.get("coords_origin"),
                    targets=image_targets(batch))  # fmt: skip
        total, _ = loss(out, batch)
        opt.zero_grad()
        total.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    model.eval()
    inf = []
    with torch.no_grad():
        for _ in range(reps + 1):
            t0 = time.perf_counter()
            model(batch["image"])
            inf.append(time.perf_counter() - t0)
    return {
        "train_step_s": round(statistics.median(times[1:]), 3),
        "infer_images_per_s": round(1.0 / statistics.median(inf[1:]), 3),
        "params": sum(p.numel() for p in model.parameters()),
        "size": size,
    }


def run_dataset(dataset: str, args, mode: str, budget: float, n_val: int | None) -> dict:
    """Train, tune, score and time every method on ``dataset``; returns the result dict."""
    t_all = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()]
    methods = args.methods or list(METHODS)
    cfg0 = config_from_dict(method_config(dataset, methods[0]))
    train_samples, val_samples = load_split(cfg0, dataset)
    n_val_split = len(val_samples)
    val_samples = val_samples[:n_val] if n_val else val_samples
    rows = []
    for method in methods:
        cfg = config_from_dict(method_config(dataset, method))
        log.info("%s / %s: training for %.0f CPU-s", dataset, method, budget)
        model, info = train_budget(cfg, Path(args.runs) / dataset / method, train_samples, budget)
        tuned, tuned_metrics, grid, tune_s = tune(model, val_samples, cfg.cluster)
        cfg.cluster.params.update(tuned)
        m, timing = infer_and_score(model, val_samples, cfg.cluster)
        same = all(m.get(k) == tuned_metrics.get(k) for k in METRICS)
        if not same:  # the compacted tuning outputs should cluster exactly as the raw ones
            log.warning("%s: metrics of the tuning %s != end to end %s", method,
                        {k: tuned_metrics.get(k) for k in METRICS}, {k: m.get(k) for k in METRICS})  # fmt: skip
        n = int(m["n_images"])
        row = {
            "method": method,
            "config": f"configs/{DATASETS[dataset][method]}",
            "family": cfg.model.name,
            "loss": cfg.loss.name,
            "postprocess": cfg.cluster.method,
            **info,
            "n_val_images": n,
            **{k: m.get(k) for k in METRICS},
            "FP_per_image@0.5": round(m["FP@0.5"] / n, 3),
            **{k: int(m[k]) for k in ("TP@0.5", "FP@0.5", "FN@0.5", "n_gt", "n_pred")},
            "cluster_tuned": tuned,
            "tuning_grid": grid,
            "tune_s": tune_s,
            "tuned_equals_end_to_end": same,
            "inference": timing,
            "resolved_config": dataclasses.asdict(cfg),
        }
        rows.append(row)
        shown = {k: v for k, v in row.items() if k not in ("resolved_config", "tuning_grid")}
        print(json.dumps(shown), flush=True)
    speeds = {}
    if not args.skip_speed:
        for method in methods:
            speeds[method] = speed(config_from_dict(method_config(dataset, method)), val_samples[0])
            print(dataset, method, "512x512:", speeds[method], flush=True)
    script = f"benchmarks/repro_maskrcnn.py --datasets {dataset}" + (
        " --quick" if args.quick else ""
    )
    script += f" --budget-cpu {args.budget_cpu:g}" if args.budget_cpu else ""
    script += f" --n-val {args.n_val}" if args.n_val else ""
    script += f" --methods {' '.join(args.methods)}" if args.methods else ""
    return {
        "benchmark": "repro_maskrcnn",
        "protocol": "equal CPU budget",
        "dataset": dataset,
        "mode": mode,
        "script": script,
        "budget_cpu_s": budget,
        "budget_clock": "CPU seconds of the training process (time.process_time)",
        "step_limit": STEP_LIMIT,
        "lr_schedule": "constant (optim.schedule overridden for every method)",
        "split": {
            "n_train": len(train_samples),
            "n_val": n_val_split,
            "n_scored": len(val_samples),
        },
        "tuning": "instembed.engine.tune.tune_thresholds, grids of instembed.engine.tune.GRIDS, "
        "best AP_dsb@0.5 (ties: COCO AP), on the scored val images",
        "rows": rows,
        "speed_512": speeds,
        "threads": torch.get_num_threads(),
        "machine": machine(),
        "load_avg_start": load_start,
        "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        "seconds": round(time.perf_counter() - t_all, 1),
    }


def result_path(out: Path, dataset: str, quick: bool) -> Path:
    return Path(out) / f"repro_maskrcnn_{dataset}{'_quick' if quick else ''}.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="60 CPU-s per method, 6 val images")
    ap.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=sorted(DATASETS))
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=None)
    ap.add_argument("--budget-cpu", type=float, default=None, help="training CPU-s per method")
    ap.add_argument("--n-val", type=int, default=None, help="score the first N val images")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--runs", default="/tmp/instembed_repro_maskrcnn")
    ap.add_argument("--skip-speed", action="store_true", help="no 512x512 timing")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    mode = "quick" if args.quick else "full"
    budget = args.budget_cpu or MODES[mode]["budget_cpu"]
    n_val = args.n_val or MODES[mode]["n_val"]
    for dataset in args.datasets:
        result = run_dataset(dataset, args, mode, budget, n_val)
        path = result_path(Path(args.out), dataset, args.quick)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"\n{dataset} ({mode}, {budget:g} CPU-s per method) -> {path}")
        keys = (*METRICS, "FP_per_image@0.5")
        print(f"{'method':20s} " + " ".join(f"{k:>10s}" for k in keys) + f" {'steps':>7s}")
        for r in result["rows"]:
            vals = " ".join(f"{r[k]:10.3f}" if r[k] is not None else f"{'-':>10s}" for k in keys)
            print(f"{r['method']:20s} {vals} {r['steps']:7d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

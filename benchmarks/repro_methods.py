"""Method comparisons on real data under one protocol (same split, backbone, crops, budget).

* ``--task nuclei`` (BBBC039; ``--dataset dsb2018`` for DSB2018): discriminative loss +
  mean-shift, the same model + threshold clustering, semi-convolutional embeddings + mean-shift,
  spatial embeddings + seeded clustering (Neven et al. 2019), center/offset (Panoptic-DeepLab);
  SBD, |DiC|, COCO AP, AP_dsb@0.5, PQ.
* ``--task worms`` (BBBC010, Novotny et al. 2018 Table 1 setting; our 40/10 split of the 50
  shared wells instead of the paper's 50/50 split of all 97): convolutional (discriminative)
  vs semi-convolutional vs spatial embeddings; COCO AP, AP50, AP75, AP_dsb@0.5, evaluated
  against the overlapping mask stacks.

Runs are kept in ``--runs`` and reused when a run of the same method and step count is there
(``train_time.json``), so re-evaluating (e.g. after the shipped thresholds change) is cheap.

Every method starts from the data / optimiser / run sections of
``configs/pretrained/<dataset model>.yaml`` and replaces model heads, loss and clusterer (the
per-method sections, written below, follow the engine's example configs in ``configs/``). The
backbone is the same U-Net for all. All runs use the engine's Trainer on the recorded split of
:mod:`instembed.data.splits` with the same number of steps; the score is on val images only.

    python benchmarks/repro_methods.py --task nuclei [--quick]      # --quick: 120 steps, 6 val images
    python benchmarks/repro_methods.py --task worms  [--quick]

Writes ``benchmarks/results/repro_<task>_<dataset>.json``; prints JSON lines and a table.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from instembed.engine.evaluation import evaluate_outputs  # noqa: E402
from instembed.engine.tune import GRIDS, METRICS, tune_thresholds  # noqa: E402
from train_pretrained import (  # noqa: E402
    data_root,
    load_split,
    network_outputs,
    train_on_split,
)

REPO = Path(__file__).resolve().parents[1]
BASE = {"bbbc039": "bbbc039-nuclei", "dsb2018": "dsb2018-nuclei", "bbbc010": "bbbc010-worms"}

# per-method sections (model heads, loss, clusterer); "eval_only" methods re-cluster another
# method's trained model. A method's ``model.params`` are merged into the base's (the embedding
# family's ``heads`` / ``semiconv`` live there, beside the backbone's depth and width); every
# other key replaces the base's value.
DISC = {
    "model": {"params": {"heads": {"embedding": 8, "semantic": 2}, "semiconv": False}},
    "loss": {
        "name": "discriminative",
        "params": {"delta_v": 0.5, "delta_d": 1.5},
        "extra": [{"name": "semantic_ce", "weight": 1.0, "params": {}}],
    },
    "cluster": {"method": "meanshift", "params": {"bandwidth": 0.5, "foreground_classes": [1]}},
}
METHODS = {
    "discriminative+meanshift": DISC,
    "discriminative+threshold": {
        "eval_only": "discriminative+meanshift",
        "cluster": {
            "method": "threshold",
            "params": {"delta_v": 0.5, "merge_radius": 0.5, "foreground_classes": [1]},
        },
    },
    "semiconv+meanshift": {
        "model": {"params": {"heads": {"embedding": 8, "semantic": 2}, "semiconv": True}},
        "loss": {
            "name": "semiconv",
            "params": {"repulsive_weight": 1.0, "margin": 1.0},
            "extra": [{"name": "semantic_ce", "weight": 1.0, "params": {}}],
        },
        "cluster": {"method": "meanshift", "params": {"bandwidth": 0.5, "foreground_classes": [1]}},
    },
    # the pretrained recipe as it is; clustering thresholds as tuned for the shipped model
    "spatial+seeded": {"shipped_cluster": True},
    "center_offset": {
        "data": {"targets": ["center_offset"]},
        "model": {
            "params": {"heads": {"center": 1, "offset": 2, "semantic": 2}, "semiconv": False}
        },
        "loss": {"name": "center_offset", "params": {"w_center": 200.0, "w_offset": 0.01}},
        "cluster": {
            "method": "center_offset",
            "params": {"thing_classes": [1], "threshold": 0.1, "nms_kernel": 7},
        },
    },
}
TASKS = {
    "nuclei": list(METHODS),
    "worms": [
        "discriminative+meanshift",
        "semiconv+meanshift",
        "spatial+seeded",
    ],
}
MODES = {"quick": {"steps": 120, "n_val": 6}, "full": {"steps": 1200, "n_val": None}}

log = logging.getLogger("repro_methods")


# per data set: semantic cross-entropy class weights (background, foreground) of the methods
# with a semantic head; BBBC010 worms cover ~4 % of the pixels, and an unweighted head learns to
# call every pixel background within a few hundred steps
SEMANTIC_WEIGHTS = {"bbbc010": [1.0, 5.0]}


def method_config(base: dict, method: str, steps: int, dataset: str | None = None) -> dict:
    """The run config (plain dict) of one method: the base config with its sections replaced."""
    cfg = copy.deepcopy(base)
    spec = METHODS[method]
    for section in ("data", "model", "loss", "cluster"):
        for key, value in spec.get(section, {}).items():
            if section == "model" and key == "params":
                params = cfg.setdefault("model", {}).get("params") or {}
                cfg["model"]["params"] = {**params, **copy.deepcopy(value)}
            else:
                cfg.setdefault(section, {})[key] = copy.deepcopy(value)
    if dataset in SEMANTIC_WEIGHTS:
        for extra in cfg["loss"].get("extra", []):
            if extra["name"] == "semantic_ce":
                extra["params"]["class_weights"] = list(SEMANTIC_WEIGHTS[dataset])
    min_size = base["cluster"]["params"].get("min_size", 0)
    cfg["cluster"]["params"].setdefault("min_size", min_size)
    if spec.get("model") and "sigma_init" in cfg["model"].get("params", {}):
        cfg["model"]["params"].pop("sigma_init")  # only meaningful with a sigma head
    cfg["run"].update({"steps": steps, "val_every": 0, "ckpt_every": 0, "progress": False})
    return cfg


def base_config(dataset: str) -> dict:
    """``configs/pretrained/<dataset model>.yaml`` reading the data set from the shared data
    folder, validated on every val image."""
    import yaml

    base = yaml.safe_load((REPO / "configs" / "pretrained" / f"{BASE[dataset]}.yaml").read_text())
    base["data"]["path"] = str(data_root() / dataset)
    base["run"]["max_val_images"] = None
    return base


def run_config(base: dict, method: str, steps: int, dataset: str) -> dict:
    """The config (plain dict) ``main`` runs ``method`` with: the owner's run config
    (:func:`method_config`) with the clusterer of an ``eval_only`` method or, for
    ``shipped_cluster``, the shipped model card's clusterer."""
    spec = METHODS[method]
    cfg = method_config(base, spec.get("eval_only", method), steps, dataset)
    if "eval_only" in spec:
        cfg["cluster"] = copy.deepcopy(spec["cluster"])
        cfg["cluster"]["params"].setdefault(
            "min_size", base["cluster"]["params"].get("min_size", 0)
        )
    card = REPO / "src" / "instembed" / "pretrained" / f"{BASE[dataset]}.json"
    if spec.get("shipped_cluster") and card.is_file():
        cfg["cluster"] = json.loads(card.read_text())["config"]["cluster"]
    return cfg


def main(argv: list[str] | None = None) -> int:
    from instembed.engine.config import config_from_dict

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--task", choices=sorted(TASKS), required=True)
    ap.add_argument("--dataset", choices=sorted(BASE), default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--runs", default="/tmp/instembed_repro_runs")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="override the mode's steps")
    ap.add_argument("--n-val", type=int, default=None, help="override the mode's val images")
    ap.add_argument(
        "--no-tune",
        action="store_true",
        help="cluster with each method's configured thresholds (default: tuned on val, GRIDS)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = args.dataset or ("bbbc010" if args.task == "worms" else "bbbc039")
    mode = "quick" if args.quick else "full"
    steps, n_val = MODES[mode]["steps"], MODES[mode]["n_val"]
    steps = args.steps or steps
    n_val = args.n_val or n_val
    base_path = REPO / "configs" / "pretrained" / f"{BASE[dataset]}.yaml"
    base = base_config(dataset)
    train_samples = val_samples = None
    models: dict[str, tuple] = {}
    rows = []
    t_all = time.perf_counter()
    for method in args.methods or TASKS[args.task]:
        spec = METHODS[method]
        owner = spec.get("eval_only", method)
        cfg = config_from_dict(run_config(base, method, steps, dataset))
        if train_samples is None:
            train_samples, val_samples = load_split(cfg, dataset)
            if n_val is not None:
                val_samples = val_samples[:n_val]
        if owner not in models:
            out = Path(args.runs) / f"{args.task}_{dataset}_{owner.replace('+', '_')}"
            done = out / "train_time.json"
            prev = json.loads(done.read_text()) if done.is_file() else {}
            if prev.get("steps") == steps and (out / "last.pt").is_file():  # reuse the run
                from instembed.engine import checkpoint as ck
                from instembed.engine.build import build_model_from_config

                model = build_model_from_config(cfg.model)
                ck.load_model_state(model, ck.load_checkpoint(out / "last.pt")["model"])
                n_steps, train_s = steps, float(prev["seconds"])
            else:
                trainer, result, train_s = train_on_split(cfg, out, train_samples, [], None)
                model, n_steps = trainer.model, result.step
                done.write_text(json.dumps({"steps": n_steps, "seconds": train_s}))
            outputs = network_outputs(model, val_samples)
            models[owner] = (outputs, n_steps, train_s)
        outputs, n_steps, train_s = models[owner]
        t0 = time.perf_counter()
        if args.no_tune:
            tuned: dict = {}
            m = evaluate_outputs(outputs, val_samples, cfg.cluster)
        else:  # every method gets its clustering thresholds tuned on the val images (GRIDS)
            res = tune_thresholds(outputs, val_samples, cfg.cluster)
            tuned, m = res.params, res.metrics
            cfg.cluster.params.update(tuned)
        row = {
            "task": args.task,
            "dataset": dataset,
            "method": method,
            "steps": n_steps,
            "train_s": round(train_s, 1),
            "n_val_images": len(val_samples),
            **{k: m.get(k) for k in METRICS},
            "cluster_tuned": tuned,
            "cluster_s": round(time.perf_counter() - t0, 2),
            "config": dataclasses.asdict(cfg),
        }
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "config"}))
    result = {
        "benchmark": f"methods_{args.task}",
        "script": f"benchmarks/repro_methods.py --task {args.task} --dataset {dataset}"
        + (" --quick" if args.quick else "")
        + (f" --steps {args.steps}" if args.steps else "")
        + (f" --n-val {args.n_val}" if args.n_val else "")
        + (" --no-tune" if args.no_tune else ""),
        "tuning_grids": {} if args.no_tune else GRIDS,
        "base_config": str(base_path.relative_to(REPO)),
        "mode": mode,
        "rows": rows,
        "seconds": round(time.perf_counter() - t_all, 1),
        "threads": torch.get_num_threads(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"repro_{args.task}_{dataset}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{'method':26s} " + " ".join(f"{k:>10s}" for k in METRICS))
    for r in rows:
        print(
            f"{r['method']:26s} "
            + " ".join(f"{r[k]:10.3f}" if r[k] is not None else f"{'-':>10s}" for k in METRICS)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

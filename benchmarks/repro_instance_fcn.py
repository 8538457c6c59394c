"""Instance-sensitive FCN (Dai et al. 2016) vs spatial-centre ordering vs a semi-convolutional
embedding (Novotny et al. 2018) at equal training budgets on synthetic touching cells and the
coloring-dilemma dot grid, and on BBBC039 nuclei (real images, when the shared data is there);
AP_dsb@0.5 and COCO AP on test images no run trained on.

    OMP_NUM_THREADS=1 python benchmarks/repro_instance_fcn.py --quick   # 300 steps per run
    OMP_NUM_THREADS=1 python benchmarks/repro_instance_fcn.py           # full: CPU-s budgets
    python benchmarks/repro_instance_fcn.py --datasets bbbc039 --data ../shared/data

Modes:

* **quick**: 300 steps per run, 64 synthetic training images, 4 test images (64 x 64; BBBC039:
  128 x 128 windows). CI-sized, far from converged.
* **full** (default): every run trains for the same **CPU-second budget** within a data set
  (``Trainer.fit(time_limit_s=..., cpu_time=True)``, one torch thread): 180 CPU s per run on
  touching_cells and dot_grid, 420 CPU s on bbbc039 (128 x 128 crops cost ~5x a 48 x 48 crop per
  step); ``--budget-cpu S`` gives every run S. Steps are capped at 1500, which is also the length
  of the poly LR schedule, so a run stopped by its budget has not decayed its LR to 0; the
  numbers are **not converged** (steps reached, CPU seconds and stop status are in the JSON).
  256 synthetic training images (free to generate), 8 test images (96 x 96; BBBC039: 192 x 192
  windows). All in, the three data sets x three methods take ~40 CPU-minutes.

Every run goes through the engine's Trainer (the registered families, losses and
post-processings, as ``instembed train`` runs them): the same U-Net backbone (depth 2, width
16), the same data (64 x 64 synthetic images, 48 x 48 crops, batch 4), the same optimiser and
training budget; the scores are on test images of another seed through
``instembed.engine.evaluation.score``.

* ``isfcn``: configs/touching_cells_isfcn.yaml's model (3 x 3 score maps, windows 15 / 21),
  "detections" post-processing;
* ``ordering``: configs/dot_grid_ordering.yaml's model (30 slots), "slots" post-processing
  (``mode=largest``: one instance per slot); ``ordering/components`` re-scores the same model
  with ``mode=components`` (every connected component of every slot an instance: identity
  from connectivity instead of the slot -- a diagnostic, not the method);
BBBC039 (``bbbc039``): the recorded train split of ``<data>/bbbc039`` (percentile-normalised,
128 x 128 crops, batch 4); the test images are the first ``n_test`` images of the recorded
validation split, each cut to its central ``test_size`` window (so the 30 ordered slots are not
overrun by the ~150 nuclei of a whole image -- a limit of the ordering method the synthetic
scenes already show). Nuclei are ~25 px across, so the instance-sensitive windows are 31 / 45
pixels and the semi-convolutional coordinate scale 1/32 there.

* ``semiconv``: configs/dot_grid_semiconv.yaml's semi-convolutional embedding (2-D, coord
  scale 1/14, discriminative loss) on the same backbone, plus a 2-class semantic head for the
  foreground; k-means with the true number of objects (the coloring-dilemma protocol: an
  oracle count).

Writes ``benchmarks/results/repro_instance_fcn.json`` (quick; full:
``repro_instance_fcn_full.json``) and the figure
``benchmarks/results/instance_fcn/ordering_dot_grid.png`` (full: ``ordering_dot_grid_full.png``;
ordered-slot predictions on a dot grid: where ordering fails).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]

MODES = {
    "quick": {"steps": 300, "budget_cpu": None, "n_train": 64, "n_test": 4, "test_size": (64, 64)},
    "full": {
        "steps": 1500,  # cap and LR-schedule length
        # CPU seconds of training per run, the same for the three methods of a data set
        "budget_cpu": {"touching_cells": 180.0, "dot_grid": 180.0, "bbbc039": 420.0},
        "n_train": 256,  # synthetic training images
        "n_test": 8,
        "test_size": (96, 96),
    },
}
DATASETS = {
    "touching_cells": {"synth": "touching_cells", "synth_params": {}},
    "dot_grid": {"synth": "dot_grid", "synth_params": {"radius": 4, "spacing": 14}},
    "bbbc039": {
        "path": "bbbc039",
        "split": "bbbc039",
        "reader_params": {"normalize": "percentile"},
    },
}
# per-data-set changes to the methods and the data stage (objects of another size)
DATASET_OVERRIDES = {
    "bbbc039": {
        "isfcn": {"model": {"window_sizes": [31, 45]}},
        "semiconv": {"model": {"coord_scale": 1 / 32}},
        "data": {"size": None, "crop": [128, 128], "n_train": None, "n_val": None},
        "test_size": {"quick": (128, 128), "full": (192, 192)},
    }
}
BACKBONE = {"backbone": "unet", "depth": 2, "width": 16}
METHODS = {
    "isfcn": {
        "model": {"name": "isfcn", "params": {"k": 3, "window_sizes": [15, 21], "stride": 2}},
        "loss": {"name": "isfcn", "params": {}},
        "cluster": {"method": "detections", "params": {"score_thresh": 0.5, "nms_iou": 0.3}},
    },
    "ordering": {
        "model": {"name": "ordering", "params": {"num_slots": 30}},
        "loss": {"name": "ordering", "params": {"background_weight": 0.1}},
        "cluster": {"method": "slots", "params": {"min_size": 5}},
    },
    "semiconv": {
        "model": {
            "name": "embedding",
            "params": {
                "heads": {"embedding": 2, "semantic": 2},
                "semiconv": True,
                "coord_scale": 1 / 14,
            },
        },
        "loss": {
            "name": "discriminative",
            "params": {"delta_v": 0.1, "delta_d": 0.35},
            "extra": [{"name": "semantic_ce", "weight": 1.0, "params": {}}],
        },
        "cluster": {"method": "kmeans", "params": {"foreground_classes": [1]}},
    },
}
# re-scored with another post-processing, no training
RESCORE = {
    "ordering/components": (
        "ordering",
        {"method": "slots", "params": {"min_size": 5, "mode": "components"}},
    )
}
KEYS = ("AP_dsb@0.5", "AP", "AP50", "AP75", "SBD")


def config(
    method: str,
    dataset: str,
    steps: int,
    seed: int,
    data_root: Path | None = None,
    n_train: int = 64,
) -> dict:
    m = copy.deepcopy(METHODS[method])
    backbone = dict(BACKBONE)
    m["model"]["backbone"] = backbone.pop("backbone")
    m["model"]["params"].update(backbone)
    over = DATASET_OVERRIDES.get(dataset, {})
    m["model"]["params"].update(over.get(method, {}).get("model", {}))
    data = {
        **copy.deepcopy(DATASETS[dataset]),
        "n_train": n_train,
        "n_val": 2,
        "size": [64, 64],
        "crop": [48, 48],
        "batch_size": 4,
    }
    for key, value in over.get("data", {}).items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    if "path" in data:
        data["path"] = str(Path(data_root or "../shared/data") / data["path"])
    return {
        "data": data,
        **m,
        "optim": {"lr": 0.003, "warmup_steps": 20, "grad_clip": 5.0},
        "run": {
            "steps": steps,
            "val_every": 0,
            "ckpt_every": 0,
            "progress": False,
            "tensorboard": False,
            "seed": seed,
            "best_metric": "AP",
        },
    }


def evaluate(model, samples, cluster) -> tuple[dict, list]:
    from instembed.engine.build import cluster_outputs
    from instembed.engine.evaluation import cluster_config_for, score

    model.eval()
    preds, outs = [], []
    with torch.no_grad():
        for s in samples:
            out = model(torch.from_numpy(np.ascontiguousarray(s.image))[None])
            out = out.map(lambda t: t.detach().float().cpu())
            outs.append(out)
            preds.append(cluster_outputs(out, cluster_config_for(s, cluster)))
    m = score(samples, preds)
    return {k: round(float(m[k]), 4) for k in KEYS if k in m}, outs


def centre_crop(sample, size: tuple[int, int]):
    """The central ``size`` window of a Sample, instance ids relabelled 1..N (cut objects kept)."""
    from instembed.data.sample import Sample

    h, w = sample.shape
    th, tw = min(size[0], h), min(size[1], w)
    y0, x0 = (h - th) // 2, (w - tw) // 2
    lab = np.asarray(sample.label_image())[y0 : y0 + th, x0 : x0 + tw]
    ids, inv = np.unique(lab, return_inverse=True)
    lab = inv.reshape(lab.shape).astype(np.int32) if ids[0] == 0 else (inv + 1).reshape(lab.shape)
    image = np.ascontiguousarray(sample.image[:, y0 : y0 + th, x0 : x0 + tw])
    return Sample(image=image, instances=lab.astype(np.int32), path=sample.path)


def test_samples(dataset: str, p: dict, seed: int, data_root: Path, mode: str) -> list:
    """The fixed test images of one data set (synthetic: another seed; real: the val split)."""
    spec = DATASETS[dataset]
    if "synth" in spec:
        from instembed.data.synth import make_samples

        return make_samples(spec["synth"], p["n_test"], size=p["test_size"], seed=1000 + seed,
                            **spec["synth_params"])  # fmt: skip
    from instembed.data.readers import open_dataset
    from instembed.data.splits import split_dataset

    reader = open_dataset(data_root / spec["path"], **spec["reader_params"])
    _, val = split_dataset(reader, spec["split"])
    size = DATASET_OVERRIDES[dataset]["test_size"][mode]
    return [centre_crop(val[i], size) for i in range(min(p["n_test"], len(val)))]


def figure(sample, out, path: Path) -> None:
    """Ordered-slot predictions on a dot grid: image, true slots, predicted slots, instances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from instembed.cluster import cluster_embeddings
    from instembed.losses.ordering import slot_targets

    labels = torch.from_numpy(np.asarray(sample.instances).astype(np.int64))
    true = slot_targets(labels, out.semantic.shape[1] - 1).numpy()
    logits = out.semantic[0]
    pred = logits.argmax(0).numpy()
    inst = cluster_embeddings(out, "slots", min_size=5).numpy()
    k = out.semantic.shape[1] - 1
    cmap = plt.get_cmap("nipy_spectral", k + 1)
    fig, ax = plt.subplots(1, 4, figsize=(16, 4.4))
    ax[0].imshow(sample.image[0], cmap="gray")
    ax[0].set_title("image")
    for a, slots, title in (
        (ax[1], true, "true slots (x, then y)"),
        (ax[2], pred, "predicted slots (argmax)"),
    ):
        shown = np.ma.masked_where((slots == 0) | (slots > k), slots)
        a.imshow(np.zeros_like(slots), cmap="gray", vmin=0, vmax=1)
        a.imshow(shown, cmap=cmap, vmin=0, vmax=k, interpolation="nearest")
        a.set_title(title)
    for lab in np.unique(true[(true > 0) & (true <= k)]):
        ys, xs = np.nonzero(true == lab)
        ax[1].text(xs.mean(), ys.mean(), str(lab), color="w", ha="center", va="center", fontsize=7)
    for lab in np.unique(pred[pred > 0]):
        ys, xs = np.nonzero(pred == lab)
        if len(ys) >= 5:
            ax[2].text(
                xs.mean(), ys.mean(), str(lab), color="w", ha="center", va="center", fontsize=7
            )
    shown = np.ma.masked_where(inst.labels == 0, inst.labels)
    ax[3].imshow(np.zeros_like(inst.labels), cmap="gray", vmin=0, vmax=1)
    ax[3].imshow(shown, cmap="tab20", interpolation="nearest")
    n_true = int(len(np.unique(labels[labels > 0])))
    ax[3].set_title(f"'slots' instances: {len(inst)} of {n_true} dots")
    for a in ax:
        a.set_xticks([])
        a.set_yticks([])
    fig.suptitle("Spatial-centre ordering on identical dots: slots of copies are confused")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def budget_of(p: dict, dataset: str) -> float | None:
    """CPU seconds of training per run on ``dataset`` (None: by steps)."""
    b = p["budget_cpu"]
    return b.get(dataset) if isinstance(b, dict) else b


def train_one(cfg, budget: float | None):
    """Train one run in a temporary folder; (model, record: steps, status ("stopped": by the
    budget), train_s (wall) and cpu_s of ``fit`` -- what the budget counts --, setup_cpu_s of
    building data set and model, lr_end)."""
    from instembed.engine.trainer import Trainer

    c_setup = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run")
        t0, c0 = time.perf_counter(), time.process_time()
        result = trainer.fit(time_limit_s=budget, cpu_time=budget is not None)
        train_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        lr_end = float(trainer.scheduler.get_last_lr()[0])
        trainer.close()
    rec = {
        "steps": result.step,
        "status": result.status,
        "train_s": round(train_s, 1),
        "cpu_s": round(cpu_s, 1),
        "setup_cpu_s": round(c0 - c_setup, 1),
        "lr_end": lr_end,
    }
    return trainer.model, rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI-sized run")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest when busy)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="override the mode's step cap")
    ap.add_argument(
        "--budget-cpu", type=float, default=None, metavar="S",
        help="train every run for S CPU seconds (full default: 180 synthetic, 420 bbbc039; "
        "quick: by steps unless given)",
    )  # fmt: skip
    ap.add_argument(
        "--methods", nargs="*", default=None, choices=sorted(METHODS),
        help="methods to run (default: all)",
    )  # fmt: skip
    ap.add_argument(
        "--datasets", nargs="*", default=None, choices=sorted(DATASETS),
        help="data sets to run (default: all; bbbc039 only when DATA/bbbc039 exists)",
    )  # fmt: skip
    ap.add_argument(
        "--data",
        default=None,
        help="folder holding bbbc039/ (default: $INSTEMBED_DATA or ../shared/data)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    from instembed.engine.config import ClusterConfig, config_from_dict

    mode = "quick" if args.quick else "full"
    p = dict(MODES[mode])
    if args.steps is not None:
        p["steps"] = int(args.steps)
    if args.budget_cpu is not None:
        if args.budget_cpu <= 0:
            ap.error(f"--budget-cpu must be > 0, got {args.budget_cpu}")
        p["budget_cpu"] = float(args.budget_cpu)
    methods = list(METHODS) if args.methods is None else [m for m in METHODS if m in args.methods]
    out = Path(args.out)
    suffix = "_full" if mode == "full" else ""
    results: dict = {}
    seconds: dict = {}
    runs: dict = {}
    configs: dict = {}
    figures: list = []
    data_root = Path(
        args.data or os.environ.get("INSTEMBED_DATA") or REPO.parent / "shared" / "data"
    )
    datasets = args.datasets
    if datasets is None:
        datasets = [d for d in DATASETS if "synth" in DATASETS[d] or (data_root / d).is_dir()]
    for d in datasets:
        if "path" in DATASETS[d] and not (data_root / DATASETS[d]["path"]).is_dir():
            ap.error(f"--datasets {d}: {data_root / DATASETS[d]['path']} not found (see --data)")
    t_all, c_all, load_start = time.perf_counter(), cpu_seconds(), os.getloadavg()
    for dataset in datasets:
        test = test_samples(dataset, p, args.seed, data_root, mode)
        results[dataset], seconds[dataset], runs[dataset] = {}, {}, {}
        budget = budget_of(p, dataset)
        for method in methods:
            d = config(method, dataset, p["steps"], args.seed, data_root, p["n_train"])
            configs[f"{dataset}/{method}"] = d
            cfg = config_from_dict(d)
            model, rec = train_one(cfg, budget)
            metrics, outs = evaluate(model, test, cfg.cluster)
            results[dataset][method] = metrics
            seconds[dataset][method] = rec["train_s"]
            runs[dataset][method] = {**rec, "budget_cpu": budget}
            print(json.dumps({"dataset": dataset, "method": method, **metrics, **rec}), flush=True)
            for name, (base, cc) in RESCORE.items():
                if base == method:
                    cluster = ClusterConfig(**cc)
                    results[dataset][name], _ = evaluate(model, test, cluster)
                    print(
                        json.dumps({"dataset": dataset, "method": name, **results[dataset][name]}),
                        flush=True,
                    )
            if method == "ordering" and dataset == "dot_grid":
                fig = f"instance_fcn/ordering_dot_grid{suffix}.png"
                figure(test[0], outs[0], out / fig)
                figures.append(fig)
    script = "benchmarks/repro_instance_fcn.py" + (" --quick" if args.quick else "")
    for flag, value in (
        ("--steps", args.steps),
        ("--budget-cpu", args.budget_cpu),
        ("--seed", args.seed or None),
    ):
        if value is not None:
            script += f" {flag} {value:g}" if isinstance(value, float) else f" {flag} {value}"
    if args.methods is not None:
        script += " --methods " + " ".join(methods)
    if args.datasets is not None:
        script += " --datasets " + " ".join(datasets)
    result = {
        "benchmark": "instance_fcn",
        "script": script,
        "mode": mode,
        "protocol": {
            "steps": p["steps"],
            "budget_cpu": p["budget_cpu"],
            "budget_clock": "CPU seconds of the training process (time.process_time), checked "
            "after every step; steps capped at 'steps', the LR schedule's length"
            if p["budget_cpu"]
            else None,
            "n_test": p["n_test"],
            "test_size": list(p["test_size"]),
            "test_seed": 1000 + args.seed,
            "train": f"{p['n_train']} synthetic 64x64 images, 48x48 crops, batch 4, flips/rot90 "
            "(engine defaults)",
            "train_bbbc039": "recorded bbbc039 train split, 128x128 crops, batch 4",
            "test_bbbc039": "first n_test images of the recorded val split, central window "
            + "x".join(map(str, DATASET_OVERRIDES["bbbc039"]["test_size"][mode])),
            "backbone": BACKBONE,
            "semiconv_clustering": "k-means with the true number of objects, semantic-head foreground",
            "configs": configs,
        },
        "metrics": results,
        "train_seconds": seconds,
        "runs": runs,
        "figures": figures,
        "seconds": round(time.perf_counter() - t_all, 1),
        "cpu_s_total": round(cpu_seconds() - c_all, 1),
        "loadavg_start": [round(v, 2) for v in load_start],
        "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        "threads": torch.get_num_threads(),
    }
    out.mkdir(parents=True, exist_ok=True)
    out_file = out / f"repro_instance_fcn{suffix}.json"
    out_file.write_text(json.dumps(result, indent=1) + "\n")
    names = [n for n in [*METHODS, *RESCORE] if n in methods or RESCORE.get(n, ("",))[0] in methods]
    print(f"\n{'dataset':16s} {'method':22s} {'AP_dsb@0.5':>10s} {'AP':>7s} {'AP50':>7s} steps")
    for dataset, per in results.items():
        for name in names:
            m = per[name]
            steps = runs[dataset].get(name, {}).get("steps", "")
            print(
                f"{dataset:16s} {name:22s} {m['AP_dsb@0.5']:10.3f} {m['AP']:7.3f} {m['AP50']:7.3f}"
                f" {steps}"
            )
    print(f"wrote {out_file} ({mode} mode; {result['cpu_s_total']:.0f} CPU s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Backbones on the synthetic street scenes: the lecture's semantic-segmentation table and
Panoptic-DeepLab PQ on three of them.

1. **Semantic table.** For every backbone of :data:`instembed.models.BACKBONES` (default
   parameters, from scratch): the embedding family with one head ``{semantic: 7}`` trained with
   ``semantic_ce`` by the engine's Trainer, all with the same data, seed, crops, optimiser and
   number of steps; val mIoU (7 classes, whole val images, :class:`instembed.engine.evaluation.
   Scorer` with the ``miou`` group), parameters, inference images/s on CPU (batch 1, fixed input,
   network + semantic argmax, median of the repeats) and the peak memory of inference (peak
   resident set during the runs minus the resident set once model and input are built; the
   peak is reset through ``/proc/self/clear_refs`` so import-time peaks do not hide it), each
   speed measurement in a fresh process as in ``benchmarks/repro_speed.py``.
2. **Panoptic table.** ``configs/street_center_offset.yaml`` (semantic + center + offset heads,
   ``center_offset`` loss and targets, Panoptic-DeepLab grouping) with its backbone replaced
   (default: erfnet, the config's own, beside deeplabv3plus and hrnet) and the data / run
   sections of this script; PQ, PQ_th, PQ_st, SQ, RQ and mIoU on the val images, stuff classes
   :data:`~instembed.data.synth.STREET_STUFF`, things :data:`~instembed.data.synth.STREET_THINGS`
   scored class-aware (the clusterer's classes from the semantic head).

Data: ``make_samples("street", ...)`` through the engine's synthetic data section (train seed =
run seed, val seed = run seed + 1_000_003), horizontal flips only (street scenes have an up).

    python benchmarks/repro_backbones.py --quick --threads 1     # ~15 min on one CPU thread
    python benchmarks/repro_backbones.py --threads 1             # full mode

Quick-mode numbers are CI-sized and far from converged: they rank nothing beyond "it trains".
Trained runs are kept in ``--runs`` and reused when the resolved config is the same
(``train_time.json``). Writes ``benchmarks/results/repro_backbones.json`` (rewritten after every
row, ``"complete": false`` until the end); prints JSON lines and the two tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = "benchmarks/repro_backbones.py"
PANOPTIC_CONFIG = REPO / "configs" / "street_center_offset.yaml"
NUM_CLASSES = 7  # STREET_CLASSES

MODES = {
    "quick": {
        "steps": 100,
        "panoptic_steps": 100,
        "n_train": 64,
        "n_val": 8,
        "size": [128, 256],
        "crop": [96, 128],
        "batch_size": 4,
        "speed_size": [256, 512],
        "speed_repeat": 3,
    },
    "full": {
        "steps": 1500,
        "panoptic_steps": 1500,
        "n_train": 256,
        "n_val": 32,
        "size": [128, 256],
        "crop": [128, 256],
        "batch_size": 4,
        "speed_size": [256, 512],
        "speed_repeat": 10,
    },
}
PANOPTIC_BACKBONES = ["erfnet", "deeplabv3plus", "hrnet"]

log = logging.getLogger("repro_backbones")


# --------------------------------------------------------------------------- configs
def data_section(mode: dict, targets: list[str]) -> dict:
    return {
        "synth": "street",
        "n_train": mode["n_train"],
        "n_val": mode["n_val"],
        "size": list(mode["size"]),
        "crop": list(mode["crop"]),
        "batch_size": mode["batch_size"],
        "flip": False,
        "rot90": False,
        "augment": [{"name": "flip", "p_horizontal": 0.5, "p_vertical": 0.0}],
        "targets": targets,
    }


def run_section(steps: int, seed: int) -> dict:
    return {
        "steps": steps,
        "seed": seed,
        "device": "cpu",
        "val_every": 0,
        "ckpt_every": 0,
        "log_every": max(1, steps // 10),
        "tensorboard": False,
        "progress": False,
    }


def semantic_config(backbone: str, mode: dict, steps: int, seed: int) -> dict:
    """Semantic segmentation only: one ``semantic`` head, ``semantic_ce``."""
    return {
        "data": data_section(mode, []),
        "model": {
            "name": "embedding",
            "backbone": backbone,
            "in_channels": 3,
            "params": {"heads": {"semantic": NUM_CLASSES}},
        },
        "loss": {"name": "semantic_ce", "params": {}},
        # not used by this script (it scores the semantic argmax itself); a valid section
        "cluster": {"method": "meanshift", "params": {"bandwidth": 0.5}},
        "optim": {"lr": 1e-3},
        "run": run_section(steps, seed),
    }


def panoptic_config(backbone: str, mode: dict, steps: int, seed: int) -> dict:
    """``configs/street_center_offset.yaml`` with its backbone, data and run sections replaced."""
    import yaml

    cfg = yaml.safe_load(PANOPTIC_CONFIG.read_text())
    cfg["data"] = data_section(mode, list(cfg["data"].get("targets", ["center_offset"])))
    cfg["model"]["backbone"] = backbone
    cfg["run"] = run_section(steps, seed)
    return cfg


# --------------------------------------------------------------------------- training
def train(cfg_dict: dict, out: Path):
    """(model in eval mode, steps done, training seconds, val samples); reuses ``out`` when it
    holds a finished run of the same resolved config."""
    from instembed.engine import checkpoint as ck
    from instembed.engine.build import build_model_from_config, load_samples
    from instembed.engine.config import config_from_dict, config_to_dict
    from instembed.engine.trainer import Trainer

    cfg = config_from_dict(cfg_dict)
    resolved = config_to_dict(cfg)
    done = out / "train_time.json"
    prev = json.loads(done.read_text()) if done.is_file() else {}
    if prev.get("config") == resolved and (out / "last.pt").is_file():
        model = build_model_from_config(cfg.model)
        ck.load_model_state(model, ck.load_checkpoint(out / "last.pt")["model"])
        _, val = load_samples(cfg.data, cfg.run.seed)
        log.info("reusing %s (%d steps)", out, prev["steps"])
        return model.eval(), int(prev["steps"]), float(prev["seconds"]), val, cfg
    trainer = Trainer(cfg, out, val_samples=[])  # scored below, on whole val images
    _, val = load_samples(cfg.data, cfg.run.seed)
    t0 = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - t0
    trainer.close()
    done.write_text(json.dumps({"steps": result.step, "seconds": seconds, "config": resolved}))
    log.info("%s: %d steps in %.0f s", out.name, result.step, seconds)
    return trainer.model.eval(), result.step, seconds, val, cfg


@torch.no_grad()
def outputs_of(model, samples) -> list:
    outs = []
    for s in samples:
        x = torch.from_numpy(np.ascontiguousarray(s.image, np.float32))[None]
        outs.append(model(x).map(lambda t: t.detach().float().cpu()))
    return outs


def semantic_argmax(out) -> np.ndarray:
    return out.semantic[0].argmax(0).numpy().astype(np.int64)


def score_semantic(model, samples) -> dict:
    """mIoU (and per-class IoU) of the semantic argmax on whole val images."""
    from instembed.engine.evaluation import Scorer

    scorer = Scorer(metrics=("miou",), num_classes=NUM_CLASSES)
    for s, out in zip(samples, outputs_of(model, samples)):
        empty = np.zeros(s.shape, np.int32)  # no instances: only the semantic maps are scored
        scorer.add(s, empty, gt_semantic=s.semantic, pred_semantic=semantic_argmax(out))
    full = scorer.evaluator.summary(per_image=False)
    return {"mIoU": full["mIoU"], "IoU_per_class": full["per_class"]["IoU"]}


PANOPTIC_KEYS = ["PQ", "PQ_th", "PQ_st", "SQ", "RQ", "mIoU"]


def score_panoptic(model, samples, cluster) -> dict:
    """PQ (things from the clusterer, stuff from the semantic argmax) and mIoU."""
    from instembed.data.synth import STREET_STUFF
    from instembed.engine.build import cluster_outputs
    from instembed.engine.evaluation import Scorer

    scorer = Scorer(metrics=("pq", "miou"), stuff_classes=STREET_STUFF, num_classes=NUM_CLASSES)
    n_pred = 0
    for s, out in zip(samples, outputs_of(model, samples)):
        pred = cluster_outputs(out, cluster)
        n_pred += len(pred.scores)
        scorer.add(s, pred, gt_semantic=s.semantic, pred_semantic=semantic_argmax(out))
    m = scorer.summary()
    return {**{k: m.get(k) for k in PANOPTIC_KEYS}, "n_pred_things": n_pred}


# --------------------------------------------------------------------------- speed (fresh process)
def _status_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def reset_peak_rss() -> float:
    """Reset the process's peak resident set to its current size where Linux allows it
    (``/proc/self/clear_refs``), so earlier peaks (imports, model construction) do not hide the
    peak of what follows; returns the current resident MB (the baseline)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    rss = _status_mb("VmRSS")
    return rss if rss is not None else peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident MB: ``VmHWM`` (resettable) where there is one, else ``ru_maxrss``."""
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@torch.no_grad()
def measure_speed(backbone: str, h: int, w: int, repeat: int) -> dict:
    """One inference measurement in this (fresh) process: batch 1, (3, h, w) input, network +
    semantic argmax; images/s = median of ``repeat`` timed runs after one warm-up."""
    from instembed.models import build_model

    model = build_model(
        "embedding", backbone=backbone, in_channels=3, heads={"semantic": NUM_CLASSES}
    ).eval()
    n_params = sum(p.numel() for p in model.parameters())
    x = torch.rand(1, 3, h, w)
    before = reset_peak_rss()
    model(x).semantic.argmax(1)  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        model(x).semantic.argmax(1)
        times.append(time.perf_counter() - t0)
    t = sorted(times)[len(times) // 2]
    return {
        "backbone": backbone,
        "params": n_params,
        "images_per_s": round(1.0 / t, 3),
        "peak_mb": round(peak_rss_mb() - before, 1),
    }


def speed_in_fresh_process(backbone: str, size, repeat: int, threads: int | None) -> dict:
    cmd = [sys.executable, __file__, "--one", backbone, str(size[0]), str(size[1]), str(repeat)]
    if threads:
        cmd += ["--threads", str(threads)]
    line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(line.strip().splitlines()[-1])


# --------------------------------------------------------------------------- main
def fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> int:
    from instembed.models import BACKBONES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--one", nargs=4, metavar=("BACKBONE", "H", "W", "REPEAT"), help=argparse.SUPPRESS
    )
    ap.add_argument("--quick", action="store_true", help="CI-sized run (far from converged)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument(
        "--backbones", nargs="*", default=None, help="semantic table backbones (default: all)"
    )
    ap.add_argument(
        "--panoptic-backbones",
        nargs="*",
        default=None,
        help=f"panoptic table backbones (default: {' '.join(PANOPTIC_BACKBONES)}; none: skip)",
    )
    ap.add_argument("--steps", type=int, default=None, help="override the mode's semantic steps")
    ap.add_argument(
        "--panoptic-steps", type=int, default=None, help="override the mode's panoptic steps"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--runs", default="/tmp/instembed_repro_backbones")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        b, h, w, r = args.one
        print(json.dumps(measure_speed(b, int(h), int(w), int(r))))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("instembed").setLevel(logging.WARNING)

    mode_name = "quick" if args.quick else "full"
    mode = dict(MODES[mode_name])
    if args.steps:
        mode["steps"] = args.steps
    if args.panoptic_steps:
        mode["panoptic_steps"] = args.panoptic_steps
    backbones = args.backbones if args.backbones is not None else list(BACKBONES)
    pan_backbones = (
        args.panoptic_backbones if args.panoptic_backbones is not None else PANOPTIC_BACKBONES
    )
    unknown = [b for b in backbones + pan_backbones if b not in BACKBONES]
    if unknown:
        ap.error(f"unknown backbone(s) {unknown}; choose from {list(BACKBONES)}")
    script = (
        SCRIPT
        + (" --quick" if args.quick else "")
        + (f" --threads {args.threads}" if args.threads else "")
        + (f" --steps {args.steps}" if args.steps else "")
        + (f" --panoptic-steps {args.panoptic_steps}" if args.panoptic_steps else "")
        + (f" --backbones {' '.join(backbones)}" if args.backbones is not None else "")
        + (
            f" --panoptic-backbones {' '.join(pan_backbones)}"
            if args.panoptic_backbones is not None
            else ""
        )
        + (f" --seed {args.seed}" if args.seed else "")
    )
    settings = {**mode, "seed": args.seed, "threads": args.threads or torch.get_num_threads()}
    result: dict = {
        "benchmark": "backbones_street",
        "script": script,
        "mode": mode_name,
        "settings": settings,
        "semantic_rows": [],
        "panoptic_rows": [],
        "complete": False,
        "note": "Synthetic street scenes (instembed.data.synth, kind 'street', 7 classes: stuff "
        "road, sidewalk, building, sky; things car, person, sign). Every backbone with its "
        "default parameters, from scratch, the same data, seed, crops, optimiser and steps. "
        "mIoU / PQ on whole val images. images/s and peak MB: batch-1 inference (network + "
        "semantic argmax) at speed_size in a fresh process each, one CPU thread when threads "
        "is 1, on a CPU shared with other jobs; peak MB = the process's peak resident memory "
        "during the warm-up and timed runs minus its resident memory after the model and "
        "input are built (peak reset through /proc/self/clear_refs).",
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_file = out_dir / "repro_backbones.json"

    def write() -> None:
        out_file.write_text(json.dumps(result, indent=1) + "\n")

    runs = Path(args.runs)
    t_all = time.perf_counter()
    common = {"script": script, "mode": mode_name}
    for b in backbones:
        cfg_dict = semantic_config(b, mode, mode["steps"], args.seed)
        model, steps, train_s, val, cfg = train(cfg_dict, runs / f"{mode_name}_semantic_{b}")
        m = score_semantic(model, val)
        speed = speed_in_fresh_process(b, mode["speed_size"], mode["speed_repeat"], args.threads)
        row = {
            **common,
            "table": "semantic",
            "backbone": b,
            "params": speed["params"],
            "mIoU": m["mIoU"],
            "images_per_s": speed["images_per_s"],
            "peak_mb": speed["peak_mb"],
            "speed_input": list(mode["speed_size"]),
            "steps": steps,
            "train_s": round(train_s, 1),
            "n_val_images": len(val),
            "IoU_per_class": m["IoU_per_class"],
            "config": dataclasses.asdict(cfg),
        }
        result["semantic_rows"].append(row)
        write()
        print(json.dumps({k: v for k, v in row.items() if k != "config"}), flush=True)
    for b in pan_backbones:
        cfg_dict = panoptic_config(b, mode, mode["panoptic_steps"], args.seed)
        model, steps, train_s, val, cfg = train(cfg_dict, runs / f"{mode_name}_panoptic_{b}")
        m = score_panoptic(model, val, cfg.cluster)
        row = {
            **common,
            "table": "panoptic",
            "backbone": b,
            "params": sum(p.numel() for p in model.parameters()),
            **m,
            "steps": steps,
            "train_s": round(train_s, 1),
            "n_val_images": len(val),
            "base_config": str(PANOPTIC_CONFIG.relative_to(REPO)),
            "config": dataclasses.asdict(cfg),
        }
        result["panoptic_rows"].append(row)
        write()
        print(json.dumps({k: v for k, v in row.items() if k != "config"}), flush=True)
    result["complete"] = True
    result["seconds"] = round(time.perf_counter() - t_all, 1)
    write()

    print(
        f"\n{'backbone':14s} {'params':>9s} {'mIoU':>6s} {'img/s':>7s} {'peak MB':>8s} {'train s':>8s}"
    )
    for r in result["semantic_rows"]:
        print(
            f"{r['backbone']:14s} {r['params']:9d} {r['mIoU']:6.3f} {r['images_per_s']:7.2f} "
            f"{r['peak_mb']:8.1f} {r['train_s']:8.1f}"
        )
    if result["panoptic_rows"]:
        print(f"\n{'backbone':14s} " + " ".join(f"{k:>6s}" for k in PANOPTIC_KEYS))
        for r in result["panoptic_rows"]:
            print(f"{r['backbone']:14s} " + " ".join(f"{fmt(r[k]):>6s}" for k in PANOPTIC_KEYS))
    note = ": CI-sized, far from converged" if args.quick else ""
    print(f"\nwrote {out_file} ({mode_name} mode{note})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

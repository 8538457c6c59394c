"""Backbones on the synthetic street scenes (or a Cityscapes copy): the lecture's
semantic-segmentation table and Panoptic-DeepLab PQ on three of them.

1. **Semantic table.** For every backbone of :data:`instembed.models.BACKBONES` (default
   parameters, from scratch): the embedding family with one head ``{semantic: K}`` trained with
   ``semantic_ce`` by the engine's Trainer, all with the same data, seed, crops, optimiser and
   training budget; val mIoU (K classes, whole val images, :class:`instembed.engine.evaluation.
   Scorer` with the ``miou`` group), parameters, inference images/s on CPU (batch 1, fixed input,
   network + semantic argmax, median of the repeats) and the peak memory of inference (peak
   resident set during the runs minus the resident set once model and input are built; the
   peak is reset through ``/proc/self/clear_refs`` so import-time peaks do not hide it), each
   speed measurement in a fresh process as in ``benchmarks/repro_speed.py``.
2. **Panoptic table** (street scenes only). ``configs/street_center_offset.yaml`` (semantic +
   center + offset heads, ``center_offset`` loss and targets, Panoptic-DeepLab grouping) with its
   backbone replaced (default: erfnet, the config's own, beside deeplabv3plus and hrnet) and the
   data / run sections of this script; PQ, PQ_th, PQ_st, SQ, RQ and mIoU on the val images,
   stuff classes :data:`~instembed.data.synth.STREET_STUFF`, things
   :data:`~instembed.data.synth.STREET_THINGS` scored class-aware.

Data: ``make_samples("street", ...)`` (7 classes; train seed = run seed, val seed = run seed +
1_000_003, as the engine's synthetic data section), horizontal flips only (street scenes have an
up). With ``--cityscapes PATH``: a Cityscapes copy (19 classes, ``benchmarks/backbones_cityscapes
.py``: labelIds -> trainIds, 255 void, downscaled by ``--cityscapes-scale``), semantic table
only.

Modes:

* **quick** (``--quick``): 100 steps per run, 64 train / 8 val images, 96 x 128 crops, 3 speed
  repeats; ~15 min on one thread. CI-sized, far from converged: it shows every backbone trains.
* **full** (default): every run trains for the same **CPU-second budget** (240 CPU s, one torch
  thread: ``Trainer.fit(time_limit_s=..., cpu_time=True)``; ``--budget-cpu S`` to change it),
  so the table compares backbones at equal compute, not equal steps: a fast backbone takes ~4x
  the steps of unet. 256 train / 32 val images, 96 x 128 crops (larger crops would halve the
  steps of the slow backbones), 10 speed repeats. The LR schedule (poly) is laid over a 1500-step
  cap that no backbone reaches in 240 CPU s, so the LR never decays to 0 and the numbers are
  **not converged** (steps reached, CPU seconds, stop status and the final LR are in each row).
  All in -- 8 semantic + 3 panoptic runs, scoring and the speed processes -- ~48 CPU-minutes.

    OMP_NUM_THREADS=1 python benchmarks/repro_backbones.py --quick --threads 1
    OMP_NUM_THREADS=1 python benchmarks/repro_backbones.py --threads 1            # full
    OMP_NUM_THREADS=1 python benchmarks/repro_backbones.py --threads 1 --cityscapes PATH \\
        --cityscapes-scale 0.25                                                   # Cityscapes

Trained runs are kept in ``--runs`` and reused when the resolved config, budget and data are the
same (``train_time.json``). Writes ``benchmarks/results/repro_backbones.json`` (quick),
``repro_backbones_full.json`` (full), ``repro_backbones_cityscapes[_full].json`` (Cityscapes),
rewritten after every row (``"complete": false`` until the end); prints JSON lines and tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
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
STREET_THINGS = (4, 5, 6)  # car, person, sign

MODES = {
    "quick": {
        "steps": 100,
        "panoptic_steps": 100,
        "budget_cpu": None,  # steps-based
        "n_train": 64,
        "n_val": 8,
        "size": [128, 256],
        "crop": [96, 128],
        "batch_size": 4,
        "speed_size": [256, 512],
        "speed_repeat": 3,
    },
    "full": {
        "steps": 1500,  # cap and LR-schedule length; the budget stops every run before it
        "panoptic_steps": 1500,
        "budget_cpu": 240.0,  # CPU seconds of training per run (semantic and panoptic)
        "n_train": 256,
        "n_val": 32,
        "size": [128, 256],
        "crop": [96, 128],
        "batch_size": 4,
        "speed_size": [256, 512],
        "speed_repeat": 10,
    },
}
PANOPTIC_BACKBONES = ["erfnet", "deeplabv3plus", "hrnet"]

log = logging.getLogger("repro_backbones")


@dataclasses.dataclass
class Data:
    """The samples of one benchmark data set and how to describe them."""

    name: str  # "street" | "cityscapes"
    num_classes: int
    thing_classes: tuple[int, ...]
    section: dict  # the engine data section recorded with every run
    train: list
    val: list
    key: dict | None = None  # what else decides the samples (run reuse); None: the section does
    info: dict = dataclasses.field(default_factory=dict)


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


def street_data(mode: dict, seed: int) -> Data:
    """The synthetic street scenes, as the engine's synthetic data section makes them."""
    from instembed.data.synth import make_samples

    size = tuple(mode["size"])
    return Data(
        "street",
        NUM_CLASSES,
        STREET_THINGS,
        data_section(mode, []),
        make_samples("street", mode["n_train"], size=size, seed=seed),
        make_samples("street", mode["n_val"], size=size, seed=seed + 1_000_003),
    )


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


def semantic_config(backbone: str, data: Data, steps: int, seed: int) -> dict:
    """Semantic segmentation only: one ``semantic`` head, ``semantic_ce``."""
    return {
        "data": dict(data.section, targets=[]),
        "model": {
            "name": "embedding",
            "backbone": backbone,
            "in_channels": 3,
            "params": {"heads": {"semantic": data.num_classes}},
        },
        "loss": {"name": "semantic_ce", "params": {}},
        # not used by this script (it scores the semantic argmax itself); a valid section
        "cluster": {"method": "meanshift", "params": {"bandwidth": 0.5}},
        "optim": {"lr": 1e-3},
        "run": run_section(steps, seed),
    }


def panoptic_config(backbone: str, data: Data, steps: int, seed: int) -> dict:
    """``configs/street_center_offset.yaml`` with its backbone, data and run sections replaced."""
    import yaml

    cfg = yaml.safe_load(PANOPTIC_CONFIG.read_text())
    cfg["data"] = dict(data.section, targets=list(cfg["data"].get("targets", ["center_offset"])))
    cfg["model"]["backbone"] = backbone
    cfg["run"] = run_section(steps, seed)
    return cfg


# --------------------------------------------------------------------------- training
def train(cfg_dict: dict, out: Path, data: Data, budget_cpu: float | None):
    """(model in eval mode, training record, resolved Config). Trains on ``data.train`` (the
    config's augmentation and targets) for ``run.steps`` or, with ``budget_cpu``, until that
    many CPU seconds of this process have gone into training; reuses ``out`` when it holds a
    finished run of the same resolved config, budget and data. The record: steps, status
    ("stopped": by the budget), train_s (wall), cpu_s, lr_end."""
    from instembed.data.dataset import InstanceDataset
    from instembed.engine import checkpoint as ck
    from instembed.engine.build import build_model_from_config, train_transform
    from instembed.engine.config import config_from_dict, config_to_dict
    from instembed.engine.trainer import Trainer

    cfg = config_from_dict(cfg_dict)
    same = {"config": config_to_dict(cfg), "budget_cpu": budget_cpu, "data_key": data.key}
    done = out / "train_time.json"
    prev = json.loads(done.read_text()) if done.is_file() else {}
    if all(prev.get(k) == v for k, v in same.items()) and (out / "last.pt").is_file():
        model = build_model_from_config(cfg.model)
        ck.load_model_state(model, ck.load_checkpoint(out / "last.pt")["model"])
        rec = {k: prev.get(k) for k in ("steps", "status", "cpu_s", "lr_end")}
        rec["train_s"] = float(prev.get("train_s", prev.get("seconds", 0.0)))
        log.info("reusing %s (%d steps)", out, rec["steps"])
        return model.eval(), {**rec, "reused": True}, cfg
    train_set = InstanceDataset(
        data.train,
        transform=train_transform(cfg.data),
        targets=tuple(cfg.data.targets),
        center=cfg.data.center,
    )
    trainer = Trainer(cfg, out, train_set=train_set, val_samples=[])  # scored below
    t0, c0 = time.perf_counter(), time.process_time()
    result = trainer.fit(time_limit_s=budget_cpu, cpu_time=budget_cpu is not None)
    rec = {
        "steps": result.step,
        "status": result.status,
        "train_s": round(time.perf_counter() - t0, 1),
        "cpu_s": round(time.process_time() - c0, 1),
        "lr_end": float(trainer.scheduler.get_last_lr()[0]),
    }
    trainer.close()
    done.write_text(json.dumps({**rec, "seconds": rec["train_s"], **same}))
    log.info("%s: %d steps in %.0f CPU s (%s)", out.name, rec["steps"], rec["cpu_s"], rec["status"])
    return trainer.model.eval(), {**rec, "reused": False}, cfg


@torch.no_grad()
def outputs_of(model, samples) -> list:
    outs = []
    for s in samples:
        x = torch.from_numpy(np.ascontiguousarray(s.image, np.float32))[None]
        outs.append(model(x).map(lambda t: t.detach().float().cpu()))
    return outs


def semantic_argmax(out) -> np.ndarray:
    return out.semantic[0].argmax(0).numpy().astype(np.int64)


def score_semantic(model, samples, num_classes: int = NUM_CLASSES) -> dict:
    """mIoU (and per-class IoU) of the semantic argmax on whole val images; ground-truth pixels
    of 255 are void."""
    from instembed.engine.evaluation import Scorer

    scorer = Scorer(metrics=("miou",), num_classes=num_classes)
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
def measure_speed(backbone: str, h: int, w: int, repeat: int, classes: int = NUM_CLASSES) -> dict:
    """One inference measurement in this (fresh) process: batch 1, (3, h, w) input, network +
    semantic argmax; images/s = median of ``repeat`` timed runs after one warm-up."""
    from instembed.models import build_model

    model = build_model(
        "embedding", backbone=backbone, in_channels=3, heads={"semantic": classes}
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


def speed_in_fresh_process(
    backbone: str, size, repeat: int, threads: int | None, classes: int = NUM_CLASSES
) -> dict:
    cmd = [sys.executable, __file__, "--one", backbone, *map(str, (*size, repeat, classes))]
    if threads:
        cmd += ["--threads", str(threads)]
    line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(line.strip().splitlines()[-1])


# --------------------------------------------------------------------------- main
def fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the speed processes)."""
    me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    import backbones_cityscapes as bc

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--one", nargs=5, metavar=("B", "H", "W", "REPEAT", "K"), help=argparse.SUPPRESS
    )
    ap.add_argument("--quick", action="store_true", help="CI-sized run (far from converged)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument(
        "--backbones", nargs="*", default=None, help="semantic table backbones (default: all)"
    )
    ap.add_argument(
        "--panoptic-backbones",
        nargs="*",
        default=None,
        help=f"panoptic table backbones (default: {' '.join(PANOPTIC_BACKBONES)}; none: skip; "
        "street scenes only)",
    )
    ap.add_argument("--steps", type=int, default=None, help="override the mode's semantic steps")
    ap.add_argument(
        "--panoptic-steps", type=int, default=None, help="override the mode's panoptic steps"
    )
    ap.add_argument(
        "--budget-cpu",
        type=float,
        default=None,
        metavar="S",
        help="train every run for S CPU seconds (full default: "
        f"{MODES['full']['budget_cpu']:.0f}; quick: by steps unless given)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--runs", default="/tmp/instembed_repro_backbones")
    bc.add_arguments(ap)
    return ap, ap.parse_args(argv)


def command_line(args, backbones: list[str], pan_backbones: list[str]) -> str:
    """The command that reproduces this run (``--out`` / ``--runs`` left out)."""
    parts = [SCRIPT] + (["--quick"] if args.quick else []) + [f"--threads {args.threads}"]
    for flag, value in (
        ("--steps", args.steps),
        ("--panoptic-steps", args.panoptic_steps),
        ("--budget-cpu", args.budget_cpu),
        ("--seed", args.seed or None),
    ):
        if value is not None:
            parts.append(f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
    if args.backbones is not None:
        parts.append(f"--backbones {' '.join(backbones)}")
    if args.panoptic_backbones is not None:
        parts.append(f"--panoptic-backbones {' '.join(pan_backbones)}")
    if args.cityscapes:
        parts.append(__import__("backbones_cityscapes").command_args(args))
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    from instembed.models import BACKBONES

    ap, args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        b, h, w, r, k = args.one
        print(json.dumps(measure_speed(b, int(h), int(w), int(r), int(k))))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("instembed").setLevel(logging.WARNING)

    mode_name = "quick" if args.quick else "full"
    mode = dict(MODES[mode_name])
    if args.steps:
        mode["steps"] = args.steps
    if args.panoptic_steps:
        mode["panoptic_steps"] = args.panoptic_steps
    if args.budget_cpu is not None:
        if args.budget_cpu <= 0:
            ap.error(f"--budget-cpu must be > 0, got {args.budget_cpu}")
        mode["budget_cpu"] = float(args.budget_cpu)
    budget = mode["budget_cpu"]
    backbones = args.backbones if args.backbones is not None else list(BACKBONES)
    pan_default = [] if args.cityscapes else PANOPTIC_BACKBONES
    pan_backbones = args.panoptic_backbones if args.panoptic_backbones is not None else pan_default
    if args.cityscapes and pan_backbones:
        ap.error("--cityscapes: the panoptic table runs on the street scenes only")
    unknown = [b for b in backbones + pan_backbones if b not in BACKBONES]
    if unknown:
        ap.error(f"unknown backbone(s) {unknown}; choose from {list(BACKBONES)}")
    c_start, load_start, t_all = cpu_seconds(), os.getloadavg(), time.perf_counter()
    if args.cityscapes:
        import backbones_cityscapes as bc

        try:
            data = Data("cityscapes", bc.NUM_CLASSES, bc.THING_CLASSES, **bc.prepare(args, mode))
        except ValueError as err:
            ap.error(str(err))
        log.info("Cityscapes: %s", data.info)
    else:
        data = street_data(mode, args.seed)
    script = command_line(args, backbones, pan_backbones)
    settings = {**mode, "seed": args.seed, "threads": args.threads or torch.get_num_threads()}
    result: dict = {
        "benchmark": "backbones_" + data.name,
        "dataset": data.name,
        "num_classes": data.num_classes,
        "thing_classes": list(data.thing_classes),
        "script": script,
        "mode": mode_name,
        "settings": settings,
        "budget_cpu_per_run": budget,
        "budget_clock": "CPU seconds of the training process (time.process_time), checked after "
        "every step; the LR schedule runs over the steps cap"
        if budget
        else None,
        "data": data.info,
        "semantic_rows": [],
        "panoptic_rows": [],
        "loadavg_start": [round(v, 2) for v in load_start],
        "complete": False,
        "note": (
            __import__("backbones_cityscapes").NOTE
            if data.name == "cityscapes"
            else "Synthetic street scenes (instembed.data.synth, kind 'street', 7 classes: stuff "
            "road, sidewalk, building, sky; things car, person, sign)."
        )
        + " Every backbone with its default parameters, from scratch, the same data, seed, "
        "crops, optimiser and training budget (steps, or CPU seconds when budget_cpu_per_run is "
        "set). mIoU / PQ on whole val images. images/s and peak MB: batch-1 inference (network "
        "+ semantic argmax) at speed_size in a fresh process each, one CPU thread when threads "
        "is 1, on a CPU shared with other jobs; peak MB = the process's peak resident memory "
        "during the warm-up and timed runs minus its resident memory after the model and "
        "input are built (peak reset through /proc/self/clear_refs).",
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "repro_backbones" + ("_cityscapes" if args.cityscapes else "")
    out_file = out_dir / (stem + ("_full" if mode_name == "full" else "") + ".json")

    def write() -> None:
        out_file.write_text(json.dumps(result, indent=1) + "\n")

    runs = Path(args.runs)
    prefix = mode_name + ("_cityscapes" if args.cityscapes else "")
    common = {"script": script, "mode": mode_name, "dataset": data.name, "budget_cpu": budget}
    for b in backbones:
        cfg_dict = semantic_config(b, data, mode["steps"], args.seed)
        model, rec, cfg = train(cfg_dict, runs / f"{prefix}_semantic_{b}", data, budget)
        m = score_semantic(model, data.val, data.num_classes)
        speed = speed_in_fresh_process(
            b, mode["speed_size"], mode["speed_repeat"], args.threads, data.num_classes
        )
        row = {
            **common,
            "table": "semantic",
            "backbone": b,
            "params": speed["params"],
            "mIoU": m["mIoU"],
            "images_per_s": speed["images_per_s"],
            "peak_mb": speed["peak_mb"],
            "speed_input": list(mode["speed_size"]),
            **rec,
            "n_val_images": len(data.val),
            "IoU_per_class": m["IoU_per_class"],
            "config": dataclasses.asdict(cfg),
        }
        result["semantic_rows"].append(row)
        write()
        print(json.dumps({k: v for k, v in row.items() if k != "config"}), flush=True)
    for b in pan_backbones:
        cfg_dict = panoptic_config(b, data, mode["panoptic_steps"], args.seed)
        model, rec, cfg = train(cfg_dict, runs / f"{prefix}_panoptic_{b}", data, budget)
        m = score_panoptic(model, data.val, cfg.cluster)
        row = {
            **common,
            "table": "panoptic",
            "backbone": b,
            "params": sum(p.numel() for p in model.parameters()),
            **m,
            **rec,
            "n_val_images": len(data.val),
            "base_config": str(PANOPTIC_CONFIG.relative_to(REPO)),
            "config": dataclasses.asdict(cfg),
        }
        result["panoptic_rows"].append(row)
        write()
        print(json.dumps({k: v for k, v in row.items() if k != "config"}), flush=True)
    result["complete"] = True
    result["seconds"] = round(time.perf_counter() - t_all, 1)
    result["cpu_s_total"] = round(cpu_seconds() - c_start, 1)
    result["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    write()

    print(
        f"\n{'backbone':14s} {'params':>9s} {'mIoU':>6s} {'img/s':>7s} {'peak MB':>8s} "
        f"{'steps':>6s} {'CPU s':>7s}"
    )
    for r in result["semantic_rows"]:
        print(
            f"{r['backbone']:14s} {r['params']:9d} {r['mIoU']:6.3f} {r['images_per_s']:7.2f} "
            f"{r['peak_mb']:8.1f} {r['steps']:6d} {fmt(r['cpu_s']):>7s}"
        )
    if result["panoptic_rows"]:
        print(f"\n{'backbone':14s} " + " ".join(f"{k:>6s}" for k in [*PANOPTIC_KEYS, "steps"]))
        for r in result["panoptic_rows"]:
            vals = [fmt(r[k]) for k in PANOPTIC_KEYS] + [str(r["steps"])]
            print(f"{r['backbone']:14s} " + " ".join(f"{v:>6s}" for v in vals))
    note = ": CI-sized, far from converged" if args.quick else ": not converged"
    print(
        f"\nwrote {out_file} ({mode_name} mode{note}; {result['cpu_s_total']:.0f} CPU s, "
        f"{result['seconds']:.0f} s wall)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

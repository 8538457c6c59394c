"""Mask R-CNN vs semi-convolutional Mask R-CNN (Novotny et al. 2018, §3.5 / Table 3 setting) on
BBBC010 worms at an equal small CPU budget, plus train-step and inference speed at 512x512
beside the U-Net + spatial-embeddings model of ``configs/pretrained/bbbc010-worms.yaml``.

    python benchmarks/repro_maskrcnn.py --quick [--threads 1]     # quick: 150 steps, 6 val images
    python benchmarks/repro_maskrcnn.py                           # full: 3000 steps, all 10 val

Both models train with the engine's Trainer on the recorded 40 / 10 split of
:mod:`instembed.data.splits` (``configs/worms_maskrcnn.yaml`` / ``worms_semiconv_maskrcnn.yaml``,
192x192 crops, batch 2, same steps and seed); the "detections" thresholds are tuned on the val
images (``instembed.engine.tune``) and the predictions scored as mask stacks (overlapping worms)
with ``instembed.engine.evaluation.score``: COCO AP, AP50, AP75 and AP_dsb@0.5.

Writes ``benchmarks/results/repro_maskrcnn.json`` (``repro_maskrcnn_steps<N>.json`` with
``--steps N``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from instembed.data.dataset import collate, image_targets, sample_to_item  # noqa: E402
from instembed.engine.build import build_loss_from_config, build_model_from_config  # noqa: E402
from instembed.engine.config import config_from_dict  # noqa: E402
from instembed.engine.tune import tune_thresholds  # noqa: E402
from train_pretrained import data_root, load_split, network_outputs, train_on_split  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODELS = {
    "maskrcnn": REPO / "configs" / "worms_maskrcnn.yaml",
    "semiconv_maskrcnn": REPO / "configs" / "worms_semiconv_maskrcnn.yaml",
}
SPEED_ONLY = {"unet_spatial": REPO / "configs" / "pretrained" / "bbbc010-worms.yaml"}
MODES = {"quick": {"steps": 150, "n_val": 6}, "full": {"steps": 3000, "n_val": None}}
METRICS = ("AP", "AP50", "AP75", "AP_dsb@0.5")
log = logging.getLogger("repro_maskrcnn")


def load_cfg(path: Path, steps: int | None = None):
    d = yaml.safe_load(path.read_text())
    d["data"]["path"] = str(data_root() / "bbbc010")
    d["data"].pop("split", None)
    if steps is not None:
        d["run"].update({"steps": steps, "val_every": 0, "ckpt_every": 0, "progress": False,
                         "tensorboard": False})  # fmt: skip
    return config_from_dict(d)


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--n-val", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--runs", default="/tmp/instembed_repro_maskrcnn")
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    mode = "quick" if args.quick else "full"
    steps = args.steps or MODES[mode]["steps"]
    n_val = args.n_val or MODES[mode]["n_val"]
    t_all = time.perf_counter()
    cfg0 = load_cfg(MODELS["maskrcnn"], steps)
    train_samples, val_samples = load_split(cfg0, "bbbc010")
    val_samples = val_samples[:n_val] if n_val else val_samples
    rows = []
    for name, path in MODELS.items():
        cfg = load_cfg(path, steps)
        torch.manual_seed(0)
        out = Path(args.runs) / name
        trainer, result, train_s = train_on_split(cfg, out, train_samples, [], None)
        outputs = network_outputs(trainer.model, val_samples)
        res = tune_thresholds(outputs, val_samples, cfg.cluster)
        row = {"model": name, "steps": result.step, "train_s": round(train_s, 1),
               "n_val_images": len(val_samples), **{k: res.metrics.get(k) for k in METRICS},
               "cluster_tuned": res.params, "config": dataclasses.asdict(cfg)}  # fmt: skip
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "config"}), flush=True)
    speeds = {}
    if not args.skip_speed:
        sample = val_samples[0]
        for name, path in {**MODELS, **SPEED_ONLY}.items():
            speeds[name] = speed(load_cfg(path), sample)
            print(name, speeds[name], flush=True)
    result = {
        "benchmark": "repro_maskrcnn",
        "script": "benchmarks/repro_maskrcnn.py"
        + (" --quick" if args.quick else "")
        + (f" --steps {args.steps}" if args.steps else ""),
        "mode": mode,
        "rows": rows,
        "speed_512": speeds,
        "threads": torch.get_num_threads(),
        "seconds": round(time.perf_counter() - t_all, 1),
    }
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    tag = f"_steps{args.steps}" if args.steps else ""  # the quick / full modes: one file
    (outdir / f"repro_maskrcnn{tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{'model':20s} " + " ".join(f"{k:>10s}" for k in METRICS))
    for r in rows:
        vals = " ".join(f"{r[k]:10.3f}" if r[k] is not None else f"{'-':>10s}" for k in METRICS)
        print(f"{r['model']:20s} {vals}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

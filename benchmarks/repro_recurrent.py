"""Recurrent attention (Ren & Zemel 2017) on the CVPPP A1 protocol (SBD, |DiC|) with synthetic
leaf rosettes, against the discriminative loss + mean-shift and the spatial embeddings, each
trained for the same CPU wall-clock budget.

    python benchmarks/repro_recurrent.py [--quick] [--threads 1]

Methods (all on ``leaf_rosettes`` images of the size in ``configs/leaves_discriminative.yaml``):

* ``recurrent_attention`` -- ``configs/leaves_recurrent.yaml`` (post-processing ``steps``);
* ``discriminative_meanshift`` -- ``configs/leaves_discriminative.yaml`` (as repro_leaves.py);
* ``spatial_embeddings`` -- the same U-Net with the spatial-embedding heads and loss (Neven et
  al. 2019: 2-D semi-conv embedding, sigma, seed; seeded clustering), built from the
  discriminative config.

Each is trained with the engine's Trainer until ``budget_s`` **CPU seconds** of training have
been spent (``Trainer.fit(time_limit_s=..., cpu_time=True)``; with one torch thread that is one
core's time, so the budget stays equal when other work shares the machine; quick 150 s, full
900 s per method), then scored on the validation rosettes with the config's
post-processing: SBD, |DiC|, AP, and seconds per image (network + post-processing). Quick mode
scales the recurrent model's curriculum and teacher-forcing schedules to its short run.

Writes ``benchmarks/results/repro_recurrent.json`` and a figure of the steps (attention box,
mask, score) on one validation image: ``benchmarks/results/recurrent/steps.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_pretrained import train_on_split  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODES = {
    "quick": {"budget_s": 150, "n_train": 64, "n_val": 8},
    "full": {"budget_s": 900, "n_train": 256, "n_val": 32},
}


def _configs(quick: bool) -> dict[str, dict]:
    import yaml

    disc = yaml.safe_load((REPO / "configs" / "leaves_discriminative.yaml").read_text())
    rec = yaml.safe_load((REPO / "configs" / "leaves_recurrent.yaml").read_text())
    spatial = copy.deepcopy(disc)
    spatial["model"]["params"]["heads"] = {"embedding": 2, "sigma": 2, "seed": 1}
    spatial["model"]["params"].update(semiconv=True, coord_scale=1 / 64)
    spatial["loss"] = {
        "name": "spatial",
        "params": {"coord_scale": 1 / 64, "w_instance": 1.0, "w_smooth": 10.0, "w_seed": 1.0},
    }
    spatial["cluster"] = {"method": "seeded", "params": {"seed_thresh": 0.9, "min_size": 20}}
    if quick:  # the schedules of a 3000-step run, scaled to the ~100 steps of the budget
        rec["model"]["params"].update(curriculum_every=10, teacher_steps=80)
    return {
        "recurrent_attention": rec,
        "discriminative_meanshift": disc,
        "spatial_embeddings": spatial,
    }


@torch.no_grad()
def _predict(model, cluster, samples) -> tuple[list, float]:
    from instembed.engine.build import cluster_outputs

    model.eval()
    preds, t0 = [], time.perf_counter()
    for s in samples:
        x = torch.from_numpy(np.ascontiguousarray(s.image, np.float32))[None]
        preds.append(cluster_outputs(model(x).map(lambda t: t.float()), cluster))
    return preds, (time.perf_counter() - t0) / max(1, len(samples))


@torch.no_grad()
def _figure(model, sample, path: Path, stop_thresh: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    model.eval()
    x = torch.from_numpy(np.ascontiguousarray(sample.image, np.float32))[None]
    out = model(x)
    masks, scores, boxes = out.aux["masks"][0], out.aux["scores"][0], out.aux["boxes"][0]
    n = int(masks.shape[0])
    cols = min(n, 6)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.9 * rows), squeeze=False)
    rgb = np.clip(np.moveaxis(sample.image[:3], 0, -1), 0, 1)
    for t, ax in enumerate(axes.flat):
        ax.axis("off")
        if t >= n:
            continue
        ax.imshow(rgb)
        ax.imshow(
            np.ma.masked_less(masks[t].numpy(), 0.5), cmap="autumn", alpha=0.6, vmin=0, vmax=1
        )
        x1, y1, x2, y2 = boxes[t].tolist()
        ax.add_patch(
            Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, ec="cyan", lw=1.5)
        )
        stop = " (stop)" if float(scores[t]) < stop_thresh else ""
        ax.set_title(f"step {t + 1}: s={float(scores[t]):.2f}{stop}", fontsize=8)
    fig.suptitle("recurrent attention: box (cyan), mask (red), score per step", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from instembed.data.synth import make_samples
    from instembed.engine.config import config_from_dict, config_to_dict
    from instembed.engine.evaluation import score

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--runs", default="/tmp/instembed_repro_runs")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--budget", type=float, default=None, help="training CPU seconds per method")
    ap.add_argument("--only", nargs="*", default=None, help="methods to run (default: all)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    mode = "quick" if args.quick else "full"
    p = dict(MODES[mode])
    if args.budget:
        p["budget_s"] = args.budget
    t_all = time.perf_counter()
    rows, configs = [], {}
    for name, d in _configs(args.quick).items():
        if args.only and name not in args.only:
            continue
        d["data"].update({"n_train": p["n_train"], "n_val": p["n_val"]})
        d["run"].update(steps=10**6, val_every=0, ckpt_every=0, progress=False, tensorboard=False)
        cfg = config_from_dict(d)
        size = tuple(cfg.data.size)
        train = make_samples("leaf_rosettes", p["n_train"], size=size, seed=0)
        val = make_samples("leaf_rosettes", p["n_val"], size=size, seed=1_000_003)
        torch.manual_seed(0)
        trainer, result, train_s = train_on_split(
            cfg, Path(args.runs) / f"recurrent_{name}", train, [], p["budget_s"], cpu_time=True
        )
        preds, s_per_image = _predict(trainer.model, cfg.cluster, val)
        m = score(val, preds)
        counts = [len(pr) for pr in preds]
        row = {
            "method": name,
            "SBD": round(float(m["SBD"]), 4),
            "absDiC": round(float(m["absDiC"]), 3),
            "DiC": round(float(m["DiC"]), 3),
            "AP": round(float(m["AP"]), 4),
            "train_steps": result.step,
            "train_s": round(train_s, 1),
            "train_cpu_s": round(result.cpu_s, 1),
            "s_per_image": round(s_per_image, 4),
            "mean_pred_count": round(float(np.mean(counts)), 2),
            "n_val_images": len(val),
        }
        rows.append(row)
        configs[name] = config_to_dict(cfg)
        print(json.dumps(row), flush=True)
        if name == "recurrent_attention":
            stop = float(cfg.cluster.params.get("stop_thresh", 0.5))
            _figure(trainer.model, val[0], Path(args.out) / "recurrent" / "steps.png", stop)
    res = {
        "benchmark": "recurrent_attention_cvppp_protocol",
        "script": "benchmarks/repro_recurrent.py" + (" --quick" if args.quick else ""),
        "data": "synthetic leaf rosettes (instembed.data.synth), CVPPP A1 metrics",
        "mode": mode,
        "budget_s_per_method": p["budget_s"],
        "budget_clock": "CPU seconds of the training process (time.process_time)",
        "rows": rows,
        "figure": "benchmarks/results/recurrent/steps.png",
        "configs": configs,
        "seconds": round(time.perf_counter() - t_all, 1),
        "threads": torch.get_num_threads(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "repro_recurrent.json").write_text(json.dumps(res, indent=1) + "\n")
    print(f"\n{'method':26s} {'SBD':>6s} {'|DiC|':>6s} {'steps':>6s} {'s/img':>7s}")
    for r in rows:
        print(
            f"{r['method']:26s} {r['SBD']:6.3f} {r['absDiC']:6.2f} {r['train_steps']:6d} "
            f"{r['s_per_image']:7.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Coloring dilemma (Novotny et al. 2018, Sec. 3 / Fig. 3): convolutional vs semi-convolutional
embeddings on identical dots on a grid, k-means with the true K; ARI and COCO AP of both.

    python benchmarks/repro_coloring.py [--quick] [--out benchmarks/results]

Reuses the engine's demo (:func:`instembed.engine.demo.run_demo`: same U-Net, same
discriminative loss, only ``model.semiconv`` differs; test grids never seen in training).
Writes ``<out>/repro_coloring.json`` (metrics, protocol, timing) and the demo's figures and
report under ``<out>/coloring/``; prints one JSON line per model and a table with the
semi-conv / conv ratio.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

MODES = {
    # steps per model, test grids, test size, time bound of the whole demo (minutes)
    "quick": {"steps": 150, "n_test": 2, "test_size": (64, 64), "minutes": 6.0},
    "full": {"steps": 400, "n_test": 4, "test_size": (96, 96), "minutes": 20.0},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI-sized run")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    from instembed.engine.demo import demo_config, run_demo

    mode = "quick" if args.quick else "full"
    p = MODES[mode]
    out = Path(args.out)
    t0 = time.perf_counter()
    metrics = run_demo(
        out / "coloring",
        minutes=p["minutes"],
        steps=p["steps"],
        n_test=p["n_test"],
        test_size=p["test_size"],
        seed=args.seed,
    )
    seconds = time.perf_counter() - t0
    from instembed.engine.config import config_to_dict

    result = {
        "benchmark": "coloring_dilemma",
        "script": "benchmarks/repro_coloring.py" + (" --quick" if args.quick else ""),
        "mode": mode,
        "protocol": {
            **{k: list(v) if isinstance(v, tuple) else v for k, v in p.items()},
            "seed": args.seed,
            "clustering": "k-means with the true number of dots, ground-truth foreground",
            "config_conv": config_to_dict(demo_config(False, p["steps"], args.seed)),
            "config_semiconv": config_to_dict(demo_config(True, p["steps"], args.seed)),
        },
        "metrics": metrics,
        "figures": ["coloring/segmentation.png", "coloring/embedding_space.png"],
        "seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "repro_coloring.json").write_text(json.dumps(result, indent=1) + "\n")
    for name, m in metrics.items():
        print(json.dumps({"benchmark": "coloring_dilemma", "model": name, **m}))
    print(f"\n{'model':10s} {'ARI':>7s} {'AP':>7s} {'AP50':>7s}")
    for name, m in metrics.items():
        print(f"{name:10s} {m['ARI']:7.3f} {m['AP']:7.3f} {m['AP50']:7.3f}")
    conv, semi = metrics["conv"], metrics["semiconv"]
    ratio = semi["ARI"] / conv["ARI"] if conv["ARI"] > 0 else float("inf")
    print(f"ARI ratio semiconv / conv: {ratio:.2f}  ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

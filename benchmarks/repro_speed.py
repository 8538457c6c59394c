"""Speed / accuracy by backbone (De Brabandere et al. 2017, Table 3 analogue) on CPU.

For each backbone of :func:`instembed.models.build_model` (ENet-class ``enet``, ``erfnet``,
U-Nets of two sizes) and each input size: parameters, inference images/s at batch 1 (network +
seeded clustering of the spatial-embedding heads), peak resident memory growth, and -- where a
trained model of that backbone exists (the shipped ``bbbc039-nuclei``) -- AP_dsb@0.5 on the
BBBC039 val split.

    python benchmarks/repro_speed.py [--quick] [--threads N]

Writes ``benchmarks/results/repro_speed.json``; prints JSON lines and a table.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

HEADS = {"embedding": 2, "sigma": 2, "seed": 1}
BACKBONES = {
    "enet": ("enet", {}),
    "erfnet": ("erfnet", {}),
    "unet-d3w16": ("unet", {"depth": 3, "width": 16}),
    "unet-d4w32": ("unet", {"depth": 4, "width": 32}),
}
MODES = {
    "quick": {"sizes": [256, 512], "repeat": 3},
    "full": {"sizes": [256, 512, 1024], "repeat": 10},
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@torch.no_grad()
def time_model(model, size: int, repeat: int) -> tuple[float, float]:
    """(images/s, seconds per image) of network + seeded clustering at batch 1."""
    from instembed.cluster import cluster_embeddings

    x = torch.rand(1, 1, size, size)
    model.eval()
    out = model(x)  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = model(x)
        cluster_embeddings(out, "seeded", sigma_mode="std", min_size=16)
        times.append(time.perf_counter() - t0)
    t = sorted(times)[len(times) // 2]
    return 1.0 / t, t


def measure_one(label: str, size: int, repeat: int) -> dict:
    """One measurement in this (fresh) process: peak memory = growth of the peak resident set
    from after the model is built to after the timed runs (network activations + clustering)."""
    from instembed.models import build_model

    name, params = BACKBONES[label]
    model = build_model(name, 1, heads=HEADS, semiconv=True, **params)
    n_params = sum(p.numel() for p in model.parameters())
    before = peak_rss_mb()
    ips, _ = time_model(model, size, repeat)
    return {
        "backbone": label,
        "params": n_params,
        "size": size,
        "images_per_s": round(ips, 3),
        "peak_mb": round(peak_rss_mb() - before, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--one", nargs=3, metavar=("BACKBONE", "SIZE", "REPEAT"), help=argparse.SUPPRESS
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure_one(args.one[0], int(args.one[1]), int(args.one[2]))))
        return 0
    import subprocess

    mode = MODES["quick" if args.quick else "full"]
    ap_of: dict[str, float] = {}
    card = Path(__file__).resolve().parents[1] / "src/instembed/pretrained/bbbc039-nuclei.json"
    if card.is_file():
        info = json.loads(card.read_text())
        p = info["config"]["model"]["params"]
        key = f"unet-d{p.get('depth')}w{p.get('width')}"
        ap_of[key] = info["val_metrics"]["AP_dsb@0.5"]
    rows = []
    for label in BACKBONES:
        for size in mode["sizes"]:
            cmd = [sys.executable, __file__, "--one", label, str(size), str(mode["repeat"])]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            row = json.loads(line.strip().splitlines()[-1])
            row["AP_dsb@0.5"] = ap_of.get(label)
            rows.append(row)
            print(json.dumps(row))
    result = {
        "benchmark": "speed_accuracy",
        "script": "benchmarks/repro_speed.py" + (" --quick" if args.quick else ""),
        "rows": rows,
        "threads": torch.get_num_threads(),
        "note": "Each measurement runs in a fresh process; peak MB = growth of its peak resident "
        "memory from after the model is built to after the timed runs (inference at batch 1, "
        "network + seeded clustering); images/s = median of the repeats. AP only for backbones "
        "with a trained model (the shipped bbbc039-nuclei); timings on a CPU shared with other jobs.",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "repro_speed.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{'backbone':12s} {'params':>9s} {'size':>5s} {'img/s':>7s} {'peak MB':>8s}")
    for r in rows:
        print(
            f"{r['backbone']:12s} {r['params']:9d} {r['size']:5d} {r['images_per_s']:7.2f} {r['peak_mb']:8.1f}"
        )
    base = {r["size"]: r["images_per_s"] for r in rows if r["backbone"] == "erfnet"}
    for r in rows:
        if r["backbone"] != "erfnet" and r["size"] in base:
            print(
                f"{r['backbone']} / erfnet speed at {r['size']}: {r['images_per_s'] / base[r['size']]:.2f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

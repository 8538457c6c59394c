"""Clustering ablation (De Brabandere et al. 2017, Table 2 analogue) on the shipped models.

For each trained model (the pretrained spatial-embedding models of ``instembed/pretrained``) and
its val split (:mod:`instembed.data.splits`), the network runs once per image and its outputs
are clustered by

* ``seeded``    -- seeded clustering with the learned per-pixel bandwidth (the model's own
                   clusterer, Neven et al. 2019);
* ``meanshift`` -- mean-shift (flat kernel) on the 2-D spatial embedding;
* ``threshold`` -- threshold clustering (seed pixel -> ball -> re-centre) + merging of close
                   centres;

each with the **predicted** foreground (seed map > the model's ``fg_thresh``) and with the
**ground-truth** foreground (union of the GT instances). Mean-shift bandwidth and the threshold
radius are not tuned: both are set from the model itself, ``r = 1.18 * median sigma`` over
predicted-foreground pixels of the val images (1.18 sigma = where the Gaussian kernel of the
seeded clusterer falls to 0.5, its ``prob_thresh``).

    python benchmarks/repro_clustering.py [--quick] [--models NAME ...]

Writes ``benchmarks/results/repro_clustering.json``; prints JSON lines and a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_pretrained import data_root, network_outputs  # noqa: E402

DATASETS = {"bbbc039-nuclei": "bbbc039", "dsb2018-nuclei": "dsb2018", "bbbc010-worms": "bbbc010"}
METRICS = ("AP_dsb@0.5", "AP", "AP50", "SBD", "absDiC")


def run_model(name: str, n_images: int | None) -> list[dict]:
    from instembed.cluster import cluster_embeddings
    from instembed.data.readers import open_dataset
    from instembed.data.splits import split_dataset
    from instembed.engine.evaluation import Scorer
    from instembed.engine.predict import load_model

    model, cfg = load_model(name)
    dataset = DATASETS[name]
    reader = open_dataset(data_root() / dataset, format=cfg.data.format, **cfg.data.reader_params)
    _, val = split_dataset(reader, dataset)
    n = len(val) if n_images is None else min(n_images, len(val))
    samples = [val[i] for i in range(n)]
    outs = network_outputs(model, samples)
    base = dict(cfg.cluster.params)
    fg_thresh = float(base.get("fg_thresh", 0.5))
    sig = torch.cat([o.sigma[0].mean(0)[o.seed[0, 0] > fg_thresh] for o in outs])
    radius = 1.18 * float(sig.median()) if sig.numel() else 0.1
    min_size = int(base.get("min_size", 0))
    methods = {
        "seeded": ("seeded", base),
        "meanshift": ("meanshift", {"bandwidth": radius, "min_size": min_size}),
        "threshold": (
            "threshold",
            {"delta_v": radius, "merge_radius": radius, "min_size": min_size},
        ),
    }
    rows = []
    for label, (method, params) in methods.items():
        for fg_mode in ("predicted", "ground_truth"):
            scorer = Scorer()
            t = 0.0
            for out, s in zip(outs, samples):
                inst = s.instances
                fg = None
                if fg_mode == "ground_truth":
                    g = inst.any(0) if inst.ndim == 3 else inst > 0
                    fg = torch.from_numpy(g)
                elif method != "seeded":
                    fg = out.seed[0, 0] > fg_thresh
                p = dict(params)
                if method != "seeded":
                    p = {k: v for k, v in p.items() if k != "fg_thresh"}
                    out_c = out.embedding[:, :2]
                    t0 = time.perf_counter()
                    res = cluster_embeddings(out_c, method, foreground=fg, **p)
                else:
                    t0 = time.perf_counter()
                    res = cluster_embeddings(out, method, foreground=fg, **p)
                t += time.perf_counter() - t0
                scorer.add(s, res)
            m = scorer.summary()
            row = {
                "model": name,
                "dataset": dataset,
                "n_val_images": n,
                "clustering": label,
                "foreground": fg_mode,
                "params": {k: v for k, v in params.items()},
                **{k: float(m[k]) for k in METRICS},
                "cluster_s_per_image": t / max(n, 1),
            }
            rows.append(row)
            print(json.dumps(row))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 val images per model")
    ap.add_argument("--models", nargs="*", default=list(DATASETS))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = []
    for name in args.models:
        rows += run_model(name, 4 if args.quick else None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "clustering_ablation",
        "script": "benchmarks/repro_clustering.py" + (" --quick" if args.quick else ""),
        "mode": "quick" if args.quick else "full",
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 1),
        "threads": torch.get_num_threads(),
    }
    (out / "repro_clustering.json").write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"\n{'model':16s} {'clustering':10s} {'foreground':12s} "
        + " ".join(f"{k:>10s}" for k in METRICS)
        + "  s/img"
    )
    for r in rows:
        print(
            f"{r['model']:16s} {r['clustering']:10s} {r['foreground']:12s} "
            + " ".join(f"{r[k]:10.3f}" for k in METRICS)
            + f"  {r['cluster_s_per_image']:.3f}"
        )
    for name in args.models:
        by = {(r["clustering"], r["foreground"]): r for r in rows if r["model"] == name}
        s, ms = by[("seeded", "predicted")], by[("meanshift", "predicted")]
        if ms["cluster_s_per_image"] > 0:
            print(
                f"{name}: seeded/meanshift AP_dsb@0.5 ratio "
                f"{s['AP_dsb@0.5'] / max(ms['AP_dsb@0.5'], 1e-9):.2f}, speed ratio "
                f"{ms['cluster_s_per_image'] / max(s['cluster_s_per_image'], 1e-9):.1f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

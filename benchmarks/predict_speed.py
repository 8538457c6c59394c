"""Speed of ``instembed predict`` (network + clustering) at 512x512 and 1024x2048 on this machine.

For each image size and network, the time of one prediction is split into the network forward
(untiled, and tiled with min(512, side / 2) px tiles and the receptive-field overlap) and the clustering, and
reported as images/s and the share of time spent clustering.

Network time does not depend on the weights, so the networks are freshly initialised. Clustering
time does depend on what the network outputs, so it is measured on the outputs a well-trained
model gives: built from the ground truth of the synthetic image (embedding = the instance centre,
seed = foreground, plus Gaussian noise of 0.01 embedding units), for the seeded clusterer
(spatial embeddings, Neven et al. 2019) and mean-shift (discriminative embeddings). With
``--model M`` the end-to-end ``Predictor`` of a trained checkpoint is timed too.

Images: synthetic dot grids with jitter and noise, one object per 40x40 px (about 160 objects
at 512x512 and 1300 at 1024x2048, nuclei-like densities).

Prints one JSON line per measurement, then a table. The comparison printed is tiled / untiled
network time (the cost of tiling) -- the clustering peers are compared in
``benchmarks/cluster_speed.py``.

    python benchmarks/predict_speed.py [--reps 3] [--sizes 512x512 1024x2048] [--model M]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch

from instembed.cluster import cluster_embeddings
from instembed.data.synth import make_samples
from instembed.engine.inference import default_overlap, infer
from instembed.models import build_model
from instembed.structures import Outputs

NETWORKS = {
    "unet-d3-w16": ("unet", {"depth": 3, "width": 16}),
    "erfnet": ("erfnet", {}),
}
COORD = 1.0 / 64.0


def timed(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def oracle_outputs(labels: np.ndarray, rng: np.random.Generator, noise: float = 0.01) -> Outputs:
    """Outputs of a perfect spatial-embedding model for ``labels`` (H, W), plus noise."""
    h, w = labels.shape
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    n = int(labels.max())
    count = np.bincount(labels.ravel(), minlength=n + 1).astype(np.float32)
    cy = np.bincount(labels.ravel(), yy.ravel(), n + 1) / np.maximum(count, 1)
    cx = np.bincount(labels.ravel(), xx.ravel(), n + 1) / np.maximum(count, 1)
    fg = labels > 0
    ey = np.where(fg, cy[labels], yy) * COORD
    ex = np.where(fg, cx[labels], xx) * COORD
    emb = np.stack([ey, ex]) + rng.normal(0, noise, (2, h, w)).astype(np.float32)
    seed = np.where(fg, 0.95, 0.02).astype(np.float32)[None]
    sigma = np.full((2, h, w), 0.5, np.float32)  # "neven": scale exp(5) ~ 148 per unit^2
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, np.float32))[None]  # noqa: E731
    return Outputs(embedding=t(emb), seed=t(seed), sigma=t(sigma))


CLUSTERERS = {
    "seeded": {"min_size": 16, "seed_thresh": 0.9},
    "meanshift": {"bandwidth": 0.05},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sizes", nargs="+", default=["512x512", "1024x2048"])
    ap.add_argument("--model", default=None, help="also time Predictor with this checkpoint")
    args = ap.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    rows = []
    header = {
        "torch_threads": torch.get_num_threads(),
        "load_avg_1min": os.getloadavg()[0],
        "torch": torch.__version__,
    }
    print(json.dumps({"machine": header}))
    for size_text in args.sizes:
        h, w = (int(v) for v in size_text.split("x"))
        sample = make_samples(
            "dot_grid", 1, size=(h, w), seed=0, radius=8, spacing=40, jitter=4, noise=0.05
        )[0]
        labels = sample.instances
        image = torch.from_numpy(sample.image)
        oracle = oracle_outputs(labels, rng)
        cluster_s = {}
        for method, params in CLUSTERERS.items():
            res = cluster_embeddings(oracle, method, **params)
            found = int(res.labels.max())
            cluster_s[method] = timed(
                lambda m=method, p=params, o=oracle: cluster_embeddings(o, m, **p), args.reps
            )
            print(json.dumps({"size": size_text, "clusterer": method, "seconds": cluster_s[method],
                              "instances_true": int(labels.max()), "instances_found": found}))  # fmt: skip
        for net_name, (name, params) in NETWORKS.items():
            model = build_model(
                name, heads={"embedding": 2, "sigma": 2, "seed": 1}, semiconv=True, **params
            ).eval()
            tile = min(512, max(h, w) // 2)  # always cut the image into several tiles
            with torch.no_grad():
                net_s = timed(lambda m=model, x=image: infer(m, x), args.reps)
                tile_s = timed(lambda m=model, t=tile, x=image: infer(m, x, tile=t), args.reps)
            overlap = default_overlap(model)
            for method, cs in cluster_s.items():
                row = {
                    "size": size_text,
                    "network": net_name,
                    "clusterer": method,
                    "network_s": net_s,
                    "tile_px": tile,
                    "network_tiled_s": tile_s,
                    "receptive_field_overlap_px": overlap,  # capped at tile / 2 when larger
                    "tiled_over_untiled": tile_s / net_s,
                    "cluster_s": cs,
                    "images_per_s": 1.0 / (net_s + cs),
                    "cluster_share": cs / (net_s + cs),
                }
                rows.append(row)
                print(json.dumps(row))
        if args.model:
            from instembed.engine.predict import Predictor

            pred = Predictor.from_spec(args.model, tile=512 if max(h, w) > 1024 else None)
            if pred.in_channels == image.shape[0]:
                t_all = timed(lambda p=pred, x=image: p(x), args.reps)
                p = pred(image)
                row = {"size": size_text, "network": str(args.model), "clusterer": pred.cluster.method,
                       "images_per_s": 1 / t_all, "network_s": p.meta["timing"]["network_s"],
                       "cluster_s": p.meta["timing"]["cluster_s"],
                       "cluster_share": p.meta["timing"]["cluster_s"] / sum(p.meta["timing"].values())}  # fmt: skip
                rows.append(row)
                print(json.dumps(row))
    print()
    print(f"{'size':>10} {'network':>12} {'clusterer':>10} {'net s':>7} {'tiled/untiled':>13}"
          f" {'cluster s':>9} {'images/s':>8} {'cluster share':>13}")  # fmt: skip
    for r in rows:
        print(
            f"{r['size']:>10} {r['network'][:12]:>12} {r['clusterer']:>10} {r['network_s']:7.3f}"
            f" {r.get('tiled_over_untiled', float('nan')):13.2f} {r['cluster_s']:9.3f}"
            f" {r['images_per_s']:8.2f} {r['cluster_share']:13.0%}"
        )


if __name__ == "__main__":
    main()

"""Throughput of the BBBC039 training input pipeline (read + augment + batch), in samples/s.

Compares, in one run:

* ``raw decode``: tifffile + Pillow decoding of image and mask only (the floor any pipeline pays);
* ``instembed, 0 workers`` / ``2 workers``: ``open_dataset`` -> ``InstanceDataset`` with
  RandomScale, RandomCrop(256, min_instances=1), flips, rot90, intensity jitter -> ``collate``
  in a ``torch.utils.data.DataLoader`` (batch 4);
* ``train step``: one optimisation step of a small U-Net (``build_model("unet", width=16)``,
  discriminative loss) on a 256 x 256 batch of 4, the consumer the pipeline must keep fed.

Prints one JSON line per measurement and a table with each rate's ratio to the train step
(ratio > 1: the pipeline is faster than training consumes it).

    python benchmarks/data_throughput.py [--data ../shared/data/bbbc039] [--n 48] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from instembed.data import transforms as T
from instembed.data.dataset import InstanceDataset, collate
from instembed.data.readers import open_dataset

REPO = Path(__file__).resolve().parents[1]


def rate(fn, n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def raw_decode(reader, n: int) -> float:
    import tifffile
    from PIL import Image

    def go():
        for item in reader.items[:n]:
            tifffile.imread(item.image)
            np.asarray(Image.open(item.labels[0]))

    return rate(go, n)


def pipeline(reader, n: int, batch: int, workers: int, crop: int) -> float:
    tf = T.Compose(
        [
            T.RandomScale((0.8, 1.25)),
            T.RandomCrop(crop, min_instances=1),
            T.RandomFlip(),
            T.RandomRot90(),
            T.IntensityJitter(noise=0.01),
        ]
    )
    ds = InstanceDataset(_Head(reader, n), transform=tf, seed=0)
    dl = torch.utils.data.DataLoader(
        ds, batch_size=batch, collate_fn=collate, num_workers=workers, shuffle=True
    )
    if workers:  # start the workers before timing (as in a long training run)
        it = iter(dl)
        next(it)
        t0, seen = time.perf_counter(), 0
        for b in it:
            seen += len(b["image"])
        return seen / (time.perf_counter() - t0)
    t0, seen = time.perf_counter(), 0
    for b in dl:
        seen += len(b["image"])
    return seen / (time.perf_counter() - t0)


class _Head:
    def __init__(self, base, n):
        self.base, self.n = base, min(n, len(base))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.base[i]


def train_step_rate(batch: int, crop: int, steps: int = 5) -> float | None:
    try:
        from instembed.losses import build_loss
        from instembed.models import build_model
    except ImportError:
        return None
    torch.manual_seed(0)
    net = build_model("unet", in_channels=1, heads={"embedding": 8}, width=16)
    loss = build_loss("discriminative")
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    from instembed.data.synth import make_samples

    ds = InstanceDataset(make_samples("touching_cells", batch, size=(crop, crop), seed=0))
    b = collate([ds[i] for i in range(batch)])

    def step():
        opt.zero_grad()
        total, _ = loss(net(b["image"], coords_origin=b["coords_origin"]), b)
        total.backward()
        opt.step()

    step()  # warm-up
    return rate(lambda: [step() for _ in range(steps)], steps * batch)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "bbbc039")
    p.add_argument("--n", type=int, default=48, help="images per measurement")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--crop", type=int, default=256)
    args = p.parse_args()
    reader = open_dataset(args.data, format="bbbc039")
    results = {}
    results["raw decode"] = raw_decode(reader, args.n)
    for w in (0, 2):
        results[f"instembed, {w} workers"] = pipeline(reader, args.n, args.batch, w, args.crop)
    step = train_step_rate(args.batch, args.crop)
    if step is not None:
        results["train step (unet w16)"] = step
    env = {"torch_threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    for name, r in results.items():
        row = {"bench": "data_throughput", "what": name, "samples_per_s": round(r, 2), **env}
        if step:
            row["ratio_to_train_step"] = round(r / step, 2)
        print(json.dumps(row))
    print(f"\n{'measurement':28s} {'samples/s':>10s} {'x train step':>13s}")
    for name, r in results.items():
        ratio = f"{r / step:13.2f}" if step else f"{'-':>13s}"
        print(f"{name:28s} {r:10.2f} {ratio}")


if __name__ == "__main__":
    main()

"""Block-wise segmentation into zarr on a local Dask cluster: time and peak memory as the image
grows, and the speed-up from 1 to 2 workers.

Input: square mosaics of side S of one BBBC039 image (520 x 696, raw uint16), written to a zarr
array chunk by chunk (the mosaic is never in memory), segmented by ``bbbc039-nuclei`` with
:func:`instembed.engine.dask_blocks.segment_to_zarr` (block B, halo 64) on a local cluster of W
worker processes (one thread each). Each (S, W) runs in a fresh process. Measured:

* ``seconds``: the call's wall time (cluster already started; workers load the model at their
  first block);
* ``driver_peak_mb``: the driver's high-water mark (``VmHWM``) during the call minus its RSS
  before it (its high-water mark is reset first);
* ``worker_peak_mb``: the largest ``VmHWM`` of the worker processes at the end (whole process:
  Python, torch, the model and one block at a time);
* ``recall_ratio``: objects anchored in the full copies / (full copies x objects of one copy
  segmented alone), a check that nothing was lost or doubled at block borders (as in
  ``benchmarks/blockwise_memory.py``).

Modes::

    python benchmarks/dask_blockwise.py            # full: S = 4096 8192 16384, B = 2048, W = 1 2
    python benchmarks/dask_blockwise.py --quick    # S = 1024 2048 4096, B = 512, W = 2; W = 1 at 2048

Writes JSON lines (one per run, then one summary line) to
``benchmarks/results/dask_blockwise.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from blockwise_memory import reset_hwm, rss_mb  # noqa: E402  (one definition of both)

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("INSTEMBED_DATA", HERE.parents[1] / "shared" / "data"))
MODEL = "bbbc039-nuclei"


def one_image() -> np.ndarray:
    import tifffile

    files = sorted(p for p in (DATA / "bbbc039").rglob("*.tif") if "images" in p.parent.name)
    if not files:
        raise SystemExit(f"BBBC039 images not found under {DATA / 'bbbc039'} (INSTEMBED_DATA)")
    return tifffile.imread(files[0])


def write_mosaic(tile: np.ndarray, side: int, path: Path, chunk: int = 1024) -> None:
    """A ``side`` x ``side`` zarr array of copies of ``tile``, written one chunk at a time."""
    import zarr

    arr = zarr.create_array(str(path), shape=(side, side), chunks=(chunk, chunk),
                            dtype=tile.dtype, overwrite=True)  # fmt: skip
    h, w = tile.shape
    for y0 in range(0, side, chunk):
        for x0 in range(0, side, chunk):
            ys = np.arange(y0, min(y0 + chunk, side)) % h
            xs = np.arange(x0, min(x0 + chunk, side)) % w
            arr[y0 : y0 + len(ys), x0 : x0 + len(xs)] = tile[np.ix_(ys, xs)]


def objects_in_one_copy(tile: np.ndarray) -> int:
    """Objects of one copy, segmented alone in 512 px blocks (as benchmarks/blockwise_memory.py
    counts them: objects cut by the copy's edge join their neighbour copy's pieces in a mosaic,
    so the whole-image count of one copy is not the reference)."""
    import torch

    from instembed.data.io import normalize_image
    from instembed.engine.predict import Predictor

    torch.set_num_threads(1)
    img = normalize_image(tile[None], "percentile")
    return len(Predictor.from_spec(MODEL, tile=512)(img))


def _worker_hwm() -> float:
    return rss_mb("VmHWM")


def _worker_reset() -> bool:
    return reset_hwm()


def measure(side: int, workers: int, block: int, work: Path) -> dict:
    import logging

    import zarr
    from distributed import Client, LocalCluster

    from instembed.engine.dask_blocks import segment_to_zarr

    tile = one_image()
    src = work / f"mosaic{side}.zarr"
    if not (src / "zarr.json").exists():
        write_mosaic(tile, side, src)
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
        memory_limit=0, silence_logs=logging.ERROR,
    )  # fmt: skip
    client = Client(cluster)
    try:
        client.run(_worker_reset)
        reset_hwm()
        base = rss_mb()
        t0 = time.perf_counter()
        res = segment_to_zarr(
            str(src), MODEL, work / f"out{side}_{workers}.zarr", block=block, halo=64,
            scheduler=client, threads=1, overwrite=True,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        driver = rss_mb("VmHWM") - base
        worker = max(client.run(_worker_hwm).values())
    finally:
        client.close()
        cluster.close()
    anchors = zarr.open_array(str(res.out / "anchors"), mode="r")[...]
    h, w = tile.shape
    ay, ax = (side // h) * h, (side // w) * w
    inside = int(((anchors[:, 0] < ay) & (anchors[:, 1] < ax)).sum()) if len(anchors) else 0
    return {
        "side": side,
        "workers": workers,
        "block": block,
        "blocks": res.blocks,
        "megapixels": round(side * side / 1e6, 2),
        "seconds": round(seconds, 1),
        "driver_peak_mb": round(driver, 1),
        "worker_peak_mb": round(worker, 1),
        "instances": res.instances,
        "objects_in_full_copies": inside,
        "full_copies": (side // h) * (side // w),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the reduced run (module docstring)")
    ap.add_argument("--sizes", type=int, nargs="+", default=None)
    ap.add_argument("--block", type=int, default=None)
    ap.add_argument("--workers", type=int, nargs="+", default=None, help="at every size")
    ap.add_argument("--scaling-size", type=int, default=None,
                    help="also run 1 worker at this size (quick mode: 2048)")  # fmt: skip
    ap.add_argument("--work", type=Path, default=None, help="folder for mosaics and outputs")
    ap.add_argument("--one", nargs=3, type=int, metavar=("SIDE", "WORKERS", "BLOCK"),
                    help=argparse.SUPPRESS)  # fmt: skip
    ap.add_argument("--out", type=Path, default=HERE / "results" / "dask_blockwise.json")
    args = ap.parse_args(argv)
    if args.one:
        side, workers, block = args.one
        print(json.dumps(measure(side, workers, block, args.work)))
        return 0
    sizes = args.sizes or ([1024, 2048, 4096] if args.quick else [4096, 8192, 16384])
    block = args.block or (512 if args.quick else 2048)
    workers = args.workers or ([2] if args.quick else [1, 2])
    scaling = args.scaling_size or (2048 if args.quick else None)
    runs = [(s, w) for s in sizes for w in workers]
    if scaling and (scaling, 1) not in runs:
        runs.append((scaling, 1))
    alone = objects_in_one_copy(one_image())
    rows = []
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        for side, w in sorted(runs):
            cmd = [sys.executable, __file__, "--one", str(side), str(w), str(block),
                   "--work", tmp]  # fmt: skip
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                row = {"side": side, "workers": w, "error": res.stderr.strip()[-400:]}
            else:
                row = json.loads(res.stdout.strip().splitlines()[-1])
                row["recall_ratio"] = round(
                    row["objects_in_full_copies"] / max(row["full_copies"] * alone, 1), 4
                )
            print(json.dumps(row), flush=True)
            rows.append(row)
    ok = {(r["side"], r["workers"]): r for r in rows if "error" not in r}
    speedup = {
        s: round(ok[(s, 1)]["seconds"] / ok[(s, 2)]["seconds"], 2)
        for s in sizes + ([scaling] if scaling else [])
        if (s, 1) in ok and (s, 2) in ok
    }
    summary = {
        "summary": {
            "script": "benchmarks/dask_blockwise.py",
            "mode": "quick" if args.quick else "full",
            "model": MODEL,
            "block": block,
            "halo": 64,
            "objects_in_one_copy": alone,
            "speedup_1_to_2_workers": speedup,
            "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg()[0],
        }
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in [*rows, summary]))
    print(f"\n{'side':>6} {'W':>2} {'blocks':>6} {'MPx':>6} {'s':>8} {'driver MB':>10} "
          f"{'worker MB':>10} {'objects':>8} {'recall':>7}")  # fmt: skip
    for r in rows:
        if "error" in r:
            print(f"{r['side']:>6} {r['workers']:>2}  error: {r['error'][-80:]}")
            continue
        print(
            f"{r['side']:>6} {r['workers']:>2} {r['blocks']:>6} {r['megapixels']:>6.1f} "
            f"{r['seconds']:>8.1f} {r['driver_peak_mb']:>10.0f} {r['worker_peak_mb']:>10.0f} "
            f"{r['instances']:>8} {r['recall_ratio']:>7.3f}"
        )
    for s, x in speedup.items():
        print(f"side {s}: 1 -> 2 workers speed-up {x:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

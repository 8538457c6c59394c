"""Peak memory, time and recall of block-wise prediction on large mosaics of a real image.

A BBBC039 image (520 x 696) is tiled into square mosaics of side S (2k, 4k, 8k pixels; the last
row/column of copies is cut). The shipped ``bbbc039-nuclei`` model segments each mosaic

* ``blocks``: block by block (``Predictor(tile=512)``, :mod:`instembed.engine.blockwise`), and
* ``whole`` (the peer, the pre-block behaviour): network outputs of the whole image at once,
  then one clustering of them -- only at sizes where it fits in memory (``--whole-max``).

Each measurement runs in a fresh process; peak RSS is the process's high-water mark
(``VmHWM``) minus its RSS after loading the model and the image, so it counts what
segmentation itself allocates. Recall: the objects found are compared with the copies'
count: full copies x the objects found in one copy alone (cut copies are excluded by counting
only objects whose anchor lies in the area covered by full copies).

    python benchmarks/blockwise_memory.py [--quick] [--sizes 2048 4096 8192] [--threads 1]

Writes ``benchmarks/results/blockwise_memory.json``; prints JSON lines and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("INSTEMBED_DATA", HERE.parents[1] / "shared" / "data"))


def rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_hwm() -> bool:
    """Reset the high-water mark to the current RSS (Linux: write 5 to clear_refs); False where
    the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def one_image():
    from instembed.data.readers import open_dataset

    s = open_dataset(DATA / "bbbc039")[0]
    return s.image, s.instances


def mosaic(image: np.ndarray, side: int) -> np.ndarray:
    c, h, w = image.shape
    reps = (-(-side // h), -(-side // w))
    return np.tile(image, (1, *reps))[:, :side, :side].copy()


def full_copies_area(h: int, w: int, side: int) -> tuple[int, int]:
    return (side // h) * h, (side // w) * w


def measure(mode: str, side: int, threads: int) -> dict:
    import torch

    from instembed.engine.blockwise import _anchors
    from instembed.engine.predict import Predictor, instances_from_outputs

    torch.set_num_threads(threads)
    image, _ = one_image()
    pred = Predictor.from_spec("bbbc039-nuclei", tile=512 if mode == "blocks" else None)
    alone = len(pred(image))
    big = mosaic(image, side)
    reset_hwm()
    base = rss_mb()
    t0 = time.perf_counter()
    if mode == "blocks":
        inst = pred(big)
    else:
        inst = instances_from_outputs(pred.outputs(big), pred.cluster)
    seconds = time.perf_counter() - t0
    peak = rss_mb("VmHWM") - base
    h, w = image.shape[-2:]
    ay, ax = full_copies_area(h, w, side)
    anchors = _anchors(inst)
    inside = int(((anchors[:, 0] < ay) & (anchors[:, 1] < ax)).sum())
    copies = (ay // h) * (ax // w)
    return {
        "mode": mode,
        "side": side,
        "megapixels": side * side / 1e6,
        "seconds": round(seconds, 2),
        "peak_mb": round(peak, 1),
        "objects": len(inst),
        "objects_in_full_copies": inside,
        "expected_in_full_copies": copies * alone,
        "recall_ratio": round(inside / max(copies * alone, 1), 4),
        "threads": threads,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192])
    ap.add_argument("--quick", action="store_true", help="sizes 1024 and 2048 only")
    ap.add_argument("--whole-max", type=int, default=4096, help="largest side run whole")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--one", nargs=2, metavar=("MODE", "SIDE"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "blockwise_memory.json")
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.threads)))
        return 0
    sizes = [1024, 2048] if args.quick else args.sizes
    rows = []
    for side in sizes:
        for mode in ("blocks", "whole"):
            if mode == "whole" and side > args.whole_max:
                continue
            cmd = [
                sys.executable,
                __file__,
                "--one",
                mode,
                str(side),
                "--threads",
                str(args.threads),
            ]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                row = {"mode": mode, "side": side, "error": res.stderr.strip()[-300:]}
            else:
                row = json.loads(res.stdout.strip().splitlines()[-1])
            print(json.dumps(row), flush=True)
            rows.append(row)
    result = {"script": "benchmarks/blockwise_memory.py", "quick": args.quick, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{'side':>6} {'mode':>7} {'MPx':>6} {'s':>8} {'peak MB':>9} {'recall':>7}")
    for r in rows:
        if "error" in r:
            print(f"{r['side']:>6} {r['mode']:>7}  error: {r['error'][:60]}")
            continue
        print(
            f"{r['side']:>6} {r['mode']:>7} {r['megapixels']:>6.1f} {r['seconds']:>8.1f} "
            f"{r['peak_mb']:>9.0f} {r['recall_ratio']:>7.3f}"
        )
    by = {(r["side"], r["mode"]): r for r in rows if "error" not in r}
    for side in sizes:
        b, w = by.get((side, "blocks")), by.get((side, "whole"))
        if b and w:
            print(
                f"side {side}: whole / blocks peak memory {w['peak_mb'] / max(b['peak_mb'], 1):.1f}x,"
                f" time {w['seconds'] / max(b['seconds'], 1e-9):.2f}x"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

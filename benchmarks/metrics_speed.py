"""COCO mask AP: instembed.metrics against pycocotools, same data, same run.

Scenes: N images of 520 x 696 (DSB2018 / BBBC039 size) with ~100 instances each (ellipses of
radius 6..24 px, 5 % of 50..70 px, painted in order so later ones cover earlier ones); predictions are the ground
truth with jittered centre and radii, ~10 % missed, ~10 extra blobs, random scores.

Timed for pycocotools: turning each label image into per-instance binary masks and RLE-encoding
them (what a user of pycocotools has to do with label images), building the COCO objects,
``evaluate()``, ``accumulate()``. Timed for instembed: ``InstanceEvaluator(("coco",)).add`` on
the label images and ``summary()``. Generating the scenes is not timed.

Prints one JSON line per tool, one for the comparison (ratio = pycocotools time / instembed
time, > 1 means instembed is faster, and the largest difference between the AP numbers), then a
table.

    python benchmarks/metrics_speed.py            # 500 images (pycocotools takes minutes)
    python benchmarks/metrics_speed.py --quick    # 50 images
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import time

import numpy as np

H, W = 520, 696
KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]


def paint(params: np.ndarray, shape=(H, W)) -> np.ndarray:
    """Label image from (n, 4) ellipse parameters (cy, cx, ry, rx); id k+1 for row k."""
    lab = np.zeros(shape, np.uint16)
    for k, (cy, cx, ry, rx) in enumerate(params):
        y0, y1 = int(max(cy - ry, 0)), int(min(cy + ry + 1, shape[0]))
        x0, x1 = int(max(cx - rx, 0)), int(min(cx + rx + 1, shape[1]))
        if y1 <= y0 or x1 <= x0:
            continue
        yy, xx = np.ogrid[y0:y1, x0:x1]
        m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        lab[y0:y1, x0:x1][m] = k + 1
    return lab


def make_scene(rng: np.random.Generator, n_objects: int):
    n = int(rng.poisson(n_objects))
    radii = rng.uniform(6, 24, (n, 2))
    big = rng.random(n) < 0.05  # a few large objects, so that APl is defined
    radii[big] = rng.uniform(50, 70, (int(big.sum()), 2))
    params = np.column_stack([rng.uniform(0, H, n), rng.uniform(0, W, n), radii])
    gt = paint(params)
    keep = rng.random(n) > 0.1
    jit = params[keep] + np.column_stack(
        [rng.normal(0, 2, keep.sum()), rng.normal(0, 2, keep.sum())]
        + [params[keep, 2:] * rng.normal(0, 0.1, (keep.sum(), 2))]
    )
    extra = np.column_stack(
        [rng.uniform(0, H, 10), rng.uniform(0, W, 10), rng.uniform(4, 15, (10, 2))]
    )
    pred = paint(np.concatenate([jit, extra]))
    return gt, pred


def label_ids(lab: np.ndarray) -> np.ndarray:
    counts = np.bincount(lab.ravel())
    return np.flatnonzero(counts[1:]) + 1


def encode_instances(mask_util, lab: np.ndarray, ids: np.ndarray, slices) -> list[dict]:
    """RLE of every instance of a label image (one Fortran (H, W, N) uint8 stack, one call)."""
    masks = np.zeros((lab.shape[0], lab.shape[1], ids.size), np.uint8, order="F")
    for k, i in enumerate(ids):
        sl = slices[i - 1]
        masks[sl[0], sl[1], k] = lab[sl] == i
    return mask_util.encode(masks)


def run_pycocotools(scenes_fn, n_images):
    import pycocotools.mask as mask_util
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    from scipy import ndimage

    t_encode = 0.0
    images, anns, dets = [], [], []
    aid = 1
    for img_id, (gt, pred, scores) in enumerate(scenes_fn(), start=1):
        t0 = time.perf_counter()
        images.append({"id": img_id, "height": H, "width": W})
        g_ids = label_ids(gt)
        for rle, area in zip(
            encode_instances(mask_util, gt, g_ids, ndimage.find_objects(gt)),
            np.bincount(gt.ravel())[g_ids],
        ):
            anns.append(
                {
                    "id": aid,
                    "image_id": img_id,
                    "category_id": 1,
                    "segmentation": rle,
                    "area": float(area),
                    "bbox": list(mask_util.toBbox(rle)),
                    "iscrowd": 0,
                }
            )
            aid += 1
        p_ids = label_ids(pred)
        for rle, i in zip(
            encode_instances(mask_util, pred, p_ids, ndimage.find_objects(pred)), p_ids
        ):
            dets.append(
                {
                    "image_id": img_id,
                    "category_id": 1,
                    "segmentation": rle,
                    "score": float(scores[i]),
                }
            )
        t_encode += time.perf_counter() - t0
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1}]}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    t_eval = time.perf_counter() - t0
    stats = dict(zip(KEYS, (float(x) for x in ev.stats[:6])))
    return {
        "tool": "pycocotools",
        "n_images": n_images,
        "encode_s": round(t_encode, 3),
        "eval_s": round(t_eval, 3),
        "seconds": round(t_encode + t_eval, 3),
        **stats,
    }


def run_instembed(scenes_fn, n_images, metrics=("coco",)):
    from instembed.metrics import InstanceEvaluator

    ev = InstanceEvaluator(metrics)
    t_add = 0.0
    for gt, pred, scores in scenes_fn():
        t0 = time.perf_counter()
        ev.add(gt, pred, scores=scores[label_ids(pred)])
        t_add += time.perf_counter() - t0
    t0 = time.perf_counter()
    s = ev.summary(per_image=False)
    t_sum = time.perf_counter() - t0
    return {
        "tool": "instembed" if metrics == ("coco",) else "instembed(all metrics)",
        "n_images": n_images,
        "add_s": round(t_add, 3),
        "summary_s": round(t_sum, 3),
        "seconds": round(t_add + t_sum, 3),
        **{k: s[k] for k in KEYS if k in s},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-images", type=int, default=500)
    ap.add_argument("--n-objects", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="50 images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--all-metrics", action="store_true", help="also time every metric group")
    args = ap.parse_args()
    n = 50 if args.quick else args.n_images

    # scenes are generated once and kept (uint16 label images, ~1.4 MB per image pair)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    scenes = []
    for _ in range(n):
        gt, pred = make_scene(rng, args.n_objects)
        scores = rng.random(int(pred.max()) + 1)
        scenes.append((gt, pred, scores))
    t_gen = time.perf_counter() - t0

    def scenes_fn():
        return iter(scenes)

    n_gt = sum(len(label_ids(g)) for g, _, _ in scenes) / n
    n_pred = sum(len(label_ids(p)) for _, p, _ in scenes) / n
    # warm-up on two images (imports, first calls), not reported
    run_instembed(lambda: iter(scenes[:2]), 2)
    run_pycocotools(lambda: iter(scenes[:2]), 2)
    ours = run_instembed(scenes_fn, n)
    ref = run_pycocotools(scenes_fn, n)
    rows = [ours, ref]
    if args.all_metrics:
        rows.append(run_instembed(scenes_fn, n, ("sbd", "coco", "dsb", "pq")))
    diff = max(abs(ours[k] - ref[k]) for k in KEYS if ref[k] != -1)
    cmp = {
        "comparison": "pycocotools / instembed",
        "ratio": round(ref["seconds"] / ours["seconds"], 2),
        "max_abs_diff_AP": diff,
        "image_size": [H, W],
        "mean_gt_instances": round(n_gt, 1),
        "mean_pred_instances": round(n_pred, 1),
        "generate_s": round(t_gen, 2),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    for r in rows + [cmp]:
        print(json.dumps(r))
    print()
    print(f"{'tool':<24} {'images':>6} {'seconds':>9} {'AP':>8} {'AP50':>8} {'AP75':>8}")
    for r in rows:
        print(
            f"{r['tool']:<24} {r['n_images']:>6} {r['seconds']:>9.2f} "
            f"{r['AP']:>8.4f} {r['AP50']:>8.4f} {r['AP75']:>8.4f}"
        )
    print(f"pycocotools / instembed time ratio: {cmp['ratio']}x; max |AP difference| = {diff:.2e}")


if __name__ == "__main__":
    main()

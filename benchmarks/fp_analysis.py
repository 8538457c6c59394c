"""Where the false positives of the shipped spatial-embedding models come from (issue 16, item 5).

For each shipped model (``bbbc039-nuclei``, ``dsb2018-nuclei``, ``bbbc010-worms``) on the VAL
split of :mod:`instembed.data.splits` only (the images its checkpoint and thresholds were chosen
on; nothing here trains, and the only tuning is the library's own threshold tuner on that val
split, as ``benchmarks/train_pretrained.py --finish`` does), inference on one thread:

1. the network outputs of every val image, whole image (``Predictor.outputs``, the pass
   ``instembed predict`` and ``segment()`` make), cached on disk (``--cache``, default
   ``/tmp/fp_cache``; keyed by the model file's sha256) so re-clustering costs no network pass;
2. the baseline: the model card's clustering parameters -> AP_dsb@0.5, mean AP_dsb over IoU
   0.5:0.95, TP / FP / FN at IoU 0.5, FP and FN per image
   (:func:`instembed.engine.evaluation.score`);
3. every false positive (a prediction left unmatched at IoU 0.5 by the AP_dsb matching,
   :func:`instembed.metrics.matching.match_counts`) and every false negative classified (see
   :func:`fp_category`, :func:`fn_category`), with its area, best IoU, border contact, number
   of 8-connected pieces, seed score and mean seed probability; the same for the final setting;
4. the ablation: setting -> AP_dsb@0.5, AP_dsb@0.5:0.95, TP, FP, FN, FP / image, FN / image.
   Settings: the card's parameters; + ``connected`` (each instance keeps its pixels in its main
   8-connected piece of foreground, :func:`instembed.cluster.postprocess.main_pieces`); the thresholds
   re-tuned with the tuner's current grid (:func:`instembed.engine.tune.default_grid`), without
   and with ``connected``; and, from the last, ``min_size`` at fractions of the median val object
   area and a minimum mean seed per instance (``min_mean_seed``), to show what they trade.

    python benchmarks/fp_analysis.py                       # all three, ~15 CPU-min on one thread
    python benchmarks/fp_analysis.py --models bbbc039 --no-tune   # baseline + fixed settings

Writes ``benchmarks/results/fp_analysis.json`` (``--out``) and prints the tables. Val numbers
after tuning on val are what the model cards report too; they are optimistic for unseen
images (the project's independent test split is not in the shared copies).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_pretrained import data_root, sha256_file  # noqa: E402

REPO = HERE.parent
PRETRAINED = REPO / "src" / "instembed" / "pretrained"
SHIPPED = {"bbbc039": "bbbc039-nuclei", "dsb2018": "dsb2018-nuclei", "bbbc010": "bbbc010-worms"}
TINY = 0.25  # "tiny": area below this fraction of the median val object area
FP_CATEGORIES = ("spurious", "mostly background", "merge", "split", "poor shape")
FN_CATEGORIES = ("missed", "merged", "split", "below 0.5")
MIN_SIZE_FRACTIONS = (0.05, 0.1, 0.2)
MIN_MEAN_SEEDS = (0.6, 0.7, 0.75)


# --------------------------------------------------------------------------- data, outputs
def load_val(dataset: str, card: dict, root: Path) -> list:
    """The val samples of the recorded split, read with the shipped model's reader options."""
    from instembed.data.readers import open_dataset
    from instembed.data.splits import split_dataset

    data = card["config"]["data"]
    reader = open_dataset(root / dataset, format=data["format"], **data["reader_params"])
    _, val = split_dataset(reader, dataset)
    return [val[i] for i in range(len(val))]


def network_outputs(name: str, samples: list, cache: Path) -> list:
    """Outputs (batch 1, CPU float32) of the shipped model on each whole val image, from the
    cache when it holds this model file's outputs for these images."""
    from instembed.engine.predict import Predictor
    from instembed.structures import Outputs

    d = cache / name
    sha = sha256_file(PRETRAINED / f"{name}.pt")
    key = {"sha256": sha, "images": [str(s.path) for s in samples]}
    meta = d / "meta.json"
    if meta.is_file() and json.loads(meta.read_text()) == key:
        return [Outputs(**torch.load(d / f"{i:03d}.pt")) for i in range(len(samples))]
    d.mkdir(parents=True, exist_ok=True)
    predictor = Predictor.from_spec(name)
    outs = []
    for i, s in enumerate(samples):
        out = predictor.outputs(s.image)
        torch.save(out.to_dict(), d / f"{i:03d}.pt")
        outs.append(out)
    meta.write_text(json.dumps(key))
    return outs


def cluster_all(outputs: list, method: str, params: dict) -> list:
    """The Instances (numpy) of every image with these clustering parameters."""
    from instembed.engine.build import cluster_outputs
    from instembed.engine.config import ClusterConfig

    cc = ClusterConfig(method=method, params=dict(params))
    return [cluster_outputs(o, cc).numpy() for o in outputs]


def metrics_row(samples: list, preds: list) -> dict:
    """instembed's metrics (:func:`score`, :func:`headline`) and the counts at IoU 0.5, under
    this benchmark's own key names (``TP`` / ``FP`` / ``FN`` / ``FP_per_image`` / ...)."""
    from instembed.engine.evaluation import headline, score

    h = headline(score(samples, preds), len(samples))
    return {
        "AP_dsb@0.5": h["AP_dsb@0.5"],
        "AP_dsb@0.5:0.95": h["AP_dsb@0.5:0.95"],
        "AP": h["AP"],
        "TP": h["TP@0.5"],
        "FP": h["FP@0.5"],
        "FN": h["FN@0.5"],
        "FP_per_image": h["FP_per_image@0.5"],
        "FN_per_image": h["FN_per_image@0.5"],
        "n_gt": h["n_gt"],
        "n_pred": h["n_pred"],
    }


# --------------------------------------------------------------------------- classification
def _touches_border(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def _pieces(mask: np.ndarray) -> int:
    from scipy import ndimage

    return int(ndimage.label(mask, structure=np.ones((3, 3), bool))[1])


def fp_category(inter: np.ndarray, gt_area: np.ndarray, area: int, gt_matched: np.ndarray) -> str:
    """Category of an unmatched prediction from its column of the overlap table:

    * ``spurious``: it overlaps no ground-truth object (best IoU 0);
    * ``mostly background``: it overlaps objects, but less than half of its pixels lie on them;
    * ``merge``: it holds more than half of two or more objects;
    * ``split``: mostly on the object it overlaps most, which another prediction matched
      (a fragment or duplicate of a found object);
    * ``poor shape``: mostly on an object that no prediction matched (IoU < 0.5 with it).
    """
    if inter.size == 0 or inter.max() == 0:
        return "spurious"
    if inter.sum() < 0.5 * area:
        return "mostly background"
    if int((inter > 0.5 * np.maximum(gt_area, 1)).sum()) >= 2:
        return "merge"
    return "split" if gt_matched[int(np.argmax(inter))] else "poor shape"


def fn_category(inter_row: np.ndarray, inter: np.ndarray, gt_area: np.ndarray, i: int) -> str:
    """Category of an unmatched ground-truth object ``i``:

    * ``missed``: no prediction overlaps it;
    * ``merged``: the prediction that overlaps it most holds more than half of it and more than
      half of another object;
    * ``split``: two or more predictions each hold more than 20 % of it;
    * ``below 0.5``: overlapped, matched below IoU 0.5 (poor shape).
    """
    if inter_row.size == 0 or inter_row.max() == 0:
        return "missed"
    j = int(np.argmax(inter_row))
    held = inter[:, j] > 0.5 * np.maximum(gt_area, 1)
    if held[i] and int(held.sum()) >= 2:
        return "merged"
    if int((inter_row > 0.2 * gt_area[i]).sum()) >= 2:
        return "split"
    return "below 0.5"


def classify(samples: list, preds: list, outputs: list) -> dict:
    """Every FP and FN at IoU 0.5 (the AP_dsb matching, void rule of the evaluator), and the
    score / mean seed of the true positives for comparison."""
    from instembed.metrics.matching import match_counts
    from instembed.metrics.overlap import overlap_table

    gt_areas = []
    rows: dict[str, list] = {"fp": [], "fn": [], "tp": []}
    for idx, (s, p, o) in enumerate(zip(samples, preds, outputs)):
        gt, inst = np.asarray(s.instances), p.masks_or_labels
        t = overlap_table(gt, inst, s.ignore)
        t = t.select(np.flatnonzero(t.gt_area > 0), np.flatnonzero(t.pred_area > 0))
        iou = t.iou()
        _, gm, pm = match_counts(iou, 0.5)
        excused = t.pred_void > 0.5 * (t.pred_area + t.pred_void)
        gt_areas.extend(t.gt_area.tolist())
        seed = o.seed[0, 0].numpy()

        def pmask(j, inst=inst, t=t):
            return inst[t.pred_ids[j] - 1] if inst.ndim == 3 else inst == t.pred_ids[j]

        def gmask(i, gt=gt, t=t):
            return gt[t.gt_ids[i] - 1] if gt.ndim == 3 else gt == t.gt_ids[i]

        for j in range(t.n_pred):
            m = pmask(j)
            row = {
                "image": idx,
                "area": int(t.pred_area[j]),
                "score": float(p.scores[t.pred_ids[j] - 1]),
                "mean_seed": float(seed[m].mean()),
            }
            if pm[j]:
                rows["tp"].append(row)
                continue
            if excused[j]:
                continue
            col = t.inter[:, j]
            row.update(
                category=fp_category(col, t.gt_area, int(t.pred_area[j]), gm),
                best_iou=float(iou[:, j].max()) if t.n_gt else 0.0,
                border=_touches_border(m),
                pieces=_pieces(m),
            )
            rows["fp"].append(row)
        for i in np.flatnonzero(~gm):
            m = gmask(i)
            rows["fn"].append(
                {
                    "image": idx,
                    "area": int(t.gt_area[i]),
                    "category": fn_category(t.inter[i], t.inter, t.gt_area, int(i)),
                    "best_iou": float(iou[i].max()) if t.n_pred else 0.0,
                    "border": _touches_border(m),
                    "mean_seed": float(seed[m].mean()),
                    "max_seed": float(seed[m].max()),
                }
            )
    rows["median_gt_area"] = float(np.median(gt_areas)) if gt_areas else 0.0
    return rows


def category_table(rows: list, categories: tuple, median_area: float, fp: bool) -> dict:
    """Per category: count, tiny / border (/ scattered) counts and medians of the numbers."""
    out = {}
    for cat in (*categories, "all"):
        sel = [r for r in rows if cat == "all" or r["category"] == cat]
        entry = {
            "n": len(sel),
            "tiny": sum(r["area"] < TINY * median_area for r in sel),
            "border": sum(bool(r["border"]) for r in sel),
        }
        keys = (
            ("area", "best_iou", "score", "mean_seed") if fp else ("area", "best_iou", "mean_seed")
        )
        if fp:
            entry["scattered"] = sum(r["pieces"] > 1 for r in sel)
        for k in keys:
            entry[f"median_{k}"] = float(np.median([r[k] for r in sel])) if sel else None
        out[cat] = entry
    return out


def summarise(rows: dict) -> dict:
    """Category tables of FPs and FNs, the TP reference, and the images with the most FPs."""
    med = rows["median_gt_area"]
    tp = rows["tp"]
    per_image: dict[int, int] = {}
    for r in rows["fp"]:
        per_image[r["image"]] = per_image.get(r["image"], 0) + 1
    top = sorted(per_image.items(), key=lambda kv: -kv[1])[:5]
    q = (5, 25, 50)
    return {
        "median_gt_area": med,
        "fp": category_table(rows["fp"], FP_CATEGORIES, med, fp=True),
        "fn": category_table(rows["fn"], FN_CATEGORIES, med, fp=False),
        "tp_reference": {
            "n": len(tp),
            **{f"score_p{k}": float(np.percentile([r["score"] for r in tp], k)) for k in q},
            **{f"mean_seed_p{k}": float(np.percentile([r["mean_seed"] for r in tp], k)) for k in q},
            **{f"area_p{k}": float(np.percentile([r["area"] for r in tp], k)) for k in q},
        }
        if tp
        else {},
        "fp_by_image": [{"image": i, "fp": n} for i, n in top],
    }


# --------------------------------------------------------------------------- settings
def tune(outputs: list, samples: list, method: str, base: dict) -> tuple[dict, float, int]:
    """The library's tuner (its default grid for this method and ground truth) from ``base``;
    returns (the tuned parameters, seconds, settings tried)."""
    from instembed.engine.config import ClusterConfig
    from instembed.engine.tune import tune_thresholds

    t0 = time.perf_counter()
    res = tune_thresholds(outputs, samples, ClusterConfig(method=method, params=dict(base)))
    return {**base, **res.params}, time.perf_counter() - t0, len(res.rows)


def run_model(dataset: str, cache: Path, root: Path, do_tune: bool, log) -> dict:
    name = SHIPPED[dataset]
    card = json.loads((PRETRAINED / f"{name}.json").read_text())
    method, shipped = card["cluster"]["method"], dict(card["cluster"]["params"])
    samples = load_val(dataset, card, root)
    t0 = time.perf_counter()
    outputs = network_outputs(name, samples, cache)
    log(f"{name}: {len(samples)} val images, outputs in {time.perf_counter() - t0:.0f} s")

    settings: list[tuple[str, dict]] = [
        ("card", shipped),
        ("card + connected", {**shipped, "connected": True}),
    ]
    tuned: dict = {}
    if do_tune:
        for label, base in (
            ("retuned", shipped),
            ("retuned + connected", {**shipped, "connected": True}),
        ):
            params, sec, n = tune(outputs, samples, method, base)
            tuned[label] = {"params": params, "seconds": sec, "settings_tried": n}
            settings.append((label, params))
            log(f"  tuned {label}: {params} ({n} settings, {sec:.0f} s)")
    final_label, final = settings[-1]

    preds_by = {}
    rows = []
    for label, params in settings:
        preds = cluster_all(outputs, method, params)
        preds_by[label] = preds
        rows.append({"setting": label, "params": params, **metrics_row(samples, preds)})
        log("  " + table_line(rows[-1]))
    base_cls = classify(samples, preds_by["card"], outputs)
    med = base_cls["median_gt_area"]
    # what min_size and a minimum mean seed trade, from the final setting
    for frac in MIN_SIZE_FRACTIONS:
        ms = max(int(final.get("min_size", 0)), int(round(frac * med)))
        params = {**final, "min_size": ms}
        rows.append(
            {
                "setting": f"{final_label}, min_size {ms} ({frac:g} x median area)",
                "params": params,
                **metrics_row(samples, cluster_all(outputs, method, params)),
            }
        )
        log("  " + table_line(rows[-1]))
    for thr in MIN_MEAN_SEEDS:
        preds = [
            p[p.scores >= thr]
            for p in cluster_all(outputs, method, {**final, "score": "foreground"})
        ]
        rows.append(
            {
                "setting": f"{final_label}, mean seed >= {thr:g}",
                "params": {**final, "score": "foreground", "drop_score_below": thr},
                **metrics_row(samples, preds),
            }
        )
        log("  " + table_line(rows[-1]))
    # check: the classification counts equal the evaluator's
    b = rows[0]
    assert (len(base_cls["fp"]), len(base_cls["fn"])) == (b["FP"], b["FN"]), "counts differ"
    final_cls = classify(samples, preds_by[final_label], outputs)
    return {
        "model": name,
        "n_images": len(samples),
        "card_val_metrics": card.get("val_metrics"),
        "ablation": rows,
        "tuning": tuned,
        "baseline_categories": summarise(base_cls),
        "final_setting": final_label,
        "final_categories": summarise(final_cls),
    }


# --------------------------------------------------------------------------- printing
def table_line(r: dict) -> str:
    return (
        f"{r['setting']:<58} {r['AP_dsb@0.5']:.4f}  {r['AP_dsb@0.5:0.95']:.4f}  "
        f"{r['TP']:>5} {r['FP']:>5} {r['FN']:>5}  {r['FP_per_image']:6.2f} {r['FN_per_image']:6.2f}"
    )


def print_tables(result: dict) -> None:
    head = (
        f"{'setting':<58} {'AP@0.5':>6}  {'AP@.5:.95':>6}  {'TP':>5} {'FP':>5} {'FN':>5}  "
        f"{'FP/im':>6} {'FN/im':>6}"
    )
    for r in result["models"].values():
        print(f"\n## {r['model']} (val split, {r['n_images']} images)\n\n{head}")
        for row in r["ablation"]:
            print(table_line(row))
        for which in ("baseline_categories", "final_categories"):
            c = r[which]
            title = "card" if which == "baseline_categories" else r["final_setting"]
            print(
                f"\nFalse positives, {title} (median val object area {c['median_gt_area']:.0f} px)"
            )
            print(f"{'category':<18} {'n':>4} {'tiny':>5} {'border':>6} {'scatt.':>6} "
                  f"{'area':>6} {'bestIoU':>7} {'score':>6} {'seed':>6}")  # fmt: skip
            for cat, e in c["fp"].items():
                print(
                    f"{cat:<18} {e['n']:>4} {e['tiny']:>5} {e['border']:>6} {e['scattered']:>6} "
                    + " ".join(
                        f"{e[k]:>{w}.{p}f}" if e[k] is not None else " " * w
                        for k, w, p in (
                            ("median_area", 6, 0),
                            ("median_best_iou", 7, 2),
                            ("median_score", 6, 3),
                            ("median_mean_seed", 6, 3),
                        )
                    )
                )
            print(f"False negatives, {title}")
            print(f"{'category':<18} {'n':>4} {'tiny':>5} {'border':>6} {'area':>6} "
                  f"{'bestIoU':>7} {'seed':>6}")  # fmt: skip
            for cat, e in c["fn"].items():
                print(
                    f"{cat:<18} {e['n']:>4} {e['tiny']:>5} {e['border']:>6} "
                    + " ".join(
                        f"{e[k]:>{w}.{p}f}" if e[k] is not None else " " * w
                        for k, w, p in (
                            ("median_area", 6, 0),
                            ("median_best_iou", 7, 2),
                            ("median_mean_seed", 6, 3),
                        )
                    )
                )
            tp = c["tp_reference"]
            if tp:
                print(
                    f"true positives: {tp['n']}, score p5/p25/p50 {tp['score_p5']:.3f}/"
                    f"{tp['score_p25']:.3f}/{tp['score_p50']:.3f}, mean seed p5/p25/p50 "
                    f"{tp['mean_seed_p5']:.3f}/{tp['mean_seed_p25']:.3f}/{tp['mean_seed_p50']:.3f}"
                )
            print(
                "images with the most FPs:",
                ", ".join(f"#{e['image']}: {e['fp']}" for e in c["fp_by_image"]),
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", choices=sorted(SHIPPED), default=list(SHIPPED))
    ap.add_argument("--cache", default="/tmp/fp_cache", help="network outputs cache folder")
    ap.add_argument("--data-root", default=None, help="default: $INSTEMBED_DATA or ../shared/data")
    ap.add_argument("--out", default=str(HERE / "results" / "fp_analysis.json"))
    ap.add_argument("--no-tune", action="store_true", help="skip the re-tuned settings")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(args.data_root) if args.data_root else data_root()
    t0 = time.perf_counter()
    result = {
        "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread",
        "split": "val (instembed.data.splits)",
        "models": {},
    }
    for ds in args.models:
        result["models"][ds] = run_model(ds, Path(args.cache), root, not args.no_tune, print)
    result["seconds"] = time.perf_counter() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float))
    print_tables(result)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

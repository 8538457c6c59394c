"""Test-time augmentation against plain inference for the shipped pretrained models, on the val
split each was validated on (``benchmarks/results/tta.json``, rendered into
``benchmarks/RESULTS.md`` by ``benchmarks/collect_results.py``).

    python benchmarks/tta.py [--models NAME ...] [--max-val N] [--out benchmarks/results/tta.json]

For every model the network runs over the val images twice, once plain and once with TTA (the 8
flips / rotations of :func:`instembed.engine.inference.tta_forward`, outputs mapped back and
averaged), on one torch thread; the CPU seconds of that loop (``time.process_time``) are
recorded per image. Both sets of outputs are then scored

* at the thresholds of the model card (the clustering the shipped model uses), and
* each tuned on one small grid around the card's thresholds (:func:`tuning_grid`), so that TTA
  is not judged at thresholds chosen for the plain outputs.

One JSON line per (model, mode) is written to ``--out``; lines of other models already there are
kept, those of a re-measured model are replaced.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PRETRAINED = REPO / "src" / "instembed" / "pretrained"
RESULTS = HERE / "results" / "tta.json"
MODELS = {"bbbc039-nuclei": "bbbc039", "bbbc010-worms": "bbbc010", "dsb2018-nuclei": "dsb2018"}
MODES = ("plain", "tta")
KEYS = ("AP_dsb@0.5", "AP_dsb@0.5:0.95", "AP", "FP_per_image@0.5", "FN_per_image@0.5")
GAIN = 0.005  # an AP_dsb@0.5 difference below this is read as no difference
COMMAND = "python benchmarks/tta.py [--models NAME ...]"

log = logging.getLogger("tta")


# --------------------------------------------------------------------------- measuring
@torch.no_grad()
def network_outputs(model, samples, mode: str) -> tuple[list, float]:
    """(outputs (batch 1, CPU float32) of ``model`` on each sample's whole image, CPU seconds
    per image of that loop: the network and the input / output conversions). ``mode`` "plain":
    one pass (:func:`train_pretrained.network_outputs`); "tta": the 8 symmetries averaged."""
    from instembed.engine.inference import tta_forward

    sys.path.insert(0, str(HERE))
    from train_pretrained import network_outputs as run_network

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    origin = torch.zeros(1, 2, dtype=torch.long)
    forward = (lambda x: tta_forward(model, x, origin)) if mode == "tta" else None
    c0 = time.process_time()
    outs = run_network(model, samples, forward)
    return outs, (time.process_time() - c0) / max(1, len(samples))


def _around(value: float, step: float) -> list[float]:
    """``value - step, value, value + step`` rounded to 4 decimals, kept inside (0, 1)."""
    vals = (round(value + d, 4) for d in (-step, 0.0, step))
    return sorted({v for v in vals if 0.0 < v < 1.0})


def tuning_grid(card_params: dict) -> dict[str, list]:
    """The grid both modes are tuned on: the card's ``fg_thresh`` +-0.1, its ``seed_thresh``
    +-0.025 (inside (0, 1)), ``prob_thresh`` 0.3 / 0.5 (and the card's own). Every other
    parameter (``overlap_thresh``, ``min_size`` ...) stays the card's."""
    grid = {}
    if "fg_thresh" in card_params:
        grid["fg_thresh"] = _around(float(card_params["fg_thresh"]), 0.1)
    if "seed_thresh" in card_params:
        grid["seed_thresh"] = _around(float(card_params["seed_thresh"]), 0.025)
    if "prob_thresh" in card_params:
        grid["prob_thresh"] = sorted({0.3, 0.5, float(card_params["prob_thresh"])})
    return grid


def summary(metrics: dict, n: int) -> dict:
    """The reported metrics (:data:`KEYS`) of an :func:`evaluate_outputs` dict over ``n`` images."""
    from instembed.engine.evaluation import headline

    row = headline(metrics, n)
    return {k: row[k] for k in KEYS}


def measure(name: str, data_root: Path, max_val: int | None = None) -> list[dict]:
    """The two result rows (plain, tta) of the shipped model ``name`` on its val split."""
    sys.path.insert(0, str(HERE))
    from instembed.engine.evaluation import evaluate_outputs
    from instembed.engine.predict import Predictor
    from instembed.engine.tune import tune_thresholds
    from train_pretrained import load_split

    dataset = MODELS[name]
    card = json.loads((PRETRAINED / f"{name}.json").read_text())
    pred = Predictor.from_spec(name)
    cluster = pred.cluster
    if cluster.params != card["cluster"]["params"]:
        log.warning(
            "%s: the checkpoint's clustering %s differs from the card's %s",
            name,
            cluster.params,
            card["cluster"]["params"],
        )
    cfg = pred.cfg
    cfg.data = dataclasses.replace(cfg.data, path=str(data_root / dataset))
    _, val = load_split(cfg, dataset)
    if max_val is not None:
        val = val[:max_val]
    grid = tuning_grid(cluster.params)
    network_outputs(pred.model, val[:1], "plain")  # warm-up (first-call allocations), untimed
    rows, seconds = [], {}
    for mode in MODES:
        outs, seconds[mode] = network_outputs(pred.model, val, mode)
        log.info("%s %s: network %.2f CPU s / image", name, mode, seconds[mode])
        at_card = summary(evaluate_outputs(outs, val, cluster), len(val))
        tuned = tune_thresholds(outs, val, cluster, grid=grid)
        rows.append(
            {
                "model": name,
                "dataset": dataset,
                "sha256": card["sha256"],
                "mode": mode,
                "n_val": len(val),
                "net_cpu_s_per_image": round(seconds[mode], 4),
                "card_params": {k: cluster.params.get(k) for k in grid},
                "card": at_card,
                "card_recorded_AP_dsb@0.5": card["val_metrics"]["AP_dsb@0.5"],
                "grid": grid,
                "tuned_params": tuned.params,
                "tuned": summary(tuned.metrics, len(val)),
            }
        )
    ratio = seconds["tta"] / seconds["plain"] if seconds["plain"] > 0 else None
    for r in rows:
        r["net_cpu_ratio_tta_over_plain"] = None if ratio is None else round(ratio, 3)
    plain = rows[0]["card"]["AP_dsb@0.5"]
    if max_val is None and abs(plain - card["val_metrics"]["AP_dsb@0.5"]) > 1e-6:
        log.warning(
            "%s: plain AP_dsb@0.5 %.4f at the card's thresholds, the card records %.4f",
            name,
            plain,
            card["val_metrics"]["AP_dsb@0.5"],
        )
    return rows


def read_rows(path: Path) -> list[dict]:
    """The result rows of a JSON-lines file (none when it is missing)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def merge(path: Path, new: list[dict]) -> list[dict]:
    """Write ``new`` to ``path``, keeping the rows there of models not in ``new``."""
    names = {r["model"] for r in new}
    rows = [r for r in read_rows(path) if r["model"] not in names] + new
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


# --------------------------------------------------------------------------- rendering
def _pair(p: dict, t: dict, key: str, digits: int) -> str:
    a, b = p.get(key), t.get(key)
    return " / ".join("-" if v is None else f"{v:.{digits}f}" for v in (a, b))


def _params(d: dict) -> str:
    short = {"fg_thresh": "fg", "seed_thresh": "seed", "prob_thresh": "prob"}
    return " ".join(f"{short.get(k, k)} {v:g}" for k, v in sorted(d.items()))


def reading(pairs: list[tuple[dict, dict]]) -> str:
    """One line that reads the table: where TTA moves AP_dsb@0.5 by more than :data:`GAIN`
    (at the card's thresholds or tuned), and what it costs in network time."""
    gains, losses, diffs = [], [], []
    for p, t in pairs:
        for where in ("card", "tuned"):
            d = t[where]["AP_dsb@0.5"] - p[where]["AP_dsb@0.5"]
            diffs.append(d)
            label = f"{p['model']} ({where} thresholds, {d:+.3f})"
            if d > GAIN:
                gains.append(label)
            elif d < -GAIN:
                losses.append(label)
    ratios = [
        t["net_cpu_s_per_image"] / p["net_cpu_s_per_image"]
        for p, t in pairs
        if p["net_cpu_s_per_image"] > 0
    ]
    span = sorted({f"{r:.1f}" for r in (min(ratios), max(ratios))}) if ratios else []
    cost = f" at {'-'.join(span)}x the network CPU time" if span else ""
    if gains:
        text = f"TTA gains more than {GAIN} AP_dsb@0.5 on {', '.join(gains)}{cost}"
    else:
        text = (
            f"TTA gains no more than {GAIN} AP_dsb@0.5 anywhere (differences "
            f"{min(diffs):+.3f} to {max(diffs):+.3f}){cost}"
        )
    if losses:
        text += f"; it loses more than {GAIN} on {', '.join(losses)}"
    edges = [e for p, t in pairs for e in (grid_edges(p), grid_edges(t)) if e]
    if edges:
        text += (
            f". Tuned thresholds on the edge of the grid ({'; '.join(edges)}): the best setting "
            "may lie outside it"
        )
    return "Reading: " + text + "."


def grid_edges(row: dict) -> str:
    """The tuned thresholds of ``row`` at the smallest or largest value of a grid axis of 3 or
    more values ("" when none, or no grid recorded). Two-value axes (``prob_thresh`` 0.3 / 0.5,
    an axis clipped at 0 or 1) are choices, not ranges, and are left out."""
    grid, tuned = row.get("grid") or {}, row.get("tuned_params") or {}
    hits = [
        f"{k} {v:g}"
        for k, v in sorted(tuned.items())
        if len(grid.get(k, ())) >= 3 and v in (min(grid[k]), max(grid[k]))
    ]
    return f"{row['model']} {row['mode']}: {', '.join(hits)}" if hits else ""


def render(rows: list[dict], pretrained: Path = PRETRAINED) -> list[str]:
    """The table of ``rows`` (a plain and a tta row per model) and its reading."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    from model_cards import same_model_shas

    by = {(r["model"], r["mode"]): r for r in rows}
    pairs = [
        (by[m, "plain"], by[m, "tta"])
        for m in sorted({r["model"] for r in rows})
        if (m, "plain") in by and (m, "tta") in by
    ]
    lines = [
        "| model | n val | network CPU s / image | TTA / plain | AP_dsb@0.5 | mean "
        "AP_dsb@0.5:0.95 | COCO AP | FP / image | FN / image | AP_dsb@0.5 tuned "
        "| thresholds tuned |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p, t in pairs:
        name = f"`{p['model']}`"
        card = pretrained / f"{p['model']}.json"
        if card.is_file() and p["sha256"] not in same_model_shas(json.loads(card.read_text())):
            name += " (measured on an earlier version)"
        sp, st = p["net_cpu_s_per_image"], t["net_cpu_s_per_image"]
        ratio = f"{st / sp:.1f}x" if sp > 0 else "-"
        cells = [
            name,
            str(p["n_val"]),
            f"{sp:.2f} / {st:.2f}",
            ratio,
            _pair(p["card"], t["card"], "AP_dsb@0.5", 3),
            _pair(p["card"], t["card"], "AP_dsb@0.5:0.95", 3),
            _pair(p["card"], t["card"], "AP", 3),
            _pair(p["card"], t["card"], "FP_per_image@0.5", 2),
            _pair(p["card"], t["card"], "FN_per_image@0.5", 2),
            _pair(p["tuned"], t["tuned"], "AP_dsb@0.5", 3),
            f"{_params(p['tuned_params'])} / {_params(t['tuned_params'])}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if not pairs:
        return ["no complete (plain, tta) pair of rows", ""]
    return lines + ["", reading(pairs), ""]


def section(results: Path, pretrained: Path = PRETRAINED) -> list[str]:
    """RESULTS.md lines from ``results/tta.json``."""
    lines = ["## Test-time augmentation (8 flips/rotations) on the val split", ""]
    rows = read_rows(results / "tta.json")
    if not rows:
        return lines + [f"not run: `{COMMAND}` writes `benchmarks/results/tta.json`", ""]
    return (
        lines
        + render(rows, pretrained)
        + [
            "Each cell: plain / TTA. Columns up to FN / image at the model card's thresholds; "
            "\"tuned\": each mode's best AP_dsb@0.5 on the same grid around the card's thresholds "
            "(fg +-0.1, seed +-0.025, prob 0.3/0.5; tuned and scored on the val images, so an upper "
            "bound for both). Network CPU seconds on one torch thread, clustering not included. "
            f"Measured by `{COMMAND}`.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(HERE))
    from train_pretrained import data_root, val_benchmark_parser

    ap = val_benchmark_parser(__doc__, MODELS, RESULTS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("instembed.engine.tune").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    root = Path(args.data_root) if args.data_root else data_root()
    new = []
    for name in args.models:
        rows = measure(name, root, args.max_val)
        for r in rows:
            print(
                json.dumps(
                    {k: r[k] for k in ("model", "mode", "net_cpu_s_per_image")}
                    | {"card": r["card"], "tuned": r["tuned"], "tuned_params": r["tuned_params"]}
                ),
                flush=True,
            )
        new += rows
    merge(Path(args.out), new)
    print("\n".join(render(new)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

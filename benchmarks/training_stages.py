"""Every training stage and re-tune tried on a shipped model, shipped or not: the ablation of
what moved its val metrics (``benchmarks/results/training_stages.json``, rendered into
``benchmarks/RESULTS.md`` by ``benchmarks/collect_results.py``).

A stage is a run folder of ``benchmarks/train_pretrained.py`` (its ``summary.json``: val metrics
after threshold tuning, steps, training time, the shipped model it started from). ``add``
records it beside the metrics of the model that was shipped when it was tried, so each row
reads "before -> after" on the same val split::

    python benchmarks/training_stages.py add --run runs/bbbc039-nuclei-3 \\
        --change "warm start, intensity gain 0.25-1.25"
    git show HEAD:src/instembed/pretrained/NAME.json > before.json   # a stage already shipped
    python benchmarks/training_stages.py add --run RUN --change "..." --shipped --before before.json
    python benchmarks/training_stages.py show

Runs that were not shipped are kept: a stage that lowered the val metrics is a result too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PRETRAINED = REPO / "src" / "instembed" / "pretrained"
RESULTS = HERE / "results" / "training_stages.json"
KEYS = ("AP_dsb@0.5", "AP_dsb@0.5:0.95", "AP", "FP_per_image@0.5", "FN_per_image@0.5")


def stage_entry(run: Path, change: str, shipped: bool, card: dict) -> dict:
    """One stage from a run folder's ``summary.json`` and the card of the model shipped before
    it (``card``: its ``<name>.json``)."""
    path = run / "summary.json"
    if not path.is_file():
        raise SystemExit(f"{path}: not found (run benchmarks/train_pretrained.py first)")
    s = json.loads(path.read_text())
    if s["name"] != card["name"]:
        raise SystemExit(f"{path} is a run of {s['name']!r}, not of {card['name']!r}")
    own = s["train_seconds"] - ((s.get("init") or {}).get("train_seconds") or 0.0)
    # a re-tune of the shipped weights (train_pretrained --retune) keeps their steps and time
    retune = s["steps"] == card.get("steps") and s["train_seconds"] == card.get("train_seconds")
    version = max((h["version"] for h in card.get("history") or []), default=None)
    return {
        "model": s["name"],
        "run": str(run),
        "change": change,
        "shipped": bool(shipped),
        "before": {
            "version": version,
            "sha256": card["sha256"],
            **{k: card["val_metrics"].get(k) for k in KEYS},
        },
        "after": {k: s["val_metrics"].get(k) for k in KEYS},
        "steps": 0 if retune else s["steps"],
        "train_seconds": 0.0 if retune else round(own, 1),
        "cluster": s["cluster"]["params"],
        "n_val": s["split"]["n_val"],
        "vs_shipped": s.get("vs_shipped"),  # paired bootstrap over the val images, if measured
    }


def add(entry: dict, path: Path = RESULTS) -> list[dict]:
    """Append ``entry`` (replacing an earlier entry of the same run folder)."""
    rows = json.loads(path.read_text()) if path.is_file() else []
    rows = [r for r in rows if r["run"] != entry["run"]] + [entry]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def section(results: Path) -> list[str]:
    """RESULTS.md lines: one table per model, stages in the order they were tried."""
    path = results / "training_stages.json"
    lines = ["## Training stages and re-tunes tried on the shipped models (val split)", ""]
    if not path.is_file():
        return lines + ["not run: `python benchmarks/training_stages.py add --run RUN ...`", ""]
    rows = json.loads(path.read_text())

    def num(v, digits=3):
        return "-" if v is None else f"{v:.{digits}f}"

    for model in sorted({r["model"] for r in rows}):
        lines += [
            f"**{model}**",
            "",
            "| change | steps | CPU-min | AP_dsb@0.5 | gain [95 % CI], P(no gain) | mean "
            "AP_dsb@0.5:0.95 | COCO AP | FP / image | FN / image | shipped |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in (r for r in rows if r["model"] == model):
            b, a = r["before"], r["after"]
            cells = [
                f"{num(b[k], d)} -> {num(a[k], d)}"
                for k, d in zip(KEYS, (3, 3, 3, 2, 2), strict=True)
            ]
            shipped = "yes" if r["shipped"] else "no"
            cells.insert(1, gain_cell(r.get("vs_shipped")))
            lines.append(
                f"| {r['change']} | {r['steps']} | {r['train_seconds'] / 60:.0f} | "
                + " | ".join(cells)
                + f" | {shipped} |"
            )
        lines.append("")
    return lines + [
        "Each row: the val metrics of the model shipped when the stage was tried -> the stage's "
        "(thresholds tuned on val for both). Steps and CPU-min are the stage's own (0 for a "
        "re-tune of the same weights). Gain: the stage's mean per-image AP_dsb@0.5 minus the "
        "shipped model's, with the 95 % interval and the share of resamples without a gain of a "
        "paired bootstrap over the val images (10 000 resamples; `instembed.metrics.bootstrap`; "
        "'-' for stages recorded before it was measured). Recorded by "
        "`python benchmarks/training_stages.py add`.",
        "",
    ]


def gain_cell(vs: dict | None) -> str:
    """``+0.016 [-0.004, +0.041], 0.12`` from a stage's ``vs_shipped``, or ``-``."""
    if not vs:
        return "-"
    low, high = vs["ci"]
    return f"{vs['diff']:+.3f} [{low:+.3f}, {high:+.3f}], {vs['p_not_better']:.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("add", help="record a run folder of train_pretrained.py")
    a.add_argument("--run", required=True, help="the run folder (holds summary.json)")
    a.add_argument("--change", required=True, help="what the stage changed, in a few words")
    a.add_argument("--shipped", action="store_true", help="the stage was shipped")
    a.add_argument(
        "--before",
        default=None,
        help="the card (<name>.json) of the model the stage started from (default: the one "
        "shipped now; give the earlier card when the stage was already shipped)",
    )
    sub.add_parser("show", help="print the RESULTS.md section")
    args = ap.parse_args(argv)
    if args.cmd == "add":
        run = Path(args.run)
        name = json.loads((run / "summary.json").read_text())["name"]
        card = json.loads(Path(args.before or PRETRAINED / f"{name}.json").read_text())
        add(stage_entry(run, args.change, args.shipped, card))
    print("\n".join(section(RESULTS.parent)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

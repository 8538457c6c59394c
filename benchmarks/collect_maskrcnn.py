"""The RESULTS.md section of ``benchmarks/repro_maskrcnn.py`` (called by
``benchmarks/collect_results.py``; kept apart so that module stays small).

Per data set it renders ``results/repro_maskrcnn_<dataset>.json`` (the full run) or, when only
that exists, ``results/repro_maskrcnn_<dataset>_quick.json`` (marked as a quick run): the four
methods' scores at the equal CPU budget, their training and inference speed, the 512x512 timing,
the machine load, and a reading line computed from the numbers (does semi-convolutional Mask
R-CNN beat Mask R-CNN at AP75 and AP50, as Novotny et al. 2018 found?). The earlier fixed-step
runs of the Mask R-CNN pair (``repro_maskrcnn.json``, ``repro_maskrcnn_steps600.json``) follow
in a table of their own.
"""

from __future__ import annotations

import json
from pathlib import Path

from collect_results import fmt as _fmt
from collect_results import table as _table

DATASETS = {
    "bbbc010": "BBBC010 worms (overlapping worms, scored against the per-worm mask stacks)",
    "bbbc039": "BBBC039 nuclei (label images)",
}
LABELS = {
    "maskrcnn": "Mask R-CNN",
    "semiconv_maskrcnn": "semi-conv Mask R-CNN",
    "semiconv_embedding": "semi-conv embeddings + mean-shift",
    "spatial_embedding": "spatial embeddings + seeded (U-Net)",
    "unet_spatial": "spatial embeddings + seeded (U-Net)",
}
FINDING = "semi-conv helps Mask R-CNN, most at high IoU"
LEGACY = ("repro_maskrcnn", "repro_maskrcnn_steps600")
TIE = 0.01  # AP differences below this are read as ties


def load_run(results: Path, dataset: str) -> dict | None:
    """The full run of ``dataset`` when there is one, else its quick run, else None."""
    for name in (f"repro_maskrcnn_{dataset}", f"repro_maskrcnn_{dataset}_quick"):
        path = Path(results) / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text())
    return None


def _compare(semi: float, base: float, key: str) -> str:
    d = round(semi - base, 3)
    verb = "beats" if d >= TIE else "trails" if d <= -TIE else "ties"
    within = f"; within {TIE}" if verb == "ties" and semi != base else ""
    return f"{verb} Mask R-CNN at {key} ({semi:.3f} vs {base:.3f}{within})"


def reading(rows: list[dict], where: str) -> str:
    """One sentence, computed from the rows (``method`` or ``model`` keys; AP50, AP75): does
    semi-conv Mask R-CNN beat Mask R-CNN at AP75 and at AP50, and does the paper's finding
    (a gain at both, larger at AP75) reproduce? Values are compared as the table shows them
    (3 decimals); a difference under :data:`TIE` counts as a tie (one seed: no noise estimate).
    ``where``: e.g. "on BBBC010 at 900 CPU-s per method"."""
    by = {x.get("method", x.get("model")): x for x in rows}
    base, semi = by.get("maskrcnn"), by.get("semiconv_maskrcnn")
    if base is None or semi is None:
        return f"Reading: this run lacks a Mask R-CNN row or a semi-conv Mask R-CNN row {where}."
    v = {k: (round(semi[k] or 0.0, 3), round(base[k] or 0.0, 3)) for k in ("AP50", "AP75")}
    d50, d75 = (round(v[k][0] - v[k][1], 3) for k in ("AP50", "AP75"))
    up50, up75 = d50 >= TIE, d75 >= TIE
    said = f"semi-conv Mask R-CNN {_compare(*v['AP75'], 'AP75')} and {_compare(*v['AP50'], 'AP50')}"
    gains = f"gain {d75:+.3f} at AP75 vs {d50:+.3f} at AP50"
    if max(max(p) for p in v.values()) < 0.01:
        verdict = (
            f"neither model reaches 0.01 at AP50 or AP75 {where}, so this run cannot test the "
            f"paper's finding ({FINDING})"
        )
    elif up50 and up75 and d75 > d50:
        verdict = f"the paper's finding ({FINDING}) reproduces {where} ({gains})"
    elif up50 and up75:
        verdict = (
            f"semi-conv helps at both thresholds but not most at high IoU ({gains}): the paper's "
            f"finding ({FINDING}) reproduces only in part {where}"
        )
    elif up50 or up75:
        verdict = (
            f"semi-conv helps at {'AP75' if up75 else 'AP50'} only: the paper's finding "
            f"({FINDING}) reproduces only in part {where}"
        )
    else:
        verdict = f"the paper's finding ({FINDING}) does **not** reproduce {where}"
    rule = f" (differences under {TIE} read as ties: one seed, no noise estimate)"
    return f"**Reading (computed from the numbers above{rule}):** {said}; {verdict}."


def _best(rows: list[dict], key: str) -> str:
    scored = [x for x in rows if x.get(key) is not None]
    if not scored:
        return "-"
    top = max(scored, key=lambda x: x[key])
    if round(top[key], 3) == 0:
        return "none above 0.000"
    return f"{LABELS.get(top['method'], top['method'])} ({top[key]:.3f})"


def _speed_table(speed: dict) -> list[str]:
    return _table(
        ["model", "params", "train step s", "inference images/s"],
        [
            [
                LABELS.get(k, k),
                f"{v['params']:,}",
                _fmt(v["train_step_s"], 2),
                _fmt(v["infer_images_per_s"], 2),
            ]
            for k, v in speed.items()
        ],
    )


def dataset_block(r: dict) -> list[str]:
    """The lines of one data set's run."""
    budget = r["budget_cpu_s"]
    quick = r["mode"] == "quick"
    title = DATASETS.get(r["dataset"], r["dataset"])
    lines = [
        f"**{title}**: {r['mode']} mode, {budget:g} CPU-s of training per method"
        + (" (**quick mode: CI-sized, far from converged, not a result**)" if quick else ""),
        "",
    ]
    rows = []
    for x in r["rows"]:
        inf = x["inference"]
        tuned = ", ".join(f"{k} {v}" for k, v in x["cluster_tuned"].items()) or "as configured"
        rows.append(
            [
                LABELS.get(x["method"], x["method"]),
                x["AP"],
                x["AP50"],
                x["AP75"],
                x["AP_dsb@0.5"],
                _fmt(x["FP_per_image@0.5"], 1),
                x["steps"],
                _fmt(x["train_cpu_s"], 0),
                _fmt(x["train_wall_s"], 0),
                _fmt(x["train_images_per_cpu_s"], 2),
                f"{inf['images_per_s']:.2f} ({inf['network_images_per_s']:.2f})",
                f"{x['postprocess']}: {tuned}",
            ]
        )
    lines += _table(
        ["method", "AP", "AP50", "AP75", "AP_dsb@0.5", "FP / image @0.5", "steps", "train CPU s",
         "train wall s", "train images / CPU-s", "inference images/s (network only)",
         "post-processing (tuned on val)"],
        rows,
    )  # fmt: skip
    speed = r.get("speed_512") or {}
    if speed:
        lines += ["", "Speed at 512² (batch 1, one thread, a crop of the first val image):", ""]
        lines += _speed_table(speed)
    late = [x["method"] for x in r["rows"] if x["stopped_by"] != "cpu budget"]
    stop = (
        f"the CPU budget stopped every run (step limit {r['step_limit']:,} not reached)"
        if not late
        else f"**not stopped by the budget: {', '.join(late)}** (see `stopped_by` in the JSON)"
    )
    odd = [x["method"] for x in r["rows"] if x.get("tuned_equals_end_to_end") is False]
    if odd:  # the end-to-end pass should score exactly what the tuning chose
        stop += f"; **tuning and end-to-end metrics differ for {', '.join(odd)}**"
    split = r["split"]
    loads = [(x["load_avg_start"], x["load_avg_end"]) for x in r["rows"]]
    configs = ", ".join(f"`{x['config']}`" for x in r["rows"])
    lines += [
        "",
        f"Script: `{r['script']}` ({r['threads']} torch thread(s), {r['seconds'] / 60:.0f} min in "
        f"all); configs: {configs} (resolved configs in "
        f"the JSON), trained from scratch, seed 0, {stop}; learning rate constant. Split: "
        f"{split['n_train']} train / {split['n_val']} val images, {split['n_scored']} scored "
        "(whole images); thresholds tuned on the scored val images with each family's grid "
        "(`instembed.engine.tune.GRIDS`; best AP_dsb@0.5), so every row is equally optimistic. "
        "COCO AP / AP50 / AP75 follow pycocotools (at most 100 detections per image, which caps "
        "recall on BBBC039 images with more nuclei; AP_dsb@0.5 has no cap); FP / image at IoU "
        "0.5. Inference images/s: whole val images with the tuned post-processing (in brackets "
        f"the network alone). Machine: {r['machine']}; load average (1 min) {r['load_avg_start'][0]}"
        f" at the start, {r['load_avg_end'][0]} at the end, "
        f"{min(a for a, _ in loads):.1f}-{max(max(p) for p in loads):.1f} around the training "
        "runs: wall-clock times and images/s are pessimistic under load, the CPU-s budget is not.",
        "",
        reading(r["rows"], f"on {r['dataset'].upper()} at {budget:g} CPU-s per method (one seed)")
        + f" Highest AP_dsb@0.5: {_best(r['rows'], 'AP_dsb@0.5')}; highest AP75: "
        f"{_best(r['rows'], 'AP75')}.",
        "",
    ]
    return lines


def legacy_block(results: Path, show_speed: bool) -> list[str]:
    """The earlier fixed-step runs of the Mask R-CNN pair on BBBC010 (if their JSONs exist)."""
    runs = [
        json.loads(p.read_text())
        for p in (Path(results) / f"{n}.json" for n in LEGACY)
        if p.is_file()
    ]
    if not runs:
        return []
    rows = [x for r in runs for x in r["rows"]]
    lines = ["**Earlier fixed-step runs** (BBBC010, Mask R-CNN pair only, before the budget "
             "protocol; same step count for both models):", ""]  # fmt: skip
    lines += _table(
        ["model", "steps", "AP", "AP50", "AP75", "AP_dsb@0.5", "train s", "val images"],
        [
            [LABELS.get(x["model"], x["model"]), x["steps"], x["AP"], x["AP50"], x["AP75"],
             x["AP_dsb@0.5"], _fmt(x.get("train_s"), 0), x.get("n_val_images")]
            for x in rows
        ],
    )  # fmt: skip
    if show_speed and runs[0].get("speed_512"):
        lines += ["", "Speed at 512² (batch 1, one thread; worm configs):", ""]
        lines += _speed_table(runs[0]["speed_512"])
    lines += [""]
    for r in runs:
        steps = r["rows"][0]["steps"]
        lines.append(f"- `{r['script']}`: " + reading(r["rows"], f"at {steps} steps"))
    return lines + [""]


def section(results: Path) -> list[str]:
    lines = [
        "## Proposal-based vs embeddings at an equal CPU budget: Mask R-CNN, semi-conv Mask R-CNN, "
        "semi-conv and spatial embeddings (Novotny et al. 2018, BBBC010 setting; BBBC039)",
        "",
    ]
    runs = {d: load_run(results, d) for d in DATASETS}
    for dataset, r in runs.items():
        if r is None:
            lines += [
                f"**{DATASETS[dataset]}**: not run: `python benchmarks/repro_maskrcnn.py "
                f"--datasets {dataset}` (full, 900 CPU-s per method; `--quick`: 60 CPU-s)",
                "",
            ]
        else:
            lines += dataset_block(r)
    new_speed = any(r and r.get("speed_512") for r in runs.values())
    return lines + legacy_block(results, show_speed=not new_speed)

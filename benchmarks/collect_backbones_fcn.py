"""The RESULTS.md sections of ``benchmarks/repro_backbones.py`` and
``benchmarks/repro_instance_fcn.py`` (called by ``benchmarks/collect_results.py``; kept apart
so that module stays small).

Backbones: ``results/repro_backbones_full.json`` (full mode: equal CPU-second budget per run),
``repro_backbones.json`` (quick), and the Cityscapes runs ``repro_backbones_cityscapes_full.json``
/ ``repro_backbones_cityscapes.json``, each that exists, in that order. Instance FCN:
``repro_instance_fcn_full.json`` then ``repro_instance_fcn.json``. Full-mode tables carry the
steps each run reached and its training CPU seconds; the notes give the budget, the load average
at start and end and the CPU-minutes of the whole run.
"""

from __future__ import annotations

from pathlib import Path

from collect_results import fmt, load, table

BACKBONE_RUNS = (
    "repro_backbones_full",
    "repro_backbones",
    "repro_backbones_cityscapes_full",
    "repro_backbones_cityscapes",
)
THING_NAMES = {"street": "car, person, sign", "cityscapes": "person ... bicycle (trainIds 11-18)"}


def section_backbones(results: Path) -> list[str]:
    runs = [r for r in (load(results, n) for n in BACKBONE_RUNS) if r]
    where = "the synthetic street scenes"
    if any(r.get("dataset") == "cityscapes" for r in runs):
        where += " and Cityscapes"
    lines = [f"## Backbones on {where}: semantic mIoU / speed, panoptic PQ", ""]
    if not runs:
        return lines + ["not run: `python benchmarks/repro_backbones.py --quick --threads 1`", ""]
    for r in runs:
        lines += backbones_run(r)
    return lines


def budget_note(r: dict, steps: int, budget: float | None) -> str:
    """How long each run trained, and how busy the machine was (full-mode JSONs)."""
    if not budget:
        return f" Every run trained for {steps} steps."
    text = (
        f" Every run trained for **{budget:g} CPU seconds** (the training process's CPU time, "
        f"one torch thread), steps capped at {steps} (also the poly LR schedule's length, so "
        "runs stopped by the budget have not decayed their LR to 0): equal compute, not equal "
        "steps; `steps` is how far each run got. **Not converged.**"
    )
    if r.get("loadavg_start"):
        text += f" Load average at start {r['loadavg_start'][0]}"
        if r.get("loadavg_end"):
            text += f", at end {r['loadavg_end'][0]}"
        text += "."
    if r.get("cpu_s_total") is not None:
        text += f" {r['cpu_s_total'] / 60:.1f} CPU-minutes all in."
    return text


def backbones_run(r: dict) -> list[str]:
    """The semantic (and panoptic) tables of one ``repro_backbones*.json``."""
    s = r["settings"]
    dataset = r.get("dataset", "street")
    budget = r.get("budget_cpu_per_run")
    sem = r.get("semantic_rows", [])
    h, w = s["speed_size"]
    things = r.get("thing_classes", [4, 5, 6])
    k = r.get("num_classes", 7)

    def thing_iou(x: dict) -> float | None:  # mean IoU of the thing classes
        ious = [x.get("IoU_per_class", {}).get(str(c)) for c in things]
        ious = [v for v in ious if v is not None]
        return float(sum(ious) / len(ious)) if ious else None

    def train_cell(x: dict) -> str:
        return fmt(x.get("cpu_s") if budget else x["train_s"], 0)

    train_col = "train CPU s" if budget else "train s"
    per = f"{budget:g} CPU s of training per run" if budget else f"{s['steps']} steps per run"
    lines = [f"**{dataset}, {r['mode']} mode** ({per})", ""]
    rows = [
        [
            x["backbone"],
            f"{x['params']:,}",
            x["mIoU"],
            thing_iou(x),
            fmt(x["images_per_s"], 2),
            fmt(x["peak_mb"], 1),
            x["steps"],
            train_cell(x),
        ]
        for x in sem
    ]
    lines += table(
        [
            "backbone",
            "parameters",
            "val mIoU",
            "IoU things",
            f"images/s @ {h}x{w}",
            "peak MB",
            "steps",
            train_col,
        ],
        rows,
    )
    pan = r.get("panoptic_rows", [])
    keys = ["PQ", "PQ_th", "PQ_st", "SQ", "RQ", "mIoU"]
    if pan:
        equal = "equal CPU-second budget" if budget else "equal steps"
        lines += ["", f"Panoptic-DeepLab (semantic + center + offset heads), {equal}:", ""]
        lines += table(
            ["backbone", *keys, "steps", train_col],
            [[x["backbone"], *[x.get(q) for q in keys], x["steps"], train_cell(x)] for x in pan],
        )
    o = (sem or pan or [{}])[0].get("config", {}).get("optim", {})
    optim = f"{o.get('optimizer', '?')}, lr {o.get('lr', '?')}, {o.get('schedule', '?')} schedule"
    converged = (
        " **Quick mode: CI-sized, far from converged** -- the numbers show that every backbone "
        "trains on this data, not how the backbones rank."
        if r["mode"] == "quick"
        else ""
    )
    weak = [x["backbone"] for x in pan if r["mode"] == "quick" and (x.get("mIoU") or 0) < 0.05]
    if weak:
        lines += [
            "",
            f"{', '.join(weak)} (panoptic, quick mode): the semantic head of this model still "
            "labels almost every pixel a thing class (a check by hand, not in the JSON: the "
            "100-step erfnet model predicts car / person / sign on 99 % of the val pixels, "
            "which are 92 % stuff), so stuff PQ and mIoU are near 0: the center/offset loss's "
            "semantic term is a bootstrapped CE over the hardest 20 % of pixels with small-"
            "instance weights, and 100 steps do not reach the stuff classes. An undertrained "
            "artefact, not a finding about the backbone.",
        ]
    if dataset == "cityscapes":
        d = r.get("data", {})
        data = (
            f"Data: a Cityscapes copy (gtFine; `{d.get('path', '?')}`) downscaled by "
            f"{d.get('scale', '?')} (linear image, nearest labels), {s['n_train']} train / "
            f"{s['n_val']} val images of {s['size'][0]}x{s['size'][1]}, evenly spaced through the "
            f"sorted file lists; labelIds -> the 19 trainIds, other labelIds void (255)"
        )
    else:
        data = (
            f"Data: `make_samples('street', ...)`, {s['n_train']} training / {s['n_val']} val "
            f"images of {s['size'][0]}x{s['size'][1]}"
        )
    lines += [
        "",
        f"Script: `{r['script']}` ({r['mode']} mode, {s['threads']} thread(s)"
        + (", **incomplete run**" if not r.get("complete") else "")
        + f"). {data}; {s['crop'][0]}x{s['crop'][1]} crops, batch {s['batch_size']}, "
        f"horizontal flips, seed {s['seed']}; the same data, seed, optimiser ({optim}) and "
        "training budget for every backbone (default parameters, from scratch)."
        + budget_note(r, s["steps"], budget)
        + f" Semantic table: heads `{{semantic: {k}}}`, loss `semantic_ce`; mIoU over the {k} "
        "classes on the non-void pixels of whole val images (IoU things: mean IoU of "
        f"{THING_NAMES.get(dataset, 'the thing classes')}); images/s and peak MB: batch-1 "
        "inference (network + argmax), a fresh process per backbone."
        + (
            " Panoptic table: `configs/street_center_offset.yaml` with its backbone replaced "
            "(erfnet is its own), PQ with stuff classes road, sidewalk, building, sky, things "
            "car, person, sign."
            if pan
            else ""
        )
        + " Resolved configs and per-class IoU in the JSON."
        + converged,
        "",
    ]
    return lines


def section_instance_fcn(results: Path) -> list[str]:
    lines = ["## Instance-sensitive FCN vs spatial-centre ordering vs semi-conv embeddings", ""]
    names = ("repro_instance_fcn_full", "repro_instance_fcn")
    runs = [r for r in (load(results, n) for n in names) if r]
    if not runs:
        return lines + ["not run: `python benchmarks/repro_instance_fcn.py --quick`", ""]
    for r in runs:
        lines += instance_fcn_run(r)
    return lines


def instance_fcn_run(r: dict) -> list[str]:
    """The table of one ``repro_instance_fcn*.json`` (full mode: steps reached, CPU seconds)."""
    p = r.get("protocol", {})
    budget = p.get("budget_cpu")
    trained = r.get("runs", {})
    rows = []
    for data, methods in r["metrics"].items():
        for method, m in methods.items():
            run = trained.get(data, {}).get(method, {})
            row = [data, method, m.get("AP_dsb@0.5"), m.get("AP"), m.get("AP50"), m.get("AP75")]
            rows.append(row + ([run.get("steps"), fmt(run.get("cpu_s"), 0)] if budget else []))
    extra = ["steps", "train CPU s"] if budget else []
    if isinstance(budget, dict):
        per = ", ".join(f"{d} {b:g}" for d, b in budget.items() if d in r["metrics"])
        per = f"CPU s of training per run: {per}"
    elif budget:
        per = f"{budget:g} CPU s of training per run"
    else:
        per = f"{p.get('steps', '?')} steps per run"
    lines = [f"**{r['mode']} mode** ({per})", ""]
    lines += table(["data", "method", "AP_dsb@0.5", "AP", "AP50", "AP75", *extra], rows)
    note = ""
    if budget:
        note = (
            " Every run of a data set trained for the same CPU-second budget (the training "
            f"process's CPU time, one torch thread), steps capped at {p.get('steps')} (also the "
            "poly LR schedule's length); `steps` is how far each run got. **Not converged.**"
        )
        if r.get("loadavg_start"):
            note += (
                f" Load average at start {r['loadavg_start'][0]}, at end "
                f"{r.get('loadavg_end', ['?'])[0]}."
            )
        if r.get("cpu_s_total") is not None:
            note += f" {r['cpu_s_total'] / 60:.1f} CPU-minutes all in."
    lines += [
        "",
        f"Script: `{r['script']}` ({r['mode']}); semi-conv clusters with k-means given the true "
        "object count (the coloring-dilemma protocol), the other two get no count; "
        "`ordering/components` re-scores every connected blob as an instance (a diagnostic, not "
        "the method)." + note,
        "",
    ]
    return lines

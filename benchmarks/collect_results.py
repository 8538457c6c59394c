"""Collect the JSON results of the reproduction benchmarks into ``benchmarks/RESULTS.md``.

    python benchmarks/collect_results.py [--results benchmarks/results] [--out benchmarks/RESULTS.md]

Reads ``results/repro_*.json`` (written by ``benchmarks/repro_*.py``) and the model cards
``src/instembed/pretrained/*.json`` (written by ``benchmarks/train_pretrained.py``); every table
names the script (with its mode) and the config that produced its numbers. Missing results are
listed as "not run" with the command that produces them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PRETRAINED = REPO / "src" / "instembed" / "pretrained"


def fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return out


def load(results: Path, name: str) -> dict | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def section_pretrained() -> list[str]:
    lines = ["## Pretrained models (val split of `instembed.data.splits`)", ""]
    cards = sorted(PRETRAINED.glob("*.json"))
    if not cards:
        return lines + ["not built yet: `python benchmarks/train_pretrained.py ... --ship`", ""]
    rows = []
    for c in cards:
        info = json.loads(c.read_text())
        m = info["val_metrics"]
        rows.append(
            [
                f"`{info['name']}`",
                f"{info['split']['n_train']}/{info['split']['n_val']}",
                m["AP_dsb@0.5"],
                (info.get("val_auto_scale") or {}).get("AP_dsb@0.5", "-"),
                m["AP"],
                m["SBD"],
                fmt(m["absDiC"], 2),
                f"{info['init']['steps']} + {info['steps']}" if info.get("init") else info["steps"],
                f"{info['train_seconds'] / 60:.0f} min",
                f"`configs/pretrained/{info['name']}.yaml`",
            ]
        )
    lines += table(
        [
            "model",
            "train/val",
            "AP_dsb@0.5",
            "AP_dsb@0.5, --scale auto",
            "COCO AP",
            "SBD",
            "abs DiC",
            "steps",
            "training",
            "config",
        ],
        rows,
    )
    lines += [
        "",
        "Script: `benchmarks/train_pretrained.py CONFIG --name NAME --dataset DATASET --ship` (model cards: "
        "`src/instembed/pretrained/<name>.md`; `a + b` steps: two stages, the second a warm start "
        "from the first's weights, commands in the config's header; training time covers both). "
        "Clustering thresholds tuned on the same val images at scale 1 (`--scale auto`, the "
        "default of predict: `instembed.data.sizes`) "
        "(the val numbers are therefore slightly optimistic). Literature, other splits and test sets: "
        "EmbedSeg AP_dsb@0.5 = 0.966 on BBBC010 (50/50 split), 0.887 on DSB2018.",
        "",
    ]
    return lines


def section_coloring(results: Path) -> list[str]:
    lines = ["## Coloring dilemma (Novotny et al. 2018, Fig. 3)", ""]
    r = load(results, "repro_coloring")
    if r is None:
        return lines + ["not run: `python benchmarks/repro_coloring.py --quick`", ""]
    rows = [[k, m["ARI"], m["AP"], m["AP50"]] for k, m in r["metrics"].items()]
    lines += table(["embedding", "ARI (fg pixels)", "COCO AP", "AP50"], rows)
    p = r["protocol"]
    lines += [
        "",
        f"Script: `{r['script']}` ({r['seconds']:.0f} s, {r['threads']} thread(s)); config: "
        "`instembed.engine.demo.demo_config` (stored in the JSON), "
        f"{p['steps']} steps per model, {p['n_test']} unseen {p['test_size'][0]}x{p['test_size'][1]} "
        f"grids, {p['clustering']}.",
        "",
        f"![segmentation](results/{r['figures'][0]}) ![embedding space](results/{r['figures'][1]})",
        "",
    ]
    return lines


METHOD_NOTES = {
    "worms": "Every method's clustering thresholds are tuned on the same val wells (grids in "
    "`instembed.engine.tune.GRIDS`, choices in the last column and the JSON). Novotny et al.'s "
    "finding reproduces: the convolutional (discriminative) embedding cannot separate identical-"
    "looking worms (AP_dsb@0.5 {disc}), the semi-convolutional one can ({semi}). At this budget "
    "(192 px crops) the spatial-embedding recipe is behind ({spatial}): 192 px crops cut many "
    "worms, and such a model leaves worm ends unassigned (seen on the val wells); with a second "
    "stage at 256 px crops "
    "(1400 + 2800 steps) the shipped `bbbc010-worms` reaches 0.704.",
    "nuclei": "Every method's clustering thresholds are tuned on the same val images (grids in "
    "`instembed.engine.tune.GRIDS`, choices in the last column and the JSON). The convolutional "
    "discriminative embedding (De Brabandere et al.) fails on whole images: trained on 128 px "
    "crops holding about ten nuclei, its translation-invariant embedding does not keep the ~100 "
    "nuclei of a whole image apart (a check by hand, not in the JSON: on the first 6 BBBC039 val "
    "images the 1200-step model's mean-shift clusters at bandwidth 0.5 each hold >= 10 pixels of "
    "7.3 nuclei on average, 220 clusters for 615 nuclei), the coloring dilemma of Novotny et al. "
    "on real data. Adding pixel coordinates (semi-convolutional) removes it; spatial embeddings "
    "with learned bandwidth and seed maps (Neven et al.) and center/offset grouping "
    "(Panoptic-DeepLab) are the strongest.",
}


def section_methods(results: Path, task: str, dataset: str, title: str) -> list[str]:
    lines = [f"## {title}", ""]
    r = load(results, f"repro_{task}_{dataset}")
    if r is None:
        return lines + [
            f"not run: `python benchmarks/repro_methods.py --task {task} --dataset {dataset} --quick`",
            "",
        ]
    keys = ["AP_dsb@0.5", "AP", "AP50", "AP75", "SBD", "absDiC", "PQ"]
    rows = [
        [
            x["method"],
            *[x[k] for k in keys],
            x["steps"],
            x["n_val_images"],
            ", ".join(f"{k} {v}" for k, v in x.get("cluster_tuned", {}).items()) or "as configured",
        ]
        for x in r["rows"]
    ]
    lines += table(["method", *keys, "steps", "val images", "clustering (tuned on val)"], rows)
    lines += [
        "",
        f"Script: `{r['script']}` ({r['mode']} mode, {r['threads']} thread(s); training seconds "
        f"per method in the JSON, `train_s`); base config `{r['base_config']}` with the per-method sections of "
        "`benchmarks/repro_methods.py` (full resolved configs in the JSON).",
        "",
    ]
    if dataset == "dsb2018" and r["rows"][0]["steps"] < 1200:
        lines += [
            f"DSB2018 at {r['rows'][0]['steps']} steps per method (not the full mode's 1200; "
            "session time). The semi-conv model's semantic head still calls almost every pixel "
            "background at this budget (a check by hand, not in the JSON: 0.0-0.4 % predicted "
            "foreground against 1.3-25.5 % true on the first 5 val images), so its row is an "
            "undertrained-foreground artefact, not a finding about semi-convolutional embeddings. "
            "Center/offset also barely scores at this budget, even at the grid's lowest centre "
            "threshold (0.05); only the spatial-embedding recipe learns within 400 steps here. The "
            "BBBC039 table above is the full-mode comparison.",
            "",
        ]
    ap = {x["method"]: x["AP_dsb@0.5"] for x in r["rows"]}
    if task in METHOD_NOTES and "cluster_tuned" in r["rows"][0] and dataset != "dsb2018":
        lines += [
            METHOD_NOTES[task].format(
                disc=fmt(ap.get("discriminative+meanshift"), 3),
                semi=fmt(ap.get("semiconv+meanshift"), 3),
                spatial=fmt(ap.get("spatial+seeded"), 3),
            ),
            "",
        ]
    return lines


def section_clustering(results: Path) -> list[str]:
    lines = ["## Clustering ablation (De Brabandere et al. 2017, Table 2 analogue)", ""]
    r = load(results, "repro_clustering")
    if r is None:
        return lines + ["not run: `python benchmarks/repro_clustering.py --quick`", ""]
    keys = ["AP_dsb@0.5", "AP", "SBD", "absDiC"]
    rows = [
        [
            x["model"],
            x["clustering"],
            x["foreground"],
            *[x[k] for k in keys],
            x["cluster_s_per_image"],
        ]
        for x in r["rows"]
    ]
    lines += table(["model", "clustering", "foreground", *keys, "s / image"], rows)
    lines += [
        "",
        f"Script: `{r['script']}` ({r['mode']} mode); models: the shipped pretrained models and "
        "their configs; mean-shift bandwidth / threshold radius = 1.18 x median predicted sigma.",
        "",
    ]
    return lines


def section_speed(results: Path) -> list[str]:
    lines = ["## Speed / accuracy by backbone (De Brabandere et al. 2017, Table 3 analogue)", ""]
    r = load(results, "repro_speed")
    if r is None:
        return lines + ["not run: `python benchmarks/repro_speed.py --quick`", ""]
    rows = [
        [
            x["backbone"],
            x["params"],
            f"{x['size']}x{x['size']}",
            x["images_per_s"],
            x["peak_mb"],
            x.get("AP_dsb@0.5"),
        ]
        for x in r["rows"]
    ]
    lines += table(["backbone", "parameters", "input", "images/s", "peak MB", "AP_dsb@0.5"], rows)
    lines += [
        "",
        f"Script: `{r['script']}` ({r['threads']} thread(s)). {r.get('note', '')} The AP column is "
        "the val AP_dsb@0.5 of that trained model on whole BBBC039 images, the same for every "
        "timing size. ENet-class vs ERFNet vs U-Net speed ratios are printed by the script.",
        "",
    ]
    return lines


def section_backbones(results: Path) -> list[str]:
    """benchmarks/repro_backbones.py's section: rendered by benchmarks/collect_backbones_fcn.py."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    from collect_backbones_fcn import section_backbones as section

    return section(results)


def section_dask(results: Path) -> list[str]:
    lines = ["## Huge images on Dask: block-wise to zarr, memory vs image size", ""]
    path = results / "dask_blockwise.json"
    if not path.exists():
        return lines + ["not run: `python benchmarks/dask_blockwise.py --quick`", ""]
    recs = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    summary = next((x["summary"] for x in recs if "summary" in x), {})
    rows = [
        [
            f"{x['side']}²", x["workers"], x["blocks"], x["seconds"], x["driver_peak_mb"],
            x["worker_peak_mb"], x["instances"], x.get("recall_ratio"),
        ]
        for x in recs
        if "side" in x
    ]  # fmt: skip
    lines += table(
        ["image", "workers", "blocks", "seconds", "driver peak MB", "worker peak MB", "objects",
         "recall ratio"],
        rows,
    )  # fmt: skip
    speed = summary.get("speedup_1_to_2_workers", {})
    lines += [
        "",
        f"Script: `{summary.get('script', 'benchmarks/dask_blockwise.py')}` "
        f"({summary.get('mode', '?')} mode; {summary.get('block', '?')} px blocks, halo "
        f"{summary.get('halo', '?')}, model {summary.get('model', '?')}): mosaics of one BBBC039 "
        "image written block by block into a zarr label array on a local Dask cluster. 1 -> 2 "
        "workers speed-up: "
        + (", ".join(f"{k} px {v}x" for k, v in speed.items()) or "not measured")
        + f"; load average {summary.get('load_average', '?')} on {summary.get('cpu_count', '?')} "
        "cores.",
        "",
    ]
    if summary.get("note"):
        lines += [summary["note"], ""]
    return lines


def section_blockwise(results: Path) -> list[str]:
    lines = ["## Large images: block-wise vs whole-image segmentation", ""]
    r = load(results, "blockwise_memory")
    if r is None:
        return lines + ["not run: `python benchmarks/blockwise_memory.py --quick`", ""]
    rows = [
        [
            f"{x['side']}²",
            x["mode"],
            x.get("seconds"),
            x.get("peak_mb"),
            x.get("objects_in_full_copies"),
            x.get("expected_in_full_copies"),
            x.get("recall_ratio"),
        ]
        for x in r["rows"]
        if "error" not in x
    ]
    lines += table(
        ["image", "mode", "seconds", "peak MB", "objects", "expected", "recall ratio"], rows
    )
    lines += [
        "",
        f"Script: `{r['script']}`{' --quick' if r.get('quick') else ''}: mosaics of one BBBC039 "
        "image segmented by `bbbc039-nuclei`, block by block (512 px blocks) and, where it fits, "
        "as one image (the behaviour before blocks); peak MB is what segmentation allocates "
        "(process high-water mark minus the RSS before it); expected = full copies x the "
        "objects found in one copy alone.",
        "",
    ]
    return lines


def section_maskrcnn(results: Path) -> list[str]:
    """benchmarks/repro_maskrcnn.py's section: rendered by benchmarks/collect_maskrcnn.py."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    from collect_maskrcnn import section

    return section(results)


def section_recurrent(results: Path) -> list[str]:
    lines = ["## Recurrent attention vs embeddings: CVPPP A1 protocol on synthetic rosettes", ""]
    runs = [r for r in (load(results, n) for n in ("repro_recurrent_full", "repro_recurrent")) if r]
    if not runs:
        return lines + ["not run: `python benchmarks/repro_recurrent.py --quick`", ""]
    for r in runs:
        cpu = "budget_clock" in r
        rows = [
            [
                x["method"], x["SBD"], x["absDiC"], x["AP"], x["train_steps"],
                x.get("train_cpu_s", x["train_s"]), x["s_per_image"],
            ]
            for x in r["rows"]
        ]  # fmt: skip
        unit = "CPU s" if cpu else "s"
        lines += [
            f"**{r['mode']} mode** ({r['budget_s_per_method']} {unit} of training per method)",
            "",
        ]
        lines += table(
            ["method", "SBD", "\\|DiC\\|", "AP", "steps", f"train {unit}", "s / image"], rows
        )
        lines += [
            "",
            f"Script: `{r['script']}`; one torch thread; {r['rows'][0]['n_val_images']} validation "
            "rosettes" + ("; budget in CPU seconds of the training process" if cpu else "") + ".",
            "",
        ]
    return lines


def section_instance_fcn(results: Path) -> list[str]:
    """benchmarks/repro_instance_fcn.py's section: rendered by benchmarks/collect_backbones_fcn.py."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    from collect_backbones_fcn import section_instance_fcn as section

    return section(results)


def section_leaves(results: Path) -> list[str]:
    lines = ["## Leaves: CVPPP A1 protocol (De Brabandere et al. 2017)", ""]
    r = load(results, "repro_leaves")
    if r is None:
        return lines + ["not run: `python benchmarks/repro_leaves.py --quick`", ""]
    rows = [[x["foreground"], x["SBD"], fmt(x["absDiC"], 2), x["AP"]] for x in r["rows"]]
    lines += table(["foreground", "SBD", "abs DiC", "COCO AP"], rows)
    lines += [
        "",
        f"Data: {r['data']}, {r['rows'][0]['n_val_images']} val images; {r['steps']} steps. "
        f"Script: `{r['script']}`; config `{r['base_config']}` (resolved config in the JSON). "
        "With a copy of CVPPP A1: `--cvppp PATH`. Reference: SBD 84.2, |DiC| 1.0 on the CVPPP A1 "
        "test set (De Brabandere et al.; other data).",
        "",
    ]
    return lines


def section_false_positives(results: Path) -> list[str]:
    """Where the shipped models' false positives come from (``benchmarks/fp_analysis.py``):
    the post-processing ablation on the val split and the false positives by category."""
    r = load(results, "fp_analysis")
    lines = ["## False positives of the shipped models (val split)", ""]
    if r is None:
        return lines + ["not run: `python benchmarks/fp_analysis.py`", ""]
    for m in r["models"].values():
        lines += [
            f"**{m['model']}** ({m['n_images']} val images; the card's clustering first):",
            "",
        ]
        lines += table(
            ["setting", "AP_dsb@0.5", "mean AP_dsb@0.5:0.95", "TP", "FP", "FN", "FP / image"],
            [
                [
                    x["setting"],
                    x["AP_dsb@0.5"],
                    x["AP_dsb@0.5:0.95"],
                    x["TP"],
                    x["FP"],
                    x["FN"],
                    fmt(x["FP_per_image"], 2),
                ]
                for x in m["ablation"]
            ],
        )
        for which, title in (("baseline_categories", "card"), ("final_categories", "final")):
            c = m[which]
            cats = ", ".join(f"{k} {e['n']}" for k, e in c["fp"].items() if e["n"])
            worst = ", ".join(f"#{e['image']}: {e['fp']}" for e in c["fp_by_image"][:3])
            lines += [
                "",
                f"False positives, {title} setting: {cats}; images with the most: {worst}.",
            ]
        lines.append("")
    lines += [
        "Script: `python benchmarks/fp_analysis.py` (one thread; network outputs cached; "
        "categories defined in its `fp_category` / `fn_category`). `connected`: each instance "
        "keeps its main 8-connected piece of foreground; `retuned`: thresholds re-tuned on the "
        "val split with the current grid (seed threshold up to 0.9).",
        "",
    ]
    return lines


def section_peers_trained(results: Path) -> list[str]:
    """Peers trained beside instembed (``benchmarks/peer_*.py``): every
    ``results/peer_<dataset>.json``, both rows (instembed's shipped model and the peer)."""
    lines = ["## Peers trained beside instembed", ""]
    files = sorted(p for p in results.glob("peer_*.json") if not p.stem.endswith("_smoke"))
    if not files:
        return lines + [
            "not run: `/work/peer_venv/bin/python benchmarks/peer_stardist.py --dataset bbbc039` "
            "(peer venv: see the script's docstring)",
            "",
        ]
    for path in files:
        r = json.loads(path.read_text())
        split = r["split"]
        lines += [
            f"**{r['dataset']}, {r['rows'][-1]['method']}**: trained on the {split['n_train']} training images of the "
            f"recorded split, scored on {split['n_scored']} of its {split['n_val']} val images "
            f"(whole images, one thread){' - a SMOKE TEST, not a result' if r.get('smoke_test') else ''}.",
            "",
        ]
        rows = [
            [
                x["method"],
                x["AP_dsb@0.5"],
                x["AP_dsb@0.5:0.95"],
                x["AP"],
                fmt(x["FP_per_image@0.5"], 2),
                fmt(x["s_per_image"], 2),
                f"{x['train_seconds'] / 60:.1f} min",
                x["steps"],
                f"{x['batch']} x {x['patch'][0]}x{x['patch'][1]}" if x.get("patch") else x["batch"],
            ]
            for x in r["rows"]
        ]
        lines += table(
            [
                "method",
                "AP_dsb@0.5",
                "mean AP_dsb@0.5:0.95",
                "COCO AP",
                "FP / image @0.5",
                "s / image",
                "training",
                "steps",
                "batch x patch",
            ],
            rows,
        )
        peer = r.get("stardist") or r.get("cellpose") or {}
        thresholds = ", ".join(f"{k} {v:.3g}" for k, v in (peer.get("thresholds") or {}).items())
        if "stardist" in r:
            how = "a Keras callback stops it"
            thr = f"StarDist's thresholds tuned on the val split ({thresholds}), "
            thr += "as the shipped model's were"
        else:
            how = "checked before every optimiser step"
            thr = f"Cellpose's default thresholds ({thresholds}; it has no tuner)"
        cpu = (
            f"; {peer['train_cpu_seconds'] / 60:.1f} CPU-min in "
            f"{peer['train_seconds'] / 60:.1f} min wall-clock"
            if peer.get("train_cpu_seconds") is not None
            else ""
        )
        lines += [
            "",
            f"Script: `{r['script']}`; metrics: `{r['metrics_from']}`. Peer training budget "
            f"{r['budget_s'] / 60:.1f} min "
            f"{'of CPU time' if 'CPU' in str(peer.get('budget_clock', '')) else 'wall-clock'} "
            f"on one thread ({how}; {peer.get('epochs')} "
            f"epoch(s), {peer.get('steps')} steps done, stopped by the budget: "
            f"{peer.get('stopped_by_budget')}{cpu}{resumed_note(peer)}); {thr}. The instembed "
            "row is the shipped "
            f"model as it is (its recorded training). Machine: {r['machine']}. Caveat: "
            f"{r['load_caveat']} (load average at start {r['loadavg_start'][0]}, at end "
            f"{r['loadavg_end'][0]}).",
            "",
        ]
    return lines


def resumed_note(peer: dict) -> str:
    """How a peer run that was interrupted and resumed (``peer_stardist.py --resume``) went on."""
    epoch = peer.get("resumed_after_epoch")
    if not epoch:
        return ""
    return (
        f"; its process was killed after epoch {epoch} and the run resumed from that epoch's "
        "weights with the rest of the budget (fresh optimiser state)"
    )


PEER = """## Peer: EmbedSeg (PyPI `embedseg` 0.2.5)

Not run beside ours. Checked in this session (`pip download --no-deps embedseg==0.2.5`,
`pip install --dry-run embedseg==0.2.5`):

* it would not pull a new torch (torch is not among its requirements), but it pulls jupyter,
  numba, pandas, seaborn and ~60 other packages;
* the wheel is broken as a package: its modules (`train.py`, `test.py`, `criterions/`,
  `datasets/`, `models/`, `utils/`) sit at the top level of the wheel, not inside an
  `EmbedSeg/` folder, while the code imports `from EmbedSeg.criterions import ...`, so
  `import EmbedSeg` fails after installation (and it would shadow any top-level `utils` / `test`
  module);
* re-packed by hand into an `EmbedSeg/` folder, `EmbedSeg.test` still fails at import on this
  machine's libraries: `from tifffile import imsave` (removed from tifffile; 2026.3.3 here), and
  pandas is needed even for training.

A fair peer run (its training on our split with the same CPU budget) would need a patched copy
of its code; we did not patch a peer. The clustering step of EmbedSeg, which imports on its own,
is compared with ours in `benchmarks/cluster_speed.py` (docs/cluster.md).
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    args = ap.parse_args(argv)
    results = Path(args.results)
    lines = [
        "# Reproduction results",
        "",
        "Generated by `python benchmarks/collect_results.py` from `benchmarks/results/*.json` and "
        "`src/instembed/pretrained/*.json`; do not edit by hand. Machine: 2 CPU cores shared with "
        "other jobs, no GPU; `--quick` runs are CI-sized and far from converged, so compare "
        "methods within one table only.",
        "",
    ]
    lines += section_pretrained()
    lines += section_coloring(results)
    lines += section_methods(results, "nuclei", "bbbc039", "Nuclei: method comparison on BBBC039")
    lines += section_methods(results, "nuclei", "dsb2018", "Nuclei: method comparison on DSB2018")
    lines += section_methods(
        results,
        "worms",
        "bbbc010",
        "Worms: conv vs semi-conv vs spatial embeddings on BBBC010 (Novotny et al. Table 1 setting)",
    )
    lines += section_clustering(results)
    lines += section_speed(results)
    lines += section_backbones(results)
    lines += section_leaves(results)
    lines += section_blockwise(results)
    lines += section_dask(results)
    lines += section_maskrcnn(results)
    lines += section_instance_fcn(results)
    lines += section_recurrent(results)
    lines += section_false_positives(results)
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    for module in ("training_stages", "tta", "auto_scale"):  # sections in their own modules
        lines += importlib.import_module(module).section(results)
    lines += section_peers_trained(results)
    lines += [PEER]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

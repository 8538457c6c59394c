"""Model cards of the shipped pretrained models: ``src/instembed/pretrained/<name>.md`` written
from ``<name>.json`` (recipe, val metrics with false positives per image, DSB2018 per-look
metrics, the history of shipped versions, and the peers trained beside this very version by
``benchmarks/peer_*.py``). Used by ``benchmarks/train_pretrained.py``; on its own:

    python benchmarks/model_cards.py bbbc039-nuclei dsb2018-nuclei bbbc010-worms
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from instembed.engine import checkpoint as ck

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = REPO / "src" / "instembed" / "pretrained"
FPI = "FP_per_image@0.5"


CARD_DATA = {
    "bbbc039": (
        "BBBC039 v1 (Caicedo et al. 2019), U2OS nuclei, Hoechst fluorescence, 520 x 696, 16-bit; "
        "CC0. Shared copy: 150 of the 200 images (the other 50 are a held-out test split)."
    ),
    "dsb2018": (
        "DSB2018 / BBBC038 stage1_train (Caicedo et al. 2019), nuclei across looks (dark "
        "fluorescence, bright-field, H&E-like colour), 256 x 256 to 1040 x 1388; CC0. Shared "
        "copy: 173 of the 664 images (100 others are a held-out test split)."
    ),
    "bbbc010": (
        "BBBC010 v1 (Ljosa et al. 2012; per-worm masks of Wahlby et al. 2012), C. elegans "
        "bright-field (channel w2), 520 x 696, 16-bit; one binary mask per worm, worms overlap. "
        "Shared copy: 50 of the 97 wells with images (the other 47 are a held-out test split). "
        "License not verified here (see the data's SOURCE.md)."
    ),
}


def write_card(name: str) -> Path:
    """Write ``pretrained/<name>.md`` (the model card) from ``pretrained/<name>.json``."""
    info = json.loads((PRETRAINED / f"{name}.json").read_text())
    cfg = info["config"]
    m = info["val_metrics"]
    split = info["split"]
    model = cfg["model"]
    # the heads and coord_scale sit at the top of older configs, under params in newer ones
    net_params = {k: v for k, v in model["params"].items() if k not in ("heads", "coord_scale")}
    heads = model.get("heads", model["params"].get("heads"))
    coord_scale = model.get("coord_scale", model["params"].get("coord_scale"))
    net_name = model["name"] + (f" ({model['backbone']})" if model.get("backbone") else "")
    n_params = info.get("n_params")
    if n_params is None:  # count the learned tensors of the shipped state dict
        state = ck.load_checkpoint(PRETRAINED / f"{name}.pt")["model"]
        n_params = sum(
            v.numel()
            for k, v in state.items()
            if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
        )
    overlap = info["cluster"]["params"].get("overlap_thresh") is not None
    written = (
        "`<stem>.tif` (N, H, W) mask stacks, one mask per object, masks may overlap"
        if overlap
        else "`<stem>.tif` label images"
    )
    norm = {
        "percentile": "input normalised with 1/99.8 percentiles",
        "percentile_darkbg": "input normalised with 1/99.8 percentiles, then inverted when its "
        "background is bright (bright-field, H&E) so that nuclei are bright",
        "percentile_unsaturated": "input normalised with 1/99.8 percentiles, the 99.8th taken "
        "below a saturation plateau when one reaches it",
    }[cfg["data"]["reader_params"].get("normalize", "percentile")]
    lines = [
        f"# {name}",
        "",
        f"Use: `instembed predict --model {name} IMAGES... --out DIR` (writes {written}; "
        f"{norm}, "
        + (
            "colour read as RGB, gray images repeated into its 3 channels)."
            if model.get("in_channels", 1) == 3
            else "colour averaged to gray)."
        ),
        "",
        "## Data and split",
        "",
        CARD_DATA[info["dataset"]],
        "",
        f"Split: `instembed.data.splits` (sorted ids, `numpy.random.default_rng({split['seed']})` "
        f"permutation, {int(split['val_fraction'] * 100)} % validation): "
        f"{split['n_train']} train / {split['n_val']} val images. The model, its recipe and the "
        "clustering thresholds were chosen on the val images only; the held-out test images "
        "were never seen.",
        "",
        "## Recipe",
        "",
        f"- network: `{net_name}` {net_params}, heads {heads}, "
        f"semi-convolutional (coord_scale {coord_scale})"
        + (f", {n_params:,} parameters" if n_params else ""),
        f"- loss: `{cfg['loss']['name']}` {cfg['loss']['params']} (spatial embeddings, Neven et "
        "al. 2019: learnable bandwidth, Lovasz hinge, seed regression)",
        f"- data: crops/augmentation {cfg['data']['augment']}, flips + rot90, batch "
        f"{cfg['data']['batch_size']}, reader {cfg['data']['reader_params']}"
        + (
            f", object centres: {cfg['data']['center']}"
            if cfg["data"].get("center", "centroid") != "centroid"
            else ""
        )
        + (
            f", per-look sampling weights {cfg['data']['look_weights']}"
            if cfg["data"].get("look_weights")
            else ""
        ),
        f"- optimiser: {cfg['optim']['optimizer']} lr {cfg['optim']['lr']}, "
        f"{cfg['optim']['schedule']} schedule, {cfg['run']['steps']} steps planned, "
        f"{info['steps']} done; checkpoint of step {info['best_step']} kept (of the in-training "
        f"best by {cfg['run']['best_metric']} on "
        f"{min(cfg['run']['max_val_images'] or split['n_val'], split['n_val'])} val images and the "
        "last checkpoint, the one with the higher val AP_dsb@0.5 after threshold tuning)",
        f"- clustering: `{info['cluster']['method']}` {info['cluster']['params']} (thresholds "
        "picked by AP_dsb@0.5 on the val split)",
        f"- training time: {info['train_seconds'] / 60:.1f} min on {info['machine']} "
        "(2 shared CPU cores, no GPU; other jobs were running)",
        *(
            [
                f"- warm start: from the weights of the earlier `{info['init']['model']}` "
                f"({info['init']['steps']} steps, {info['init']['train_seconds'] / 60:.1f} min, "
                "included in the training time above); fresh optimiser and schedule"
            ]
            if info.get("init")
            else []
        ),
        *([f"- note: {info['note']}"] if info.get("note") else []),
        "",
        "## Validation metrics (val split, whole images)",
        "",
        "| AP_dsb@0.5 | COCO AP | AP50 | AP75 | SBD | abs DiC | PQ | FP / image @0.5 |",
        "|---|---|---|---|---|---|---|---|",
        "| "
        + " | ".join(
            "-"
            if m.get(k) is None
            else f"{m[k]:.3f}"
            if k not in ("absDiC", FPI)
            else f"{m[k]:.2f}"
            for k in ("AP_dsb@0.5", "AP", "AP50", "AP75", "SBD", "absDiC", "PQ", FPI)
        )
        + " |",
        "",
        *auto_scale_lines(info),
        *look_table(info.get("val_by_look")),
        *history_table(info.get("history")),
        *peer_table(info),
        "AP_dsb@0.5 = TP / (TP + FP + FN) at IoU 0.5 with one-to-one matching, averaged over the "
        "val images; COCO AP / AP50 / AP75 follow pycocotools, including its limit of 100 detections "
        "per image (BBBC039 and DSB2018 images with more nuclei cap its recall); SBD and |DiC| as "
        "in the CVPPP protocol; BBBC010 is scored against the overlapping per-worm masks.",
        "",
        "Literature reference points (other splits, other test sets; not comparable one to one): "
        "EmbedSeg reports AP_dsb@0.5 = 0.966 on BBBC010 (50/50 split) and 0.887 on DSB2018.",
        "",
        (
            f"Reproduce: the training stages and their commands are in the header of "
            f"`configs/pretrained/{name}.yaml`."
            if info.get("init")
            else f"Reproduce: `python benchmarks/train_pretrained.py configs/pretrained/{name}.yaml "
            f"--name {name} --dataset {info['dataset']} --out runs/{name} --threads 1 --ship`"
        ),
        "",
        f"sha256 of `{name}.pt`: `{info['sha256']}`",
        "",
    ]
    path = PRETRAINED / f"{name}.md"
    path.write_text("\n".join(lines))
    return path


def weights_digest(path: Path) -> str:
    """sha256 over the tensors (names, dtypes, shapes, bytes) of the checkpoint ``path``'s
    model state: the same for two files that hold the same weights with another config."""
    import hashlib

    h = hashlib.sha256()
    state = ck.load_checkpoint(path)["model"]
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update((t.float() if t.dtype == torch.bfloat16 else t).numpy().tobytes())
    return h.hexdigest()


def same_model_shas(info: dict) -> set[str]:
    """sha256s of the card's versions whose measurements hold for its current version: itself,
    and every history row with the same weights (``weights``, :func:`weights_digest`), the same
    input normalisation (``reader_params``) and the same clustering as the current one (a
    re-ship that changed only the config's metadata, e.g. the recorded object sizes)."""
    rows = info.get("history") or []
    now = next((r for r in reversed(rows) if r.get("sha256") == info.get("sha256")), None)
    same = {info.get("sha256")}
    keys = ("weights", "reader_params", "cluster")
    if now is not None and all(now.get(k) is not None for k in keys):
        same |= {r["sha256"] for r in rows if all(r.get(k) == now[k] for k in keys)}
    return same


def history_with(name: str, card: dict, change: str) -> list[dict]:
    """The history of the shipped model ``name`` (its current card's ``history``) with one row
    for the version in ``card``: what changed, total steps and training time, val metrics, the
    sha256 of the file, the digest of its weights (:func:`weights_digest`, of the shipped
    ``<name>.pt``: call this after writing it) and its input normalisation."""
    old = PRETRAINED / f"{name}.json"
    rows = list(json.loads(old.read_text()).get("history", [])) if old.is_file() else []
    weights = PRETRAINED / f"{name}.pt"
    m = card["val_metrics"]
    init = card.get("init") or {}
    rows.append(
        {
            "version": len(rows) + 1,
            "change": change,
            "steps": card["steps"] + int(init.get("steps", 0)),
            "train_seconds": card["train_seconds"],
            **{k: m.get(k) for k in ("AP_dsb@0.5", "AP", "AP_dsb@0.5:0.95", "FP_per_image@0.5")},
            "cluster": card["cluster"]["params"],
            "sha256": card["sha256"],
            **({"weights": weights_digest(weights)} if weights.is_file() else {}),
            "reader_params": card.get("config", {}).get("data", {}).get("reader_params"),
        }
    )
    return rows


def history_table(rows: list[dict] | None) -> list[str]:
    """The card's history as a markdown table (val split; every change that moved it)."""
    if not rows:
        return []

    def num(v, digits=3):
        return "-" if v is None else f"{v:.{digits}f}"

    lines = [
        "## History (val split; each row a shipped version and what it changed)",
        "",
        "| version | change | steps | training | AP_dsb@0.5 | COCO AP | FP / image @0.5 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['version']} | {r['change']} | {r['steps']} | {r['train_seconds'] / 60:.0f} min "
            f"| {num(r['AP_dsb@0.5'])} | {num(r['AP'])} | {num(r.get('FP_per_image@0.5'), 2)} |"
        )
    return lines + [""]


def peer_table(info: dict) -> list[str]:
    """Peers trained beside this model (``benchmarks/results/peer_*<dataset>.json`` written by
    ``benchmarks/peer_*.py``): those that scored this very version (same sha256, or a version
    with the same weights and clustering: :func:`same_model_shas`), then those that
    scored an earlier version of the card's history, each group under its own heading (a peer's
    budget is that of the version it was trained beside). Smoke tests and runs against a sha
    the card does not know are left out."""
    results = REPO / "benchmarks" / "results"
    versions = {h["sha256"]: h["version"] for h in info.get("history") or [] if h.get("sha256")}
    this = versions.get(info["sha256"])
    current = same_model_shas(info)  # this version, or one with its weights and clustering
    groups: dict[int | None, tuple[list, list]] = {}
    for path in sorted(results.glob(f"peer_*{info['dataset']}.json")):
        r = json.loads(path.read_text())
        sha = r["shipped_model"]["sha256"]
        if r.get("smoke_test") or (sha not in current and sha not in versions):
            continue
        rows, scripts = groups.setdefault(None if sha in current else versions[sha], ([], []))
        if not rows:
            rows.append(r["rows"][0])
        facts = r.get("stardist") or r.get("cellpose") or {}
        for x in r["rows"][1:]:
            cpu = facts.get("train_cpu_seconds")
            wall = f"{x['train_seconds'] / 60:.0f} min"
            rows.append({**x, "training": f"{cpu / 60:.0f} CPU-min ({wall} wall)" if cpu else wall})
        scripts.append(f"`{r['script']}`")
    lines: list[str] = []
    order = sorted(groups, key=lambda v: (v is not None, -(v or 0)))
    for version in order:
        rows, scripts = groups[version]
        title = "Peers trained on the same images with the same CPU budget (val split)"
        if version is not None:
            title = (
                f"Peers trained beside version {version} with its CPU budget (val split; the "
                f"instembed row is version {version}"
                + (f", not this version {this})" if this else ", not this version)")
            )
        lines += [
            f"## {title}",
            "",
            "| method | AP_dsb@0.5 | mean AP_dsb@0.5:0.95 | COCO AP | FP / image @0.5 | s / image "
            "| training |",
            "|---|---|---|---|---|---|---|",
        ]
        for x in rows:
            lines.append(
                f"| {x['method']} | {x['AP_dsb@0.5']:.3f} | {x['AP_dsb@0.5:0.95']:.3f} "
                f"| {x['AP']:.3f} | {x['FP_per_image@0.5']:.2f} | {x['s_per_image']:.2f} | "
                f"{x.get('training') or str(round(x['train_seconds'] / 60)) + ' min'} |"
            )
        lines += [
            "",
            "Scored with instembed's metrics, one thread, whole images; scripts: "
            + ", ".join(scripts)
            + " (details in `benchmarks/RESULTS.md`).",
            "",
        ]
    return lines


def auto_scale_lines(info: dict) -> list[str]:
    """The card's lines on ``--scale auto``: the training object sizes and the val metrics
    with auto scale (``val_auto_scale``, written by train_pretrained), when recorded."""
    sizes = info["config"]["data"].get("object_diameter")
    auto = info.get("val_auto_scale")
    if not sizes or not auto:
        return []
    resized = auto.get("resized") or {}
    which = ", ".join(f"{Path(k).stem[:8]} x{v:g}" for k, v in sorted(resized.items())) or "none"
    n = info["split"]["n_val"]
    return [
        f"With `--scale auto`, the default of `instembed predict` and `instembed.segment`, an "
        "image is segmented again, shrunk, when the objects found in it are far larger than "
        f"the training sizes (object diameters {sizes[0]:g} / {sizes[1]:g} / {sizes[2]:g} px: "
        "5th / 50th / 95th percentile over the training images). On the val split: AP_dsb@0.5 "
        f"**{auto['AP_dsb@0.5']:.3f}**, mean AP_dsb@0.5:0.95 {auto['AP_dsb@0.5:0.95']:.3f}, "
        f"COCO AP {auto['AP']:.3f}, FP / image {auto['FP_per_image@0.5']:.2f} "
        f"({len(resized)} of {n} images resized: {which}); the table above is at scale 1.",
        "",
    ] + (
        [
            "The checkpoint carries a size model (`instembed.engine.size_model`: the object "
            "diameter predicted from the pooled encoder features, fitted on the training "
            "images at 0.5x-2x), which sets the factor of auto's first pass, in either "
            "direction; so images at another magnification are resized even where the model "
            "would split the objects into pieces of its training size.",
            "",
        ]
        if info.get("size_model")
        else []
    )


def look_table(by_look: dict | None) -> list[str]:
    """Model-card lines: the val metrics per image look (DSB2018), or nothing."""
    if not by_look:
        return []
    keys = ("AP_dsb@0.5", "AP", "SBD", "absDiC")
    lines = [
        "Per look (val images of each look):",
        "",
        "| look | images | AP_dsb@0.5 | COCO AP | SBD | abs DiC |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in by_look.items():
        lines.append(
            f"| {name} | {m['n_images']} | "
            + " | ".join(f"{m[k]:.3f}" if k != "absDiC" else f"{m[k]:.2f}" for k in keys)
            + " |"
        )
    return lines + [""]


if __name__ == "__main__":
    for _name in sys.argv[1:]:
        print(write_card(_name))

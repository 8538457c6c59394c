"""``--scale auto`` against scale 1 on the val split, as it is and enlarged: does auto find
objects larger than the training objects, and does it leave the others alone?

    python benchmarks/auto_scale.py [--models NAME ...] [--factors 1 2] [--max-val N]

For each shipped model and each integer factor F, the val images of its split are enlarged F
times (image: bilinear; ground truth: each pixel an F x F block, so the objects keep their
shapes and grow F times across) and segmented twice by the shipped model: at scale 1 and with
``scale="auto"`` (:mod:`instembed.data.sizes`). F = 1 is the val split itself. One JSON line per
(model, factor) goes to ``benchmarks/results/auto_scale.json`` (AP_dsb@0.5, mean AP_dsb@0.5:0.95,
COCO AP, FP / FN per image for both, the images auto resized and the seconds per image);
``section`` renders them for RESULTS.md.

    python benchmarks/auto_scale.py --size-model-check [--models NAME ...]

fits a size model (:mod:`instembed.engine.size_model`) on each model's training split, as
``train_pretrained.py --fit-size-model`` would ship it, and predicts the median object diameter
of its val images shown at 0.5x, 1x and 2x: the log errors go to
``benchmarks/results/size_model_check.json`` (one line per model) and into the same section.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PRETRAINED = REPO / "src" / "instembed" / "pretrained"
RESULTS = HERE / "results" / "auto_scale.json"
MODELS = {"bbbc039-nuclei": "bbbc039", "dsb2018-nuclei": "dsb2018", "bbbc010-worms": "bbbc010"}
KEYS = ("AP_dsb@0.5", "AP_dsb@0.5:0.95", "AP", "FP_per_image@0.5", "FN_per_image@0.5")
COMMAND = "python benchmarks/auto_scale.py [--models NAME ...] [--factors 1 2]"
CHECK = HERE / "results" / "size_model_check.json"
CHECK_SCALES = (0.5, 1.0, 2.0)

log = logging.getLogger("auto_scale")


def enlarge(sample, factor: int):
    """``sample`` enlarged ``factor`` times: the image bilinearly, the instances (label image
    or mask stack) and the ignore mask by repeating each pixel into a factor x factor block."""
    import dataclasses

    import torch.nn.functional as F

    if factor == 1:
        return sample
    img = torch.as_tensor(np.asarray(sample.image, np.float32))[None]
    h, w = img.shape[-2:]
    big = F.interpolate(img, size=(h * factor, w * factor), mode="bilinear", align_corners=False)
    block = np.ones((factor, factor), np.uint8)

    def grow(a):
        if a is None:
            return None
        a = np.asarray(a)
        if a.ndim == 3:
            return np.stack([np.kron(m, block).astype(a.dtype) for m in a])
        return np.kron(a, block).astype(a.dtype)

    return dataclasses.replace(
        sample,
        image=big[0].numpy(),
        instances=grow(sample.instances),
        ignore=grow(sample.ignore),
        semantic=grow(sample.semantic),
    )


def measure(name: str, factors: list[int], data_root: Path, max_val: int | None) -> list[dict]:
    """One row per factor for the shipped model ``name``."""
    sys.path.insert(0, str(HERE))
    from instembed.engine.evaluation import headline, score
    from instembed.engine.predict import Predictor
    from train_pretrained import load_split

    dataset = MODELS[name]
    card = json.loads((PRETRAINED / f"{name}.json").read_text())
    plain = Predictor.from_spec(name)
    auto = Predictor(plain.model, plain.cfg, scale="auto")
    cfg = plain.cfg
    cfg.data.path = str(data_root / dataset)
    _, val = load_split(cfg, dataset)
    val = val[:max_val] if max_val else val
    rows = []
    for factor in factors:
        samples = [enlarge(s, factor) for s in val]
        row = {
            "model": name,
            "sha256": card["sha256"],
            "factor": factor,
            "n_val": len(samples),
            "object_diameter": cfg.data.object_diameter,
            "size_model": getattr(plain.model, "size_model", None) is not None,
        }
        for mode, predictor in (("plain", plain), ("auto", auto)):
            t0 = time.process_time()
            preds = [predictor(s.image) for s in samples]
            seconds = (time.process_time() - t0) / len(samples)
            h = headline(score(samples, preds), len(samples))
            row[mode] = {k: h[k] for k in KEYS} | {"cpu_s_per_image": seconds}
            if mode == "auto":
                row["resized"] = sum(p.meta.get("scale", 1.0) != 1.0 for p in preds)
                row["scales"] = sorted({round(p.meta.get("scale", 1.0), 3) for p in preds})
                row["passes"] = float(np.mean([len(p.meta.get("auto_trail", [1])) for p in preds]))
        log.info("%s x%d: %s", name, factor, row)
        rows.append(row)
    return rows


def size_model_check(name: str, data_root: Path, max_val: int | None) -> dict:
    """Fit a size model on the training split of the shipped model ``name`` and return the log
    errors ``log(predicted / true median diameter)`` of its val images at each of
    :data:`CHECK_SCALES` (median and largest absolute value, mean)."""
    sys.path.insert(0, str(HERE))
    from instembed.data.sizes import image_diameter
    from instembed.engine.predict import load_model
    from instembed.engine.size_model import encoder_features, fit_size_model
    from train_pretrained import load_split

    model, cfg = load_model(name)
    cfg.data.path = str(data_root / MODELS[name])
    train, val = load_split(cfg, MODELS[name])
    val = val[:max_val] if max_val else val
    t0 = time.process_time()
    sm = fit_size_model(model, train)
    fit_s = time.process_time() - t0
    row = {"model": name, "n_fit": sm.n_images, "n_val": len(val), "fit_cpu_s": fit_s}
    row["shipped"] = getattr(model, "size_model", None) is not None  # the shipped one has one
    for scale in CHECK_SCALES:
        errs = []
        for s in val:
            d = image_diameter(s.instances)
            if np.isfinite(d):
                pred = sm.predict_log(encoder_features(model, s.image, scale))
                errs.append(pred - np.log(d * scale))
        e = np.abs(errs)
        row[f"x{scale:g}"] = {
            "mean": float(np.mean(errs)),
            "median_abs": float(np.median(e)),
            "max_abs": float(np.max(e)),
        }
    log.info("size model check %s: %s", name, row)
    return row


def render_check(rows: list[dict]) -> list[str]:
    """The size-model check table of ``rows`` (one per model)."""
    head = " | ".join(f"val at {s:g}x" for s in CHECK_SCALES)
    lines = [
        "Size model, fitted on the training split and checked on the val images shown at "
        "three scales: median / largest |log(predicted / true median diameter)| "
        "(0.1 is about 10 % off, 0.69 a factor 2).",
        "",
        f"| model | fitted on | {head} | shipped with one |",
        "|---|---|" + "---|" * len(CHECK_SCALES) + "---|",
    ]
    for r in sorted(rows, key=lambda r: r["model"]):
        cells = " | ".join(
            f"{r[f'x{s:g}']['median_abs']:.2f} / {r[f'x{s:g}']['max_abs']:.2f}"
            for s in CHECK_SCALES
        )
        lines.append(
            f"| `{r['model']}` | {r['n_fit']} images x 5 scales | {cells} | "
            f"{'yes' if r['shipped'] else 'no'} |"
        )
    return lines + [
        "",
        "Measured by `python benchmarks/auto_scale.py --size-model-check [--models NAME ...]`.",
        "",
    ]


def section(results: Path) -> list[str]:
    """RESULTS.md lines from ``results/auto_scale.json``."""
    lines = ["## `--scale auto` on the val split, as it is and enlarged", ""]
    path = results / "auto_scale.json"
    if not path.is_file():
        return lines + [f"not run: `{COMMAND}` writes `benchmarks/results/auto_scale.json`", ""]
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    lines += render(rows)
    check = results / CHECK.name
    if check.is_file():
        lines += render_check([json.loads(x) for x in check.read_text().splitlines() if x.strip()])
    return lines


def render(rows: list[dict]) -> list[str]:
    """The table of ``rows`` (one per model and factor) and how to read it."""
    lines = [
        "| model | val images enlarged | images resized by auto | AP_dsb@0.5 | mean "
        "AP_dsb@0.5:0.95 | COCO AP | FP / image | FN / image | CPU s / image |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["model"], r["factor"])):
        p, a = r["plain"], r["auto"]
        cells = [f"{p[k]:.{d}f} / {a[k]:.{d}f}" for k, d in zip(KEYS, (3, 3, 3, 2, 2), strict=True)]
        model = f"`{r['model']}`" + (" (size model)" if r.get("size_model") else "")
        lines.append(
            f"| {model} | {r['factor']}x | {r['resized']} of {r['n_val']} | "
            + " | ".join(cells)
            + f" | {p['cpu_s_per_image']:.1f} / {a['cpu_s_per_image']:.1f} |"
        )
    return lines + [
        "",
        "Each cell: scale 1 / `--scale auto` (the default of predict and `instembed.segment`), "
        "the shipped models at their card's thresholds, whole images, one torch thread. "
        "Enlarged: each val image and its ground truth made F times larger (bilinear image, "
        "pixel-block labels), i.e. objects F times larger than the training objects. "
        "(size model): the checkpoint carries one (`instembed.engine.size_model`), which sets "
        "the factor of auto's first pass. "
        f"Measured by `{COMMAND}`.",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(HERE))
    from train_pretrained import data_root, val_benchmark_parser

    ap = val_benchmark_parser(__doc__, MODELS, RESULTS)
    ap.add_argument("--factors", nargs="+", type=int, default=[1, 2])
    ap.add_argument(
        "--size-model-check",
        action="store_true",
        help="fit a size model on each model's training split and check it on its val images",
    )
    args = ap.parse_args(argv)
    if any(f < 1 for f in args.factors):
        ap.error(f"--factors: expected integers >= 1, got {args.factors}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(1)
    root = Path(args.data_root) if args.data_root else data_root()
    if args.size_model_check:
        kept = []
        if CHECK.is_file():
            kept = [json.loads(x) for x in CHECK.read_text().splitlines() if x.strip()]
            kept = [r for r in kept if r["model"] not in args.models]
        rows = kept
        for name in args.models:
            rows.append(size_model_check(name, root, args.max_val))
            CHECK.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print("\n".join(render_check(rows)))
        return 0
    out = Path(args.out)
    kept = []
    if out.is_file():  # rows of the models not measured again are kept
        kept = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
        kept = [r for r in kept if r["model"] not in args.models]
    rows = kept
    for name in args.models:
        rows += measure(name, args.factors, root, args.max_val)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print("\n".join(render(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

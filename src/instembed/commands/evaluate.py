"""``instembed evaluate``: score a folder of predicted label images against the ground truth."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

HELP = "score predicted label images against ground truth (SBD, COCO AP, AP_dsb, PQ, mIoU)"
DESCRIPTION = """\
Score predictions against ground truth, matched by file stem.

PRED holds label images <stem>.tif / <stem>.png (0 = background; a 3-D TIFF is an (N, H, W)
mask stack) with an optional sidecar <stem>.json:
  {"instances": [{"id": 3, "score": 0.91, "class": 1}, ...]}
(scores default to 1.0; without classes PQ and AP are class-agnostic), and optionally
<stem>_semantic.png / .tif semantic maps (for mIoU and stuff classes).

GT is a folder of label images / mask-stack TIFFs (--gt-format labels, the default) or any
layout the data readers know (--gt-format auto, folder, cvppp, dsb2018, bbbc010, coco, ...).

A stem on one side only, an unreadable file or a size mismatch is an error naming the file.
Metric definitions: docs/metrics.md.
"""

log = logging.getLogger(__name__)

LABEL_SUFFIXES = (".tif", ".tiff", ".png")
SEMANTIC_SUFFIX = "_semantic"
GROUPS = ("sbd", "coco", "dsb", "pq", "miou")
TABLE_KEYS = [
    "SBD",
    "BestDice_gt_pred",
    "BestDice_pred_gt",
    "FBD",
    "DiC",
    "absDiC",
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AP_dsb@0.5",
    "AP_dsb@0.5:0.95",
    "AP_dsb_pooled@0.5",
    "AP_dsb_pooled@0.5:0.95",
    "PQ",
    "SQ",
    "RQ",
    "PQ_th",
    "PQ_st",
    "PQ_dagger",
    "mIoU",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--gt", required=True, type=Path, help="ground-truth folder")
    parser.add_argument("--pred", required=True, type=Path, help="prediction folder")
    parser.add_argument(
        "--gt-format",
        default="labels",
        help="'labels' (label images / mask-stack TIFFs by stem, default) or a data-reader "
        "format: auto, folder, bbbc039, bbbc010, dsb2018, cvppp, coco, coco_panoptic, cityscapes",
    )
    parser.add_argument(
        "--metrics",
        default="all",
        help=f"comma-separated groups from {','.join(GROUPS)} (default: all that apply)",
    )
    parser.add_argument("--json", dest="json_out", type=Path, help="write every number here")
    parser.add_argument("--max-dets", type=int, default=100, help="COCO maxDets (default 100)")
    parser.add_argument("--num-classes", type=int, help="semantic classes, for mIoU")
    parser.add_argument("--stuff-classes", help="comma-separated semantic classes scored as stuff")
    parser.add_argument("--per-image", action="store_true", help="also print one row per image")


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def _label_files(folder: Path, role: str) -> dict[str, Path]:
    """stem -> label file, skipping sidecars and semantic maps; duplicate stems are an error."""
    if not folder.is_dir():
        raise NotADirectoryError(f"--{role} {folder}: not a folder")
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in LABEL_SUFFIXES or p.stem.endswith(SEMANTIC_SUFFIX):
            continue
        if p.stem in out:
            raise ValueError(
                f"{folder}: two label files for stem {p.stem!r}: {out[p.stem].name} and {p.name}"
            )
        out[p.stem] = p
    return out


def read_instances(path: Path):
    """(H, W) int label image or (N, H, W) bool stack from a PNG / TIFF file."""
    from instembed.data import io

    try:
        if path.suffix.lower() in io.TIFF_SUFFIXES:
            raw = io.read_image(path)
            if raw.ndim == 3:
                return io.decode_labels(raw, "stack", path)[0]
        return io.read_labels(path, "ids")
    except (OSError, ValueError) as err:
        msg = str(err)
        raise ValueError(msg if str(path) in msg else f"{path}: {msg}") from err


def read_semantic(path: Path):
    import numpy as np

    from instembed.data import io

    try:
        raw = io.read_labels(path, "ids")
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read semantic map: {err}") from err
    return np.asarray(raw, np.int64)


def read_sidecar(path: Path, ids) -> tuple[dict | None, dict | None]:
    """Scores and classes by instance id from ``<stem>.json`` (None where absent)."""
    if not path.is_file():
        return None, None
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not readable JSON: {err}") from err
    inst = doc.get("instances") if isinstance(doc, dict) else None
    if not isinstance(inst, list):
        raise ValueError(
            f'{path}: expected {{"instances": [{{"id": 3, "score": 0.91, "class": 1}}, ...]}}, '
            f"got {type(doc).__name__} without an 'instances' list"
        )
    present = set(int(i) for i in ids)
    scores, classes = {}, {}
    for k, entry in enumerate(inst):
        if not isinstance(entry, dict) or "id" not in entry:
            raise ValueError(f"{path}: instances[{k}] has no 'id': {entry!r}")
        i = int(entry["id"])
        if i not in present:
            raise ValueError(
                f"{path}: instances[{k}] names id {i}, which is not in the label image "
                f"(ids {sorted(present)[:10]}{'...' if len(present) > 10 else ''})"
            )
        if "score" in entry:
            scores[i] = float(entry["score"])
        if "class" in entry:
            classes[i] = int(entry["class"])
    if classes and len(classes) != len(present):
        missing = sorted(present - set(classes))[:10]
        raise ValueError(f"{path}: 'class' given for some instances but not for ids {missing}")
    return (scores or None), (classes or None)


class _GroundTruth:
    """Ground truth by stem, from label files or a data reader."""

    def __init__(self, root: Path, fmt: str) -> None:
        self.root = root
        self.fmt = fmt
        if fmt == "labels":
            self.files = _label_files(root, "gt")
            self.stems = list(self.files)
        else:
            from instembed.data.readers import open_dataset

            self.reader = open_dataset(root, format=fmt)
            self.stems = [item.name for item in self.reader.items]
            self.index = {s: i for i, s in enumerate(self.stems)}
            if len(self.index) != len(self.stems):
                raise ValueError(f"{root}: the {fmt!r} data set has repeated image names")

    def where(self, stem: str) -> str:
        if self.fmt == "labels":
            return str(self.files[stem])
        return str(self.reader.items[self.index[stem]].image)

    def load(self, stem: str) -> dict:
        if self.fmt == "labels":
            return {"instances": read_instances(self.files[stem])}
        s = self.reader[self.index[stem]]
        return {
            "instances": s.instances,
            "classes": s.classes,
            "ignore": s.ignore,
            "semantic": s.semantic,
            "stuff_classes": s.meta.get("stuff_classes"),
        }


def _shape(instances) -> tuple[int, ...]:
    return tuple(instances.shape[1:]) if instances.dtype == bool else tuple(instances.shape)


# --------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------


def _parse_groups(text: str) -> tuple[str, ...]:
    if text.strip() == "all":
        return GROUPS
    groups = tuple(g.strip().lower() for g in text.split(",") if g.strip())
    bad = [g for g in groups if g not in GROUPS]
    if bad or not groups:
        raise ValueError(f"--metrics: unknown group(s) {bad or text!r}; choose from {GROUPS}")
    return groups


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from instembed.metrics import InstanceEvaluator

    groups = _parse_groups(args.metrics)
    gt = _GroundTruth(args.gt, args.gt_format)
    preds = _label_files(args.pred, "pred")
    gt_only = sorted(set(gt.stems) - set(preds))
    pred_only = sorted(set(preds) - set(gt.stems))
    if gt_only:
        raise FileNotFoundError(
            f"{args.pred}: no prediction for {len(gt_only)} ground-truth image(s): "
            f"{', '.join(gt_only[:10])}{' ...' if len(gt_only) > 10 else ''} "
            f"(expected <stem>.tif or <stem>.png)"
        )
    if pred_only:
        raise FileNotFoundError(
            f"{args.gt}: no ground truth for {len(pred_only)} prediction(s): "
            f"{', '.join(preds[s].name for s in pred_only[:10])}"
            f"{' ...' if len(pred_only) > 10 else ''}"
        )
    if not gt.stems:
        raise ValueError(f"{args.gt}: no label files (.tif, .tiff, .png) found")

    stuff = ()
    if args.stuff_classes:
        stuff = tuple(int(c) for c in args.stuff_classes.split(",") if c.strip())
    evaluator = None
    warned_classes = False
    for stem in gt.stems:
        g = gt.load(stem)
        ppath = preds[stem]
        pred = read_instances(ppath)
        if _shape(pred) != _shape(g["instances"]):
            raise ValueError(
                f"{ppath}: size {_shape(pred)} differs from the ground truth "
                f"{gt.where(stem)} size {_shape(g['instances'])}"
            )
        from instembed.metrics.overlap import instance_ids

        scores, p_classes = read_sidecar(ppath.with_suffix(".json"), instance_ids(pred))
        g_classes = g.get("classes")
        if p_classes is not None and g_classes is None:
            raise ValueError(
                f"{ppath.with_suffix('.json')}: predictions have classes but the ground truth "
                f"{gt.where(stem)} has none (use a --gt-format that reads classes)"
            )
        if p_classes is None:
            if g_classes is not None and not warned_classes:
                print("note: predictions have no classes: PQ and AP are class-agnostic")
                warned_classes = True
            g_classes = None
        if g_classes is not None:
            ids = instance_ids(g["instances"])
            g_classes = dict(zip(ids.tolist(), np.asarray(g_classes).tolist()))
        gsem = g.get("semantic")
        psem = None
        if gsem is not None:
            for suf in LABEL_SUFFIXES:
                cand = args.pred / f"{stem}{SEMANTIC_SUFFIX}{suf}"
                if cand.is_file():
                    psem = read_semantic(cand)
                    if psem.shape != gsem.shape:
                        raise ValueError(
                            f"{cand}: size {psem.shape} differs from ground truth {gsem.shape}"
                        )
                    break
        if evaluator is None:
            st = stuff or tuple(g.get("stuff_classes") or ())
            num_classes = args.num_classes
            if num_classes is None and gsem is not None and psem is not None:
                num_classes = 255  # every id below the ignore index; absent classes drop out
            evaluator = InstanceEvaluator(
                groups, max_dets=args.max_dets, stuff_classes=st, num_classes=num_classes
            )
        try:
            evaluator.add(
                g["instances"],
                pred,
                scores=scores,
                pred_classes=p_classes,
                gt_classes=g_classes,
                ignore=g.get("ignore"),
                gt_semantic=gsem if psem is not None else None,
                pred_semantic=psem,
                name=stem,
            )
        except ValueError as err:
            raise ValueError(f"{ppath} vs {gt.where(stem)}: {err}") from err

    summary = evaluator.summary(per_image=True)
    summary["gt"] = str(args.gt)
    summary["pred"] = str(args.pred)
    summary["gt_format"] = args.gt_format
    print(
        f"instembed evaluate: {summary['n_images']} images, {summary['n_gt']} ground-truth and "
        f"{summary['n_pred']} predicted instances"
    )
    keys = [k for k in TABLE_KEYS if k in summary]
    width = max(len(k) for k in keys)
    for k in keys:
        note = " (undefined in pycocotools)" if k in summary.get("coco_undefined", []) else ""
        print(f"  {k:<{width}}  {_fmt(summary[k])}{note}")
    if args.per_image:
        cols = [k for k in ("SBD", "DiC", "AP", "AP_dsb@0.5", "PQ") if k in summary]
        print("\n  " + "image".ljust(24) + "".join(c.rjust(12) for c in cols))
        for row in summary["per_image"]:
            print(
                "  "
                + str(row["image"])[:24].ljust(24)
                + "".join(_fmt(row.get(c)).rjust(12) for c in cols)
            )
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(summary, indent=1, default=_json_default))
        print(f"wrote {args.json_out}")
    return 0


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")

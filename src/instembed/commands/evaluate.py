"""``instembed evaluate``: score a folder of predicted label images against the ground truth."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from instembed.commands._options import add_threads_argument, check_threads, show_defaults

HELP = (
    "score predicted label images against ground truth "
    "(SBD, COCO AP, AP_dsb, PQ, mIoU, P/R/F1, AJI, Rand/VI)"
)
DESCRIPTION = """\
Score predictions against ground truth, matched by name.

PRED is what `instembed predict --out PRED` writes: label images <name>.tif / <name>.png
(0 = background; a 3-D TIFF is an (N, H, W) mask stack), in sub-folders too (<name> is then
a relative path such as plate1/A01), each with an optional sidecar <name>.json:
  {"instances": [{"id": 3, "score": 0.91, "class": 1}, ...]}
(scores default to 1.0; without classes PQ and AP are class-agnostic), and optionally
<name>_semantic.png / .tif semantic maps (for mIoU and stuff classes). Left out: *.json,
<name>_overlay.png and <name>_semantic.* (unless a <same name>.json says it is a label file),
the panoptic/ folder (--panoptic output) and hidden files.

GT is a folder of label images / mask-stack TIFFs (--gt-format labels) or any layout the data
readers know (--gt-format auto, folder, cvppp, dsb2018, bbbc010, bbbc039, coco, ...). A
prediction matches the ground-truth item whose name (A04, A1/plant001, a DSB image id) or image
file (below the data set folder, without suffix: BBBC010_v1_images/<...>_A04_w2_<...>,
A1/plant001_rgb) is its name, else ends with its name in whole path components (a bare stem
such as plant001 when it is unambiguous). Predictions of the ground truth's own label files
(`predict` run on a CVPPP folder also segments plantNNN_label.png) are left out with a note.

Crowd regions (COCO iscrowd) are scored as crowd ground truths (pycocotools' rule for AP,
panopticapi's for PQ); ignore masks and void pixels (255) of the ground truth's semantic map are
void. An item without prediction, a prediction without ground truth, an ambiguous name, an
unreadable file or a size mismatch is an error naming them; with --skip-bad, ground-truth items
whose files cannot be read are skipped with a warning instead (and their predictions left out).
Metric definitions: docs/metrics.md.
"""

log = logging.getLogger(__name__)

LABEL_SUFFIXES = (".tif", ".tiff", ".png")
SEMANTIC_SUFFIX = "_semantic"
OVERLAY_SUFFIX = "_overlay"
PANOPTIC_DIR = "panoptic"
#: metric groups (instembed.metrics.evaluator.METRIC_GROUPS, kept here so --help stays light)
GROUPS = ("sbd", "coco", "dsb", "pq", "miou", "prf", "aji", "rand")
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
    "AR",
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
    "precision@0.5",
    "recall@0.5",
    "F1@0.5",
    "mean_matched_score@0.5",
    "AJI",
    "AJI_pooled",
    "ARE",
    "ARE_precision",
    "ARE_recall",
    "VI",
    "VI_split",
    "VI_merge",
]
PER_IMAGE_KEYS = ("SBD", "DiC", "AP", "AP_dsb@0.5", "PQ", "F1@0.5", "AJI")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    show_defaults(parser)  # keeps the description's layout, shows "(default: X)"
    parser.add_argument("--gt", required=True, type=Path, help="ground-truth folder (or json)")
    parser.add_argument(
        "--pred", required=True, type=Path, help="prediction folder (predict's --out)"
    )
    parser.add_argument(
        "--gt-format",
        default="labels",
        help="'labels' (label images / mask-stack TIFFs by name) or a data-reader format: "
        "auto, folder, bbbc039, bbbc010, dsb2018, cvppp, coco, coco_panoptic, cityscapes, "
        "stardist",
    )
    parser.add_argument(
        "--metrics",
        default="all",
        help=f"comma-separated groups from {','.join(GROUPS)}, or 'all' (every group; "
        "miou only with semantic maps)",
    )
    parser.add_argument(
        "--json", dest="json_out", type=Path, help="write every number here (default: none)"
    )
    parser.add_argument("--max-dets", type=int, default=100, help="COCO maxDets")
    parser.add_argument(
        "--num-classes",
        type=int,
        help="semantic classes, for mIoU (default: every id below 255 when semantic maps are "
        "given)",
    )
    parser.add_argument(
        "--stuff-classes",
        help="comma-separated semantic classes scored as stuff (default: the data set's)",
    )
    parser.add_argument("--per-image", action="store_true", help="also print one row per image")
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip ground-truth items whose files cannot be read (and their predictions) with a "
        "warning instead of failing",
    )
    add_threads_argument(parser)


# --------------------------------------------------------------------------------------------
# finding files
# --------------------------------------------------------------------------------------------


def _is_label_file(p: Path, folder: Path) -> bool:
    """Whether ``p`` (a file below ``folder``) is a label image and not one of predict's other
    outputs (overlay PNG, semantic map, panoptic PNG, json) or a hidden file."""
    rel = p.relative_to(folder)
    if any(part.startswith(".") for part in rel.parts):
        return False
    if len(rel.parts) > 1 and rel.parts[0] == PANOPTIC_DIR:
        return False
    if p.suffix.lower() not in LABEL_SUFFIXES:
        return False
    if p.stem.endswith(SEMANTIC_SUFFIX) or (
        p.stem.endswith(OVERLAY_SUFFIX) and p.suffix.lower() == ".png"
    ):
        # predict writes a json beside each label file, never beside an overlay or a map
        return p.with_suffix(".json").is_file()
    return True


def _label_files(folder: Path, role: str) -> dict[str, Path]:
    """name (relative POSIX path without suffix) -> label file, searched in sub-folders too;
    two files of one name (a.png and a.tif) are an error."""
    if not folder.is_dir():
        raise NotADirectoryError(f"--{role} {folder}: not a folder")
    out: dict[str, Path] = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or not _is_label_file(p, folder):
            continue
        name = p.relative_to(folder).with_suffix("").as_posix()
        if name in out:
            raise ValueError(
                f"{folder}: two label files for {name!r}: {out[name].relative_to(folder)} and "
                f"{p.relative_to(folder)}"
            )
        out[name] = p
    return out


def _parts(name: str) -> tuple[str, ...]:
    return tuple(part for part in name.split("/") if part)


def _ends_with(long: tuple[str, ...], short: tuple[str, ...]) -> bool:
    return len(short) <= len(long) and long[len(long) - len(short) :] == short


class _Index:
    """Ground-truth keys (tuples of path components) -> item index, for matching names."""

    def __init__(self, keys: list[list[str]]) -> None:
        self.exact: dict[tuple[str, ...], set[int]] = {}
        self.by_last: dict[str, list[tuple[int, tuple[str, ...]]]] = {}
        for i, ks in enumerate(keys):
            for k in ks:
                t = _parts(k)
                if not t:
                    continue
                self.exact.setdefault(t, set()).add(i)
                self.by_last.setdefault(t[-1], []).append((i, t))

    def find(self, name: str) -> set[int]:
        """Items whose key is ``name``; else those whose key ends with ``name`` (or that
        ``name`` ends with), by whole path components."""
        p = _parts(name)
        if not p:
            return set()
        if p in self.exact:
            return set(self.exact[p])
        cands = self.by_last.get(p[-1], [])
        return {i for i, k in cands if _ends_with(k, p) or _ends_with(p, k)}


class _GroundTruth:
    """Ground truth by name, from label files or a data reader."""

    def __init__(self, root: Path, fmt: str, skip_bad: bool = False) -> None:
        self.root = root
        self.fmt = fmt
        self.skip_bad = skip_bad
        self.bad: list[tuple[str, str]] = []  # (item, why) skipped by the reader (skip_bad)
        if fmt == "labels":
            self.files = _label_files(root, "gt")
            self.names = list(self.files)
            keys = [[n] for n in self.names]
            self.label_index = _Index([])
        else:
            from instembed.data.readers import open_dataset

            self.reader = open_dataset(root, format=fmt, skip_bad=skip_bad)
            self.bad = [(str(w), str(why)) for w, why in getattr(self.reader, "bad", [])]
            items = self.reader.items
            self.names = [item.name for item in items]
            if len(set(self.names)) != len(self.names):
                raise ValueError(f"{root}: the {fmt!r} data set has repeated image names")
            keys = [self.reader.item_keys(item) for item in items]
            self.label_index = _Index([self.reader.label_keys(item) for item in items])
        self.index = _Index(keys)
        self.keys = keys
        # names of the items the reader skipped: their predictions are left out, not errors
        self.bad_index = _Index([[w, Path(w).with_suffix("").name] for w, _ in self.bad])

    def where(self, i: int) -> str:
        if self.fmt == "labels":
            return str(self.files[self.names[i]])
        return str(self.reader.items[i].image)

    def load(self, i: int):
        """A Sample (data readers: classes, ignore, semantic, crowd) or a bare label image /
        mask stack (label files)."""
        if self.fmt == "labels":
            return read_instances(self.files[self.names[i]])
        return self.reader[i]


def match(gt: _GroundTruth, preds: dict[str, Path], pred_root: Path) -> dict[int, str]:
    """Ground-truth item index -> prediction name; raises naming every problem."""
    by_item: dict[int, list[str]] = {}
    unmatched, ambiguous, own_labels, of_bad = [], [], [], []
    bad_index = getattr(gt, "bad_index", None)
    for name in preds:
        hits = gt.index.find(name)
        if len(hits) == 1:
            by_item.setdefault(hits.pop(), []).append(name)
        elif hits:
            cands = sorted(gt.names[i] for i in hits)
            ambiguous.append(f"{name} (could be {', '.join(cands[:5])})")
        elif gt.label_index.find(name):
            own_labels.append(name)
        elif bad_index is not None and bad_index.find(name):
            of_bad.append(name)
        else:
            unmatched.append(name)
    problems = []
    if ambiguous:
        problems.append(
            f"{len(ambiguous)} prediction name(s) fit several ground-truth items (keep the "
            f"folders predict wrote): {'; '.join(ambiguous[:10])}"
        )
    twice = {i: ns for i, ns in by_item.items() if len(ns) > 1}
    if twice:
        rows = [f"{gt.names[i]} <- {', '.join(ns)}" for i, ns in list(twice.items())[:10]]
        problems.append(
            f"{len(twice)} ground-truth item(s) have several predictions: {'; '.join(rows)}"
        )
    missing = [i for i in range(len(gt.names)) if i not in by_item]
    if missing:
        shown = [
            gt.names[i] if gt.keys[i][-1] == gt.names[i] else f"{gt.names[i]} ({gt.keys[i][-1]})"
            for i in missing[:10]
        ]
        problems.append(
            f"no prediction for {len(missing)} ground-truth item(s): {', '.join(shown)}"
            f"{' ...' if len(missing) > 10 else ''} (expected <name>.tif or <name>.png below "
            f"{pred_root}, named after the item or its image file)"
        )
    if unmatched:
        shown = [str(preds[n].relative_to(pred_root)) for n in unmatched[:10]]
        problems.append(
            f"no ground truth in {gt.root} for {len(unmatched)} prediction(s): "
            f"{', '.join(shown)}{' ...' if len(unmatched) > 10 else ''}"
        )
    if problems:
        raise FileNotFoundError(f"{pred_root}: " + "\n  ".join(problems))
    if own_labels:
        print(
            f"note: left out {len(own_labels)} prediction(s) of the ground truth's own label "
            f"files: {', '.join(own_labels[:5])}{' ...' if len(own_labels) > 5 else ''}"
        )
    if of_bad:
        print(
            f"note: left out {len(of_bad)} prediction(s) of skipped ground-truth items: "
            f"{', '.join(of_bad[:5])}{' ...' if len(of_bad) > 5 else ''}",
            file=sys.stderr,
        )
    return {i: ns[0] for i, ns in sorted(by_item.items())}


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


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


def read_sidecar(path: Path, ids, nonempty=None) -> tuple[dict | None, dict | None]:
    """Scores and classes by instance id from ``<name>.json`` (None where absent). ``ids``:
    the ids of the label file; ``nonempty``: those that must have a class when any has one
    (default ``ids``; a mask stack's empty masks have no record)."""
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
    needed = present if nonempty is None else set(int(i) for i in nonempty)
    if classes and not needed <= set(classes):
        missing = sorted(needed - set(classes))[:10]
        raise ValueError(f"{path}: 'class' given for some instances but not for ids {missing}")
    return (scores or None), (classes or None)


def prediction(path: Path):
    """The prediction in ``path`` (+ its sidecar) as numpy
    :class:`~instembed.structures.Instances`: instance ``k`` is the ``k``-th id in sorted order
    (the ``k``-th mask of a stack), with the sidecar's scores and classes."""
    import numpy as np

    from instembed.metrics.overlap import instance_ids
    from instembed.structures import Instances

    inst = read_instances(path)
    ids = instance_ids(inst)
    nonempty = None
    if inst.ndim == 3:
        nonempty = ids[inst.reshape(len(ids), -1).any(1)] if len(ids) else ids
    scores, classes = read_sidecar(path.with_suffix(".json"), ids, nonempty)
    score_arr = np.array([(scores or {}).get(int(i), 1.0) for i in ids], np.float32)
    class_arr = None
    if classes is not None:
        class_arr = np.array([classes.get(int(i), 0) for i in ids], np.int64)
    if inst.ndim == 3:
        return Instances(masks=inst, scores=score_arr, classes=class_arr)
    labels = np.zeros(inst.shape, np.int32)
    if len(ids):
        fg = inst > 0
        labels[fg] = np.searchsorted(ids, inst[fg]) + 1
    return Instances(labels=labels, scores=score_arr, classes=class_arr)


def _shape(instances) -> tuple[int, ...]:
    return tuple(instances.shape[1:]) if instances.ndim == 3 else tuple(instances.shape)


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


def _apply_threads(n: int | None) -> None:
    """``--threads``: the BLAS / OpenMP pools through threadpoolctl when installed (the
    OMP/MKL/OPENBLAS_NUM_THREADS variables are read too early to help once numpy is loaded),
    and torch's intra-op threads when torch is imported."""
    check_threads(n)
    if n is None:
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        pass
    else:
        threadpool_limits(limits=n)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def run(args: argparse.Namespace) -> int:
    check_threads(args.threads)
    groups = _parse_groups(args.metrics)
    stuff: tuple[int, ...] = ()
    if args.stuff_classes:
        stuff = tuple(int(c) for c in args.stuff_classes.split(",") if c.strip())

    from instembed.engine.evaluation import Scorer

    _apply_threads(args.threads)
    skip_bad = bool(getattr(args, "skip_bad", False))
    gt = _GroundTruth(args.gt, args.gt_format, skip_bad=skip_bad)
    for where, why in gt.bad:
        print(f"instembed evaluate: skipped ground truth {where}: {why}", file=sys.stderr)
    if not gt.names:
        raise ValueError(f"{args.gt}: no label files (.tif, .tiff, .png) found")
    preds = _label_files(args.pred, "pred")
    pairs = match(gt, preds, args.pred)

    scorer = None
    warned_classes = False
    skipped = list(gt.bad)
    for i, pname in pairs.items():
        try:
            g = gt.load(i)
        except (ValueError, OSError) as err:
            if not skip_bad:
                raise
            msg = str(err)
            print(
                f"instembed evaluate: skipped ground truth {gt.where(i)} (and its prediction "
                f"{pname}): {msg}",
                file=sys.stderr,
            )
            skipped.append((gt.where(i), msg))
            continue
        ppath = preds[pname]
        pred = prediction(ppath)
        g_inst = g if gt.fmt == "labels" else g.instances
        if _shape(pred.masks_or_labels) != _shape(g_inst):
            raise ValueError(
                f"{ppath}: size {_shape(pred.masks_or_labels)} differs from the ground truth "
                f"{gt.where(i)} size {_shape(g_inst)}"
            )
        g_classes = None if gt.fmt == "labels" else g.classes
        if pred.classes is not None and g_classes is None:
            raise ValueError(
                f"{ppath.with_suffix('.json')}: predictions have classes but the ground truth "
                f"{gt.where(i)} has none (use a --gt-format that reads classes)"
            )
        if pred.classes is None and g_classes is not None and not warned_classes:
            print("note: predictions have no classes: PQ and AP are class-agnostic")
            warned_classes = True
        gsem = None if gt.fmt == "labels" else g.semantic
        psem = None
        if gsem is not None:
            for suf in LABEL_SUFFIXES:
                cand = ppath.with_name(ppath.stem + SEMANTIC_SUFFIX + suf)
                if cand.is_file():
                    psem = read_semantic(cand)
                    if psem.shape != gsem.shape:
                        raise ValueError(
                            f"{cand}: size {psem.shape} differs from ground truth {gsem.shape}"
                        )
                    break
        if scorer is None:
            st = stuff or tuple(() if gt.fmt == "labels" else (g.meta.get("stuff_classes") or ()))
            num_classes = args.num_classes
            if num_classes is None and gsem is not None and psem is not None:
                num_classes = 255  # every id below the ignore index; absent classes drop out
            scorer = Scorer(
                metrics=groups, max_dets=args.max_dets, stuff_classes=st, num_classes=num_classes
            )
        try:
            scorer.add(g, pred, name=gt.names[i], gt_semantic=gsem, pred_semantic=psem)
        except ValueError as err:
            raise ValueError(f"{ppath} vs {gt.where(i)}: {err}") from err

    if scorer is None:
        raise ValueError(
            f"{args.gt}: no ground-truth item left to score ({len(skipped)} skipped as bad)"
        )
    summary = scorer.evaluator.summary(per_image=True)
    summary["gt"] = str(args.gt)
    summary["pred"] = str(args.pred)
    summary["gt_format"] = args.gt_format
    bad_where = {w for w, _ in skipped}
    summary["matched"] = {
        gt.names[i]: str(preds[p].relative_to(args.pred))
        for i, p in pairs.items()
        if gt.where(i) not in bad_where
    }
    if skip_bad:
        summary["skipped"] = [{"item": w, "error": why} for w, why in skipped]
    print_skipped = f"; {len(skipped)} bad ground-truth item(s) skipped" if skipped else ""
    print(
        f"instembed evaluate: {summary['n_images']} images, {summary['n_gt']} ground-truth and "
        f"{summary['n_pred']} predicted instances{print_skipped}"
    )
    keys = [k for k in TABLE_KEYS if k in summary]
    width = max(len(k) for k in keys)
    for k in keys:
        note = " (undefined in pycocotools)" if k in summary.get("coco_undefined", []) else ""
        print(f"  {k:<{width}}  {_fmt(summary[k])}{note}")
    if args.per_image:
        cols = [k for k in PER_IMAGE_KEYS if k in summary]
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

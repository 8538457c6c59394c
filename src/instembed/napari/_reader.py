"""napari reader for what ``instembed predict`` writes (see
:func:`instembed.engine.predict.write_prediction`): ``<stem>.tif`` (label image, or an
``(N, H, W)`` mask-stack TIFF for models whose instances overlap) beside ``<stem>.json``
(``{"image", "height", "width", "instances": [{"id", "score", "class", "area", "bbox"}]}``).

A label TIFF (or PNG), its JSON, or a prediction folder (every such pair in it, sub-folders
included) opens as Labels layers whose ``features`` hold each instance's score (and class) and
whose ``metadata["instembed"]`` holds the JSON table. A mask stack gives two layers: the labels
``predict`` paints from it (where masks overlap, the higher score on top -- what
:func:`instembed.segment` returns as ``labels``) and a mask-stack view (instance ``k`` on slice
``k - 1``). Files that are not instembed predictions are left to other readers.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

LABEL_SUFFIXES = (".tif", ".tiff", ".png")


def _table(path: Path) -> dict | None:
    """The prediction JSON at ``path``, or None when it is not one."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(data, dict) and isinstance(data.get("instances"), list)
    return data if ok and {"height", "width"} <= set(data) else None


def _label_file(json_path: Path) -> Path | None:
    for suffix in LABEL_SUFFIXES:
        candidate = json_path.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def find_predictions(path: str | Path) -> list[tuple[Path, Path]]:
    """``(label file, json)`` pairs written by ``instembed predict`` at ``path``: a label file
    or a JSON (its pair), or a folder (all pairs below it, sorted)."""
    path = Path(path)
    if path.is_dir():
        jsons = sorted(p for p in path.rglob("*.json") if not p.name.startswith("."))
    elif path.suffix.lower() == ".json":
        jsons = [path]
    elif path.suffix.lower() in LABEL_SUFFIXES and not path.stem.endswith("_overlay"):
        jsons = [path.with_suffix(".json")]
    else:
        return []
    pairs = []
    for js in jsons:
        labels = _label_file(js)
        if labels is not None and js.is_file() and _table(js) is not None:
            pairs.append((labels, js))
    return pairs


def get_reader(path):
    """npe2 ``get_reader``: :func:`read_predictions` when ``path`` (or every path of a list)
    holds instembed predictions, else None."""
    paths = path if isinstance(path, list) else [path]
    if not paths or not all(find_predictions(p) for p in paths):
        return None
    return read_predictions


def _scores_by_id(records: list[dict], n: int) -> tuple[np.ndarray, np.ndarray | None]:
    scores = np.zeros(n, np.float32)
    has_class = any("class" in r for r in records)
    classes = np.full(n, -1, np.int64) if has_class else None
    for r in records:
        i = int(r["id"]) - 1
        if 0 <= i < n:
            scores[i] = float(r.get("score", 1.0))
            if classes is not None:
                classes[i] = int(r.get("class", -1))
    return scores, classes


def read_prediction(labels_path: Path, json_path: Path) -> list[tuple]:
    """The layer data of one prediction (see the module docstring)."""
    from instembed.data.io import read_labels
    from instembed.napari._core import features_table, mask_stack_view
    from instembed.structures import masks_to_labels

    table = _table(json_path) or {"instances": []}
    records = table["instances"]
    arr = read_labels(labels_path)
    name = str(table.get("image") or labels_path.stem)
    meta = {"instembed": {"source": str(labels_path), **table}}
    if arr.ndim == 3:  # mask stack (N, H, W) bool
        n = arr.shape[0]
        scores, classes = _scores_by_id(records, n)
        painted = masks_to_labels(arr, scores).astype(np.int32)
        feats = features_table(scores, classes, n)
        return [
            (painted, {"name": name, "metadata": meta, "features": feats}, "labels"),
            (mask_stack_view(arr), {"name": f"{name} masks", "visible": False}, "labels"),
        ]
    labels = np.asarray(arr, np.int32)
    n = int(labels.max()) if labels.size else 0
    scores, classes = _scores_by_id(records, n)
    kw = {"name": name, "metadata": meta, "features": features_table(scores, classes, n)}
    return [(labels, kw, "labels")]


def read_predictions(path) -> list[tuple]:
    """All layers of the predictions at ``path`` (a path or a list of paths)."""
    layers = []
    for p in path if isinstance(path, list) else [path]:
        for labels_path, json_path in find_predictions(p):
            layers += read_prediction(labels_path, json_path)
    log.info("instembed napari reader: %d layer(s) from %s", len(layers), path)
    return layers

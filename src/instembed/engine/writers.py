"""Writers for predictions: instance table JSON, overlay PNG, COCO results (RLE), panoptic PNG.

Label images are written with :func:`instembed.data.io.write_labels` (TIFF / PNG).

* ``<stem>.json``: ``{"image": ..., "height": H, "width": W, "instances": [{"id", "score",
  "class", "area", "bbox": [x, y, w, h]}, ...]}`` (bbox in COCO order: column, row, width,
  height, in pixels, inclusive of the last pixel).
* COCO results: a list of ``{"image_id", "category_id", "segmentation": {"size": [H, W],
  "counts": str}, "score", "bbox", "area"}`` with compressed column-major RLE as in the COCO
  API (``pycocotools.mask.encode`` when installed, else :func:`encode_rle_py`, the same format;
  both live in :mod:`instembed.data.rle` and are re-exported here).
* Panoptic: PNG with ``id = R + 256 G + 256^2 B`` and a ``segments_info`` list, the COCO
  panoptic format (Kirillov et al. 2019 / panopticapi).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from instembed.data.rle import encode_rle, encode_rle_py

__all__ = [
    "coco_result_records",
    "encode_rle",
    "encode_rle_py",
    "instance_records",
    "overlay_rgb",
    "panoptic_segments",
    "write_json",
    "write_overlay",
    "write_panoptic_png",
]


# --------------------------------------------------------------------------- instance table
def instance_records(
    labels: np.ndarray, scores: np.ndarray | None = None, classes: np.ndarray | None = None
) -> list[dict]:
    """One dict per instance id 1..N of the label image (H, W): id, score, class, area, bbox.

    ``labels`` may also be an (N, H, W) bool mask stack (overlapping instances): mask i has
    id i + 1. Ids absent from ``labels`` (empty instances) are skipped. ``scores`` / ``classes``
    are (N,) arrays indexed by ``id - 1``; without scores every score is 1.0; without classes
    the records have no ``class`` (class-agnostic predictions score against any ground truth).
    """
    from scipy import ndimage as ndi

    labels = np.asarray(labels)
    if labels.ndim == 3:
        n = labels.shape[0]
        areas = np.concatenate([[0], labels.reshape(n, -1).sum(1)])
        boxes = [ndi.find_objects(m.astype(np.int32), max_label=1)[0] for m in labels]
    else:
        n = int(labels.max()) if labels.size else 0
        if n == 0:
            return []
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        boxes = ndi.find_objects(labels.astype(np.int32, copy=False), max_label=n)
    out = []
    for i in range(1, n + 1):
        box = boxes[i - 1]
        if box is None or areas[i] == 0:
            continue
        ys, xs = box
        rec = {"id": i, "score": float(scores[i - 1]) if scores is not None else 1.0}
        if classes is not None:  # class-agnostic predictions carry no class
            rec["class"] = int(classes[i - 1])
        rec["area"] = int(areas[i])
        rec["bbox"] = [
            int(xs.start),
            int(ys.start),
            int(xs.stop - xs.start),
            int(ys.stop - ys.start),
        ]
        out.append(rec)
    return out


def write_json(path: str | os.PathLike, data) -> Path:
    """Write JSON atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- overlay
def label_colors(n: int, seed: int = 7) -> np.ndarray:
    """(n + 1, 3) uint8 colours, row 0 black, the others bright and well separated."""
    rng = np.random.default_rng(seed)
    hue = (np.arange(n) * 0.618033988749895 + rng.random()) % 1.0
    sat = 0.65 + 0.35 * rng.random(n)
    val = 0.8 + 0.2 * rng.random(n)
    import matplotlib.colors as mcolors

    rgb = mcolors.hsv_to_rgb(np.stack([hue, sat, val], 1)) if n else np.zeros((0, 3))
    return np.concatenate([np.zeros((1, 3)), rgb]).__mul__(255).round().astype(np.uint8)


def overlay_rgb(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """(H, W, 3) uint8: the image (C, H, W) in gray / RGB with instances tinted, outlines opaque."""
    from skimage.segmentation import find_boundaries

    img = np.asarray(image, np.float32)
    if img.ndim == 2:
        img = img[None]
    if img.shape[0] >= 3:
        base = np.moveaxis(img[:3], 0, -1)
    else:
        base = np.repeat(img[0][..., None], 3, -1)
    lo, hi = np.percentile(base, 1), np.percentile(base, 99.5)
    base = np.clip((base - lo) / max(hi - lo, 1e-6), 0, 1)
    labels = np.asarray(labels)
    colors = label_colors(int(labels.max()) if labels.size else 0).astype(np.float32) / 255
    tint = colors[labels]
    fg = (labels > 0)[..., None]
    out = np.where(fg, (1 - alpha) * base + alpha * tint, base)
    edges = find_boundaries(labels, mode="inner")
    out[edges] = tint[edges]
    return (out * 255).round().astype(np.uint8)


def write_overlay(path: str | os.PathLike, image: np.ndarray, labels: np.ndarray) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay_rgb(image, labels)).save(path)
    return path


# --------------------------------------------------------------------------- COCO results
def coco_result_records(
    image_id: int | str,
    labels: np.ndarray,
    scores: np.ndarray | None = None,
    classes: np.ndarray | None = None,
) -> list[dict]:
    """COCO "results" entries (segm) for one image's label image (H, W) or (N, H, W) bool mask
    stack (overlapping instances)."""
    labels = np.asarray(labels)
    out = []
    for rec in instance_records(labels, scores, classes):
        mask = labels[rec["id"] - 1] if labels.ndim == 3 else labels == rec["id"]
        out.append(
            {
                "image_id": image_id,
                "category_id": rec.get("class", 1),
                "segmentation": encode_rle(mask),
                "score": rec["score"],
                "bbox": rec["bbox"],
                "area": rec["area"],
            }
        )
    return out


# --------------------------------------------------------------------------- panoptic
def panoptic_segments(
    labels: np.ndarray,
    classes: np.ndarray | None = None,
    semantic: np.ndarray | None = None,
    stuff_classes: tuple[int, ...] = (),
    min_stuff_area: int = 0,
) -> tuple[np.ndarray, list[dict]]:
    """(H, W) int32 segment-id map and COCO ``segments_info`` for a panoptic PNG.

    Things: each instance id ``i`` of ``labels`` is segment ``i`` with category ``classes[i-1]``
    (1 when None). Stuff: pixels outside every instance whose ``semantic`` class is in
    ``stuff_classes`` become one segment per class (ids after the instances), dropped when
    smaller than ``min_stuff_area``. Id 0 = void.
    """
    labels = np.asarray(labels)
    seg = labels.astype(np.int32).copy()
    infos = []
    for rec in instance_records(labels, None, classes):
        infos.append(
            {
                "id": rec["id"],
                "category_id": rec.get("class", 1),
                "area": rec["area"],
                "bbox": rec["bbox"],
                "iscrowd": 0,
                "isthing": 1,
            }
        )
    if semantic is not None and stuff_classes:
        next_id = int(labels.max()) + 1 if labels.size else 1
        free = labels == 0
        for c in stuff_classes:
            m = free & (semantic == c)
            area = int(m.sum())
            if area == 0 or area < min_stuff_area:
                continue
            ys, xs = np.nonzero(m)
            seg[m] = next_id
            infos.append(
                {
                    "id": next_id,
                    "category_id": int(c),
                    "area": area,
                    "bbox": [
                        int(xs.min()),
                        int(ys.min()),
                        int(xs.max() - xs.min() + 1),
                        int(ys.max() - ys.min() + 1),
                    ],
                    "iscrowd": 0,
                    "isthing": 0,
                }
            )
            next_id += 1
    return seg, infos


def write_panoptic_png(path: str | os.PathLike, segment_ids: np.ndarray) -> Path:
    """PNG with ``id = R + 256 * G + 256**2 * B`` (COCO panoptic)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = np.asarray(segment_ids, np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 256**3):
        raise ValueError(
            f"{path}: panoptic ids must be in [0, 256**3), got {ids.min()}..{ids.max()}"
        )
    rgb = np.stack([ids % 256, (ids // 256) % 256, ids // 256**2], -1).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return path

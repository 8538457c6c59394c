"""COCO layouts: instances json (polygons / RLE) and panoptic (json + PNG per image).

Instances: ``{"images": [...], "annotations": [...], "categories": [...]}`` in one json file,
image files looked up by ``file_name``. Segmentations may be polygons, uncompressed RLE or
compressed RLE (decoded by :mod:`instembed.data.rle`; polygons rasterised by pycocotools when
installed, else by scikit-image).

Panoptic: ``annotations/panoptic_<split>.json`` with ``segments_info`` per image and
``annotations/panoptic_<split>/<name>.png`` (segment id = R + 256 G + 256² B, 0 = void).

Either may be opened by the json file itself or by a folder whose ``annotations/`` (or the
folder itself) holds exactly one json.

Crowd regions (``iscrowd = 1``) are kept as crowd: ``Sample.meta["crowd"]`` is their
``(M, H, W)`` bool mask stack and ``Sample.meta["crowd_classes"]`` their ``(M,)`` category ids
(both absent when an image has none). Their pixels are also marked in ``ignore``, so training
never learns them as objects or as background; scoring
(:class:`instembed.engine.evaluation.Scorer`, ``instembed evaluate``) takes them out of
``ignore`` again and scores them as crowd ground truths (pycocotools' and panopticapi's rules).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from instembed.data import io
from instembed.data.readers.base import LABEL_DIRS, Item, Reader, _find_dir, _visible
from instembed.data.rle import rle_decode
from instembed.data.sample import Sample
from instembed.structures import IGNORE_INDEX

# ---------------------------------------------------------------------------------------------
# segmentations -> masks
# ---------------------------------------------------------------------------------------------


def polygons_to_mask(polygons: list[list[float]], h: int, w: int) -> np.ndarray:
    """COCO polygons ``[[x0, y0, x1, y1, ...], ...]`` -> (H, W) bool (union of the polygons).

    Uses pycocotools (the COCO tool's own rasteriser) when installed; otherwise scikit-image's
    polygon fill with pixel centres at integer coordinates, shifted by half a pixel to COCO's
    convention (pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``), which agrees with pycocotools
    except on boundary pixels.
    """
    try:
        from pycocotools import mask as cocomask
    except ImportError:
        cocomask = None
    for poly in polygons:
        if len(poly) < 6 or len(poly) % 2:
            raise ValueError(
                f"COCO polygon needs an even number >= 6 of coordinates, got {len(poly)}"
            )
    if cocomask is not None:
        rles = cocomask.frPyObjects([list(map(float, p)) for p in polygons], h, w)
        return cocomask.decode(cocomask.merge(rles)).astype(bool)
    from skimage.draw import polygon as fill

    out = np.zeros((h, w), bool)
    for poly in polygons:
        xy = np.asarray(poly, np.float64).reshape(-1, 2)
        rr, cc = fill(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape=(h, w))
        out[rr, cc] = True
    return out


def annotation_to_mask(segmentation, h: int, w: int) -> np.ndarray:
    """A COCO ``segmentation`` field (polygons, RLE or compressed RLE) -> (H, W) bool."""
    if isinstance(segmentation, list):
        return polygons_to_mask(segmentation, h, w)
    if isinstance(segmentation, dict) and "counts" in segmentation:
        if tuple(int(v) for v in segmentation["size"]) != (h, w):
            raise ValueError(f"RLE size {segmentation['size']} != image size {(h, w)}")
        return rle_decode(segmentation)
    raise ValueError(f"unknown COCO segmentation of type {type(segmentation).__name__}")


# ---------------------------------------------------------------------------------------------
# detection
# ---------------------------------------------------------------------------------------------


def _is_panoptic_json(path: Path) -> bool:
    """Whether the first MiB of the json mentions ``segments_info`` (the panoptic format)."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 20)
    return b'"segments_info"' in head


def _detect_json(root: Path, panoptic: bool) -> str | None:
    """The reason ``root`` is a COCO json (panoptic or not, as asked) or a folder with one."""
    if root.is_file():
        if root.suffix.lower() != ".json" or _is_panoptic_json(root) != panoptic:
            return None
        return "a json file with segments_info" if panoptic else "a json file"
    ann = root / "annotations"
    jsons = (
        _visible(ann, ann.glob("*.json")) if ann.is_dir() else _visible(root, root.glob("*.json"))
    )
    if len(jsons) == 1 and not _find_dir(root, LABEL_DIRS):
        if _is_panoptic_json(jsons[0]) == panoptic:
            return f"one json {jsons[0].name}"
    return None


# ---------------------------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------------------------


def _crowd_meta(masks: list[np.ndarray], classes: list[int]) -> dict:
    """``{"crowd": (M, H, W) bool, "crowd_classes": (M,) int64}``, or ``{}`` without crowd."""
    if not masks:
        return {}
    return {"crowd": np.stack(masks), "crowd_classes": np.asarray(classes, np.int64)}


class COCOReader(Reader):
    """COCO instances json: ``{"images": [...], "annotations": [...], "categories": [...]}``.

    ``root`` is the json file (or a folder whose ``annotations/`` holds exactly one json). Image
    files are looked up by ``file_name`` under ``image_root`` (default: tried in order the json's
    folder, its parent, ``parent/images``, ``parent/<json stem without instances_>``).
    Segmentations may be polygons, uncompressed RLE or compressed RLE. ``iscrowd`` regions are
    kept in ``meta["crowd"]`` / ``meta["crowd_classes"]`` (and marked in ``ignore`` for
    training, see the module docstring); ``classes`` holds each instance's ``category_id``; ``semantic`` is the category
    id per pixel (0 = background). Overlapping instances give an ``(N, H, W)`` stack, otherwise a
    label image (ids in annotation order).
    """

    format = "coco"
    layout = "a COCO instances json (+ image folder)"

    def __init__(self, root, *, image_root=None, normalize: str = "range", **kw) -> None:
        self.image_root = None if image_root is None else Path(image_root)
        super().__init__(root, normalize=normalize, **kw)

    @classmethod
    def detect(cls, root: Path) -> str | None:
        return _detect_json(root, panoptic=False)

    def _json_path(self) -> Path:
        if self.root.is_file():
            return self.root
        cands = (
            _visible(self.root / "annotations", (self.root / "annotations").glob("*.json"))
            if (self.root / "annotations").is_dir()
            else []
        )
        cands = cands or _visible(self.root, self.root.glob("*.json"))
        if len(cands) != 1:
            raise ValueError(
                f"{self.root}: expected one COCO json (or pass the json file itself), found "
                f"{[c.name for c in cands]}"
            )
        return cands[0]

    def _load_json(self) -> dict:
        self.json_path = self._json_path()
        try:
            data = json.loads(self.json_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{self.json_path}: cannot read COCO json ({err})") from err
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise ValueError(f"{self.json_path}: COCO json has no {key!r} list")
        self.categories = {int(c["id"]): c for c in data["categories"]}
        return data

    def _image_roots(self) -> list[Path]:
        if self.image_root is not None:
            return [self.image_root]
        j = self.json_path
        stem = j.stem.replace("instances_", "").replace("panoptic_", "")
        return [
            j.parent,
            j.parent.parent,
            j.parent.parent / "images",
            j.parent.parent / stem,
            j.parent / "images",
            j.parent.parent / "images" / stem,
        ]

    def _find_image(self, file_name: str) -> Path | None:
        for r in self._image_roots():
            if (r / file_name).is_file():
                return r / file_name
        return None

    def _index(self) -> list[Item]:
        data = self._load_json()
        anns: dict[int, list[dict]] = {}
        ids = {int(im["id"]) for im in data["images"]}
        for a in data["annotations"]:
            if int(a["image_id"]) not in ids:
                self._problem(
                    self.json_path,
                    f"annotation {a.get('id')} refers to unknown image_id {a['image_id']}",
                )
                continue
            if int(a["category_id"]) not in self.categories:
                self._problem(
                    self.json_path,
                    f"annotation {a.get('id')} has unknown category_id {a['category_id']}",
                )
            anns.setdefault(int(a["image_id"]), []).append(a)
        items = []
        for im in data["images"]:
            path = self._find_image(im["file_name"])
            if path is None:
                self._problem(
                    im["file_name"],
                    f"image file not found under {[str(r) for r in self._image_roots()]}",
                )
                continue
            items.append(
                Item(
                    Path(im["file_name"]).stem,
                    path,
                    [],
                    {"image": im, "anns": anns.get(int(im["id"]), [])},
                )
            )
        return items

    def _check(self, item: Item) -> None:
        im = item.extra["image"]
        shape = io.probe(item.image).shape
        if shape != (int(im["height"]), int(im["width"])):
            raise ValueError(
                f"{item.image}: image size {shape} differs from the json's "
                f"(height, width) = {(im['height'], im['width'])}"
            )

    def _load(self, item: Item) -> Sample:
        image, dtype = self._image(item.image)
        h, w = image.shape[-2:]
        masks, classes = [], []
        crowd, crowd_classes = [], []
        ignore = np.zeros((h, w), bool)
        for a in item.extra["anns"]:
            try:
                m = annotation_to_mask(a["segmentation"], h, w)
            except ValueError as err:
                raise ValueError(f"{self.json_path}: annotation {a.get('id')}: {err}") from err
            if a.get("iscrowd", 0):
                ignore |= m
                crowd.append(m)
                crowd_classes.append(int(a["category_id"]))
            else:
                masks.append(m)
                classes.append(int(a["category_id"]))
        stack = np.stack(masks) if masks else np.zeros((0, h, w), bool)
        semantic = np.zeros((h, w), np.int64)
        for m, c in zip(stack, classes):
            semantic[m] = c
        meta = {
            "image_dtype": dtype,
            "label_encoding": "coco",
            "category_names": {k: v.get("name", str(k)) for k, v in self.categories.items()},
            **_crowd_meta(crowd, crowd_classes),
        }
        if stack.sum(0).max(initial=0) > 1:
            instances = stack
        else:
            instances = np.zeros((h, w), np.int32)
            for k, m in enumerate(stack, start=1):
                instances[m] = k
        return Sample(
            image,
            instances,
            semantic=semantic,
            classes=np.asarray(classes, np.int64),
            ignore=ignore if ignore.any() else None,
            meta=meta,
        )


class COCOPanopticReader(COCOReader):
    """COCO panoptic: json with ``segments_info`` per image + one PNG per image.

    Layout: ``annotations/panoptic_<split>.json`` and ``annotations/panoptic_<split>/<name>.png``
    (segment id = R + 256 G + 256² B, 0 = void); images as for :class:`COCOReader`. Segments of
    categories with ``isthing = 1`` become instances (``classes`` = category id); stuff segments
    only enter ``semantic`` (category id per pixel, 255 = void); ``iscrowd`` segments are kept in
    ``meta["crowd"]`` / ``meta["crowd_classes"]`` and marked in ``ignore`` (module docstring). Panoptic segments never overlap, so the instances are a label image.
    """

    format = "coco_panoptic"
    layout = "panoptic json + PNG folder"

    def __init__(self, root, *, png_root=None, **kw) -> None:
        self.png_root = None if png_root is None else Path(png_root)
        super().__init__(root, **kw)

    @classmethod
    def detect(cls, root: Path) -> str | None:
        return _detect_json(root, panoptic=True)

    def _index(self) -> list[Item]:
        data = self._load_json()
        png_root = self.png_root or self.json_path.with_suffix("")
        items = []
        by_id = {int(im["id"]): im for im in data["images"]}
        for a in data["annotations"]:
            if "segments_info" not in a:
                raise ValueError(f"{self.json_path}: not a panoptic json (no segments_info)")
            im = by_id.get(int(a["image_id"]))
            if im is None:
                self._problem(self.json_path, f"annotation for unknown image_id {a['image_id']}")
                continue
            path = self._find_image(im["file_name"])
            png = png_root / a["file_name"]
            if path is None:
                self._problem(im["file_name"], "image file not found")
                continue
            if not png.is_file():
                self._problem(png, f"panoptic PNG of image {im['file_name']} not found")
                continue
            items.append(
                Item(
                    Path(im["file_name"]).stem,
                    path,
                    [png],
                    {"image": im, "segments": a["segments_info"]},
                )
            )
        return items

    def _check(self, item: Item) -> None:
        super()._check(item)
        sh = io.probe(item.labels[0]).shape
        if sh != io.probe(item.image).shape:
            raise ValueError(f"{item.labels[0]}: panoptic PNG size {sh} differs from image")

    def _load(self, item: Item) -> Sample:
        image, dtype = self._image(item.image)
        rgb = io.read_image(item.labels[0]).astype(np.int64)
        if rgb.ndim != 3 or rgb.shape[-1] < 3:
            raise ValueError(f"{item.labels[0]}: panoptic PNG must be RGB, got shape {rgb.shape}")
        seg = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
        h, w = seg.shape
        semantic = np.full((h, w), IGNORE_INDEX, np.int64)
        instances = np.zeros((h, w), np.int32)
        ignore = np.zeros((h, w), bool)
        classes = []
        crowd, crowd_classes = [], []
        present = set(np.unique(seg).tolist())
        for s in item.extra["segments"]:
            sid, cat = int(s["id"]), int(s["category_id"])
            if cat not in self.categories:
                raise ValueError(f"{self.json_path}: segment {sid} has unknown category {cat}")
            if sid not in present:
                continue
            m = seg == sid
            semantic[m] = cat
            if s.get("iscrowd", 0):
                ignore |= m
                crowd.append(m)
                crowd_classes.append(cat)
            elif self.categories[cat].get("isthing", 1):
                classes.append(cat)
                instances[m] = len(classes)
        return Sample(
            image,
            instances,
            semantic=semantic,
            classes=np.asarray(classes, np.int64),
            ignore=ignore if ignore.any() else None,
            meta={
                "image_dtype": dtype,
                "label_encoding": "coco_panoptic",
                **_crowd_meta(crowd, crowd_classes),
            },
        )

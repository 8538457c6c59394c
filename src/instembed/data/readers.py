"""Dataset readers: one class per on-disk layout, all yielding :class:`Sample`.

``open_dataset(path, format="auto")`` picks the reader (and logs which one and why). Every
reader is a read-only sequence: ``len(reader)``, ``reader[i] -> Sample`` (decoded on access),
``reader.format``, ``reader.items`` (the file index) and ``reader.bad`` (files skipped with
``skip_bad=True`` and why).

Checks on open (``validate="header"``, the default, reads only file headers; ``"full"`` decodes
every file; ``"none"`` skips them): an image without labels or labels without an image, a
missing, unreadable, empty or truncated file, image/label size mismatch, a label file with a
float or non-integer dtype; with ``"full"`` also negative ids, non-integer values and a label
image whose ids fill its dtype (overflowed). Problems raise one ``ValueError`` listing each file
and what was wrong, or, with ``skip_bad=True``, drop those items with a logged warning.

Layouts (see each reader's docstring): ``folder``, ``bbbc039``, ``bbbc010``, ``dsb2018``,
``cvppp``, ``coco``, ``coco_panoptic``, ``cityscapes``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from instembed.data import io
from instembed.data.sample import Sample
from instembed.structures import IGNORE_INDEX

log = logging.getLogger(__name__)

IMAGE_DIRS = ("images", "image", "imgs", "raw")
LABEL_DIRS = ("labels", "label", "masks", "mask", "gt", "ground_truth")
LABEL_SUFFIXES = ("", "_label", "_labels", "_mask", "_masks", "_gt", "_instances")
VALIDATE_MODES = ("header", "full", "none")


@dataclass
class Item:
    """One entry of a reader's index: the image file, its label file(s) and extras."""

    name: str
    image: Path
    labels: list[Path] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


class Reader(Sequence):
    """Base class: an indexed, validated, lazily decoded sequence of Samples.

    Subclasses implement ``_index() -> list[Item]`` and ``_load(item) -> Sample`` and may extend
    ``_check(item)`` (header checks; raise ``ValueError`` naming the file).
    """

    format = "base"
    layout = ""

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        normalize: str = "percentile",
        channels: int | None = None,
        validate: str = "header",
        skip_bad: bool = False,
    ) -> None:
        self.root = Path(root)
        if not self.root.exists():
            raise FileNotFoundError(f"{self.root}: no such file or folder")
        if normalize not in io.NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {io.NORMALIZATIONS}, got {normalize!r}")
        if validate not in VALIDATE_MODES:
            raise ValueError(f"validate must be one of {VALIDATE_MODES}, got {validate!r}")
        self.normalize = normalize
        self.channels = channels
        self.skip_bad = skip_bad
        self.bad: list[tuple[str, str]] = []
        self.items: list[Item] = self._index()  # index-time problems go to self._problems
        if not self.items and not self.__dict__.get("_problems"):
            raise ValueError(
                f"{self.root}: no images found for format {self.format!r}; expected {self.layout}"
            )
        if validate != "none":
            self._validate(full=validate == "full")
        else:
            self._report([])

    # --- subclass API -----------------------------------------------------------------------
    def _index(self) -> list[Item]:
        raise NotImplementedError

    def _load(self, item: Item) -> Sample:
        raise NotImplementedError

    def _check(self, item: Item) -> None:
        """Header checks: files complete and readable, labels integer and of the image's size."""
        shape = io.probe(item.image).shape
        for lab in item.labels:
            if lab.is_dir():
                continue
            info = io.probe(lab)
            if info.shape != shape:
                raise ValueError(
                    f"{lab}: label size {info.shape} (H, W) differs from image {item.image.name} "
                    f"size {shape}"
                )
            if info.dtype.startswith("float") and self._labels_must_be_integer():
                raise ValueError(f"{lab}: label file has dtype {info.dtype}, expected integers")

    def _labels_must_be_integer(self) -> bool:
        return True

    # --- plumbing -----------------------------------------------------------------------------
    def _problem(self, where, what: str) -> None:
        self.__dict__.setdefault("_problems", []).append((str(where), what))

    def _report(self, problems: list[tuple[str, str]]) -> None:
        problems = self.__dict__.pop("_problems", []) + problems
        if not problems:
            return
        lines = "\n".join(f"  {where}: {what}" for where, what in problems[:30])
        more = f"\n  ... and {len(problems) - 30} more" if len(problems) > 30 else ""
        if not self.skip_bad:
            raise ValueError(
                f"{self.root}: {len(problems)} problem(s) in the {self.format!r} data set "
                f"(pass skip_bad=True / --skip-bad to skip them):\n{lines}{more}"
            )
        log.warning(
            "%s: skipping %d bad item(s) of the %r data set:\n%s%s",
            self.root,
            len(problems),
            self.format,
            lines,
            more,
        )
        self.bad.extend(problems)

    def _validate(self, full: bool) -> None:
        problems, good = [], []
        for item in self.items:
            try:
                self._check(item)
                if full:
                    self._load(item)
            except (ValueError, OSError) as err:
                problems.append((item.name, str(err)))
                continue
            good.append(item)
        self.items = good
        self._report(problems)
        if not self.items:
            raise ValueError(f"{self.root}: no usable items left after skipping bad files")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        item = self.items[i]
        sample = self._load(item)
        sample.path = str(item.image)
        sample.meta.setdefault("name", item.name)
        sample.meta.setdefault("format", self.format)
        return sample.validate()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, {len(self)} images)"

    def _image(self, path: Path) -> tuple[np.ndarray, str]:
        return io.load_image(path, self.normalize, self.channels)


def _binary_mask(path: Path) -> np.ndarray:
    """(H, W) bool of a one-instance mask file (any non-zero pixel is inside)."""
    raw = io.read_image(path)
    if raw.ndim == 3:
        raw = raw[..., :3].max(-1) if raw.shape[-1] in (3, 4) else raw
    if raw.ndim != 2:
        raise ValueError(f"{path}: a mask must be a 2-D image, got shape {raw.shape}")
    return raw > 0


def _find_dir(root: Path, names: Sequence[str]) -> Path | None:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in io.IMAGE_SUFFIXES
    )


# ---------------------------------------------------------------------------------------------
# generic folder
# ---------------------------------------------------------------------------------------------


class FolderReader(Reader):
    """Generic folder: ``images/`` + ``labels/`` (or ``masks/``) matched by file stem.

    Layout::

        root/images/<stem>.(png|tif|tiff|jpg)       image, 8/16/32-bit, gray or RGB(A)
        root/labels/<stem>[_label|_mask|...].(png|tif)   instance labels (any encoding below)
        root/labels/<stem>/                          or: a folder of binary masks, one per instance
        root/semantic/<stem>.png                     optional semantic class ids (255 = void)
        root/classes.json                            optional {"<stem>": [class of id 1, ...]}

    Label files are decoded with ``encoding`` (default ``"auto"``, see
    :data:`instembed.data.io.LABEL_ENCODINGS`); a mask-stack TIFF (``instembed synth`` writes
    them for overlapping kinds) gives an ``(N, H, W)`` stack.
    """

    format = "folder"
    layout = "images/ and labels/ (or masks/) folders with files matched by name"

    def __init__(self, root, *, encoding: str = "auto", **kw) -> None:
        if encoding not in io.LABEL_ENCODINGS:
            raise ValueError(
                f"unknown label encoding {encoding!r}; expected one of {list(io.LABEL_ENCODINGS)}"
            )
        self.encoding = encoding
        super().__init__(root, **kw)

    def _dirs(self) -> tuple[Path, Path]:
        img_dir = _find_dir(self.root, IMAGE_DIRS)
        lab_dir = _find_dir(self.root, LABEL_DIRS)
        if img_dir is None or lab_dir is None:
            raise ValueError(
                f"{self.root}: expected an images/ folder and a labels/ (or masks/) folder, "
                f"found {sorted(p.name for p in self.root.iterdir() if p.is_dir())}"
            )
        return img_dir, lab_dir

    def _index(self) -> list[Item]:
        img_dir, lab_dir = self._dirs()
        images = _image_files(img_dir)
        labels = {p.stem: p for p in _image_files(lab_dir)}
        labels.update({p.name: p for p in lab_dir.iterdir() if p.is_dir()})
        sem_dir = self.root / "semantic"
        classes = {}
        if (self.root / "classes.json").is_file():
            classes = json.loads((self.root / "classes.json").read_text())
        used: set[str] = set()
        items = []
        for img in images:
            match = next(
                (labels[img.stem + s] for s in LABEL_SUFFIXES if img.stem + s in labels), None
            )
            if match is None:
                self._problem(
                    img,
                    f"image has no label file in {lab_dir.name}/ (looked for "
                    f"{img.stem}.png/.tif and {img.stem}_label/_mask...)",
                )
                continue
            used.add(match.stem if match.is_file() else match.name)
            extra = {}
            sem = (
                next(iter(sorted(sem_dir.glob(img.stem + ".*"))), None)
                if sem_dir.is_dir()
                else None
            )
            if sem is not None:
                extra["semantic"] = sem
            if img.stem in classes:
                extra["classes"] = classes[img.stem]
            items.append(Item(img.stem, img, [match], extra))
        for key, lab in sorted(labels.items()):
            if key not in used:
                self._problem(lab, f"label file has no image in {img_dir.name}/")
        return items

    def _check(self, item: Item) -> None:
        super()._check(item)
        if "semantic" in item.extra:
            sh = io.probe(item.extra["semantic"]).shape
            if sh != io.probe(item.image).shape:
                raise ValueError(f"{item.extra['semantic']}: semantic size {sh} != image size")

    def _load(self, item: Item) -> Sample:
        image, dtype = self._image(item.image)
        labels, enc = io.read_labels(item.labels[0], self.encoding, return_encoding=True)
        semantic = None
        if "semantic" in item.extra:
            semantic = io.read_labels(item.extra["semantic"], "ids").astype(np.int64)
        classes = item.extra.get("classes")
        return Sample(
            image=image,
            instances=labels,
            semantic=semantic,
            classes=None if classes is None else np.asarray(classes, np.int64),
            meta={"image_dtype": dtype, "label_encoding": enc},
        )


class BBBC039Reader(FolderReader):
    """BBBC039 (U2OS nuclei): ``images/*.tif`` (16-bit) + ``masks/*.png`` (same stem).

    Layout: ``root/[cell nuclei/]images/<name>.tif`` and ``root/[cell nuclei/]masks/<name>.png``.
    Masks are RGBA with G = B = 0 and R in {0, 1, 2, 3}: R is a colouring of touching nuclei,
    not an id, so an instance is one 4-connected region of one R value (BBBC039 SOURCE.md:
    23,617 nuclei over the 200 images this way, vs 19,582 foreground components).
    """

    format = "bbbc039"
    layout = "images/*.tif + masks/*.png (R channel = colouring, instance = connected component)"

    def __init__(self, root, **kw) -> None:
        kw.setdefault("encoding", "components")
        super().__init__(root, **kw)

    def _dirs(self) -> tuple[Path, Path]:
        base = _bbbc039_base(self.root) or self.root
        img, lab = base / "images", base / "masks"
        if not img.is_dir() or not lab.is_dir():
            raise ValueError(f"{self.root}: expected images/ and masks/ folders (BBBC039 layout)")
        return img, lab


def _bbbc039_base(root: Path) -> Path | None:
    for cand in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        if (cand / "images").is_dir() and (cand / "masks").is_dir():
            return cand
    return None


# ---------------------------------------------------------------------------------------------
# BBBC010 worms
# ---------------------------------------------------------------------------------------------


class BBBC010Reader(Reader):
    """BBBC010 (C. elegans live/dead): one binary mask per worm, worms overlap -> mask stack.

    Layout::

        root/BBBC010_v1_images/..._<WELL>_w2_<GUID>.tif        bright-field (channel w2), 16-bit
        root/BBBC010_v1_foreground_eachworm/<WELL>_<NN>_ground_truth.png   0/255, one per worm

    Image and masks are matched by the well id (``A01`` ... ``P24``). ``channel`` picks the
    image channel (``"w2"`` bright-field; ``"w1"`` if those files are present).
    """

    format = "bbbc010"
    layout = (
        "BBBC010_v1_images/*_w2_*.tif + BBBC010_v1_foreground_eachworm/<WELL>_<NN>_ground_truth.png"
    )
    _IMG = re.compile(r"_([A-P]\d{2})_(w\d)_")
    _MASK = re.compile(r"^([A-P]\d{2})_(\d+)_ground_truth\.png$")

    def __init__(self, root, *, channel: str = "w2", **kw) -> None:
        self.channel = channel
        super().__init__(root, **kw)

    def _index(self) -> list[Item]:
        img_dir = self.root / "BBBC010_v1_images"
        mask_dir = self.root / "BBBC010_v1_foreground_eachworm"
        if not img_dir.is_dir() or not mask_dir.is_dir():
            raise ValueError(
                f"{self.root}: expected folders BBBC010_v1_images/ and "
                "BBBC010_v1_foreground_eachworm/ (BBBC010 layout)"
            )
        images: dict[str, Path] = {}
        for p in _image_files(img_dir):
            m = self._IMG.search(p.name)
            if m and m.group(2) == self.channel:
                images[m.group(1)] = p
        masks: dict[str, list[tuple[int, Path]]] = {}
        for p in sorted(mask_dir.iterdir()):
            m = self._MASK.match(p.name)
            if m:
                masks.setdefault(m.group(1), []).append((int(m.group(2)), p))
        items = []
        for well, img in sorted(images.items()):
            if well not in masks:
                self._problem(img, f"image of well {well} has no worm masks in {mask_dir.name}/")
                continue
            paths = [p for _, p in sorted(masks[well])]
            items.append(Item(well, img, paths))
        for well in sorted(set(masks) - set(images)):
            self._problem(
                masks[well][0][1], f"worm masks of well {well} have no {self.channel} image"
            )
        return items

    def _check(self, item: Item) -> None:
        _check_mask_sizes(item)

    def _load(self, item: Item) -> Sample:
        image, dtype = self._image(item.image)
        masks = np.stack([_binary_mask(p) for p in item.labels])
        return Sample(
            image=image,
            instances=masks,
            semantic=masks.any(0).astype(np.int64),
            classes=np.ones(len(masks), np.int64),
            meta={"image_dtype": dtype, "label_encoding": "stack"},
        )


def _check_mask_sizes(item: Item) -> None:
    """Header check of the one-mask-per-object layouts: every mask has the image's size."""
    shape = io.probe(item.image).shape
    for p in item.labels:
        sh = io.probe(p).shape
        if sh != shape:
            raise ValueError(f"{p}: mask size {sh} differs from image size {shape}")


# ---------------------------------------------------------------------------------------------
# DSB2018 / BBBC038
# ---------------------------------------------------------------------------------------------


class DSB2018Reader(Reader):
    """Data Science Bowl 2018 / BBBC038: one folder per image, one binary mask per nucleus.

    Layout::

        root/[stage1_train/]<id>/images/<id>.png     RGBA (alpha dropped) or gray
        root/[stage1_train/]<id>/masks/<mask>.png    0/255, one per nucleus

    Gives a label image with ``k`` = position of the mask file in sorted order; pixels covered
    by more than one mask (rare) go to the later mask and are marked in ``ignore``. With
    ``as_stack=True`` the masks are returned as an ``(N, H, W)`` stack instead.
    """

    format = "dsb2018"
    layout = "<id>/images/<id>.png + <id>/masks/*.png"

    def __init__(self, root, *, as_stack: bool = False, normalize: str = "range", **kw) -> None:
        self.as_stack = as_stack
        super().__init__(root, normalize=normalize, **kw)

    def _index(self) -> list[Item]:
        base = self.root / "stage1_train" if (self.root / "stage1_train").is_dir() else self.root
        items = []
        for d in sorted(p for p in base.iterdir() if p.is_dir()):
            imgs = _image_files(d / "images") if (d / "images").is_dir() else []
            if not imgs:
                if (d / "masks").is_dir():
                    self._problem(d, "masks/ without an image in images/")
                continue
            masks = _image_files(d / "masks") if (d / "masks").is_dir() else []
            if not masks:
                self._problem(imgs[0], "image has no masks in masks/")
                continue
            items.append(Item(d.name, imgs[0], masks))
        return items

    def _check(self, item: Item) -> None:
        _check_mask_sizes(item)

    def _load(self, item: Item) -> Sample:
        image, dtype = self._image(item.image)
        meta = {"image_dtype": dtype, "label_encoding": "masks"}
        if self.as_stack:
            masks = np.stack([_binary_mask(p) for p in item.labels])
            return Sample(image, masks, semantic=masks.any(0).astype(np.int64), meta=meta)
        # one mask at a time: a 1024 x 1024 image with 375 nuclei would need 390 MB as a stack
        labels = np.zeros(image.shape[-2:], np.int32)
        cover = np.zeros(image.shape[-2:], np.uint8)
        for k, p in enumerate(item.labels, start=1):
            m = _binary_mask(p)
            if m.shape != labels.shape:
                raise ValueError(f"{p}: mask size {m.shape} differs from image size {labels.shape}")
            labels[m] = k
            cover += m
        overlap = cover > 1
        meta["overlap_pixels"] = int(overlap.sum())
        return Sample(
            image,
            labels,
            semantic=(labels > 0).astype(np.int64),
            ignore=overlap if overlap.any() else None,
            meta=meta,
        )


# ---------------------------------------------------------------------------------------------
# CVPPP
# ---------------------------------------------------------------------------------------------


class CVPPPReader(Reader):
    """CVPPP leaf segmentation (LSC): ``plantNNN_rgb.png`` + ``plantNNN_label.png``.

    Layout (any depth below ``root``, e.g. ``A1/``, ``A2/``)::

        plantNNN_rgb.png      RGB(A) image
        plantNNN_label.png    leaf labels: palette PNG (index = leaf id) or RGB-coded colours
        plantNNN_fg.png       optional plant foreground mask (gives ``semantic``)

    Without ``_fg.png`` the semantic mask is the union of the leaves.
    """

    format = "cvppp"
    layout = "plantNNN_rgb.png + plantNNN_label.png [+ plantNNN_fg.png]"

    def __init__(self, root, *, normalize: str = "range", **kw) -> None:
        super().__init__(root, normalize=normalize, **kw)

    def _index(self) -> list[Item]:
        items = []
        rgb = sorted(self.root.rglob("*_rgb.png"))
        for img in rgb:
            stem = img.name[: -len("_rgb.png")]
            lab = img.with_name(stem + "_label.png")
            rel = str(img.parent.relative_to(self.root) / stem)
            if not lab.is_file():
                self._problem(img, f"image has no label file {lab.name}")
                continue
            extra = {}
            fg = img.with_name(stem + "_fg.png")
            if fg.is_file():
                extra["fg"] = fg
            items.append(Item(rel, img, [lab], extra))
        for lab in sorted(self.root.rglob("*_label.png")):
            if not lab.with_name(lab.name[: -len("_label.png")] + "_rgb.png").is_file():
                self._problem(lab, "label file has no _rgb.png image")
        return items

    def _load(self, item: Item) -> Sample:
        image, dtype = self._image(item.image)
        labels, enc = io.read_labels(item.labels[0], "auto", return_encoding=True)
        if enc == "binary":  # a one-leaf palette/gray file: the value is the id, not a mask
            labels = (labels > 0).astype(np.int32)
        if "fg" in item.extra:
            fg = io.decode_labels(io.read_image(item.extra["fg"]), "binary", item.extra["fg"])[0]
            semantic = (fg > 0).astype(np.int64)
        else:
            semantic = (labels > 0).astype(np.int64)
        return Sample(
            image,
            labels,
            semantic=semantic,
            classes=np.ones(int((np.unique(labels) > 0).sum()), np.int64),
            meta={"image_dtype": dtype, "label_encoding": enc},
        )


# ---------------------------------------------------------------------------------------------
# COCO (instances json; panoptic PNG + json)
# ---------------------------------------------------------------------------------------------


def rle_decode(rle: dict) -> np.ndarray:
    """COCO RLE (uncompressed ``counts`` list or compressed string) -> (H, W) bool mask.

    COCO stores runs in column-major (Fortran) order, starting with a run of zeros. The
    compressed form packs each count in 5-bit groups of an ASCII character (+48), with a
    continuation bit (0x20) and sign extension on the last group; from the third count on,
    values are stored as the difference to the count two places before.
    """
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (bytes, str)):
        counts = _rle_string_to_counts(counts.decode() if isinstance(counts, bytes) else counts)
    counts = np.asarray(counts, np.int64)
    if counts.sum() != h * w:
        raise ValueError(f"RLE counts sum to {counts.sum()}, expected h*w = {h * w}")
    values = np.zeros(len(counts), bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape(w, h).T


def _rle_string_to_counts(s: str) -> list[int]:
    counts: list[int] = []
    i = 0
    while i < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[i]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            i += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


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


class COCOReader(Reader):
    """COCO instances json: ``{"images": [...], "annotations": [...], "categories": [...]}``.

    ``root`` is the json file (or a folder whose ``annotations/`` holds exactly one json). Image
    files are looked up by ``file_name`` under ``image_root`` (default: tried in order the json's
    folder, its parent, ``parent/images``, ``parent/<json stem without instances_>``).
    Segmentations may be polygons, uncompressed RLE or compressed RLE. ``iscrowd`` regions go to
    ``ignore``; ``classes`` holds each instance's ``category_id``; ``semantic`` is the category
    id per pixel (0 = background). Overlapping instances give an ``(N, H, W)`` stack, otherwise a
    label image (ids in annotation order).
    """

    format = "coco"
    layout = "a COCO instances json (+ image folder)"

    def __init__(self, root, *, image_root=None, normalize: str = "range", **kw) -> None:
        self.image_root = None if image_root is None else Path(image_root)
        super().__init__(root, normalize=normalize, **kw)

    def _json_path(self) -> Path:
        if self.root.is_file():
            return self.root
        cands = (
            sorted((self.root / "annotations").glob("*.json"))
            if (self.root / "annotations").is_dir()
            else []
        )
        cands = cands or sorted(self.root.glob("*.json"))
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
        ignore = np.zeros((h, w), bool)
        for a in item.extra["anns"]:
            try:
                m = annotation_to_mask(a["segmentation"], h, w)
            except ValueError as err:
                raise ValueError(f"{self.json_path}: annotation {a.get('id')}: {err}") from err
            if a.get("iscrowd", 0):
                ignore |= m
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
    only enter ``semantic`` (category id per pixel, 255 = void); ``iscrowd`` segments are marked
    in ``ignore``. Panoptic segments never overlap, so the instances are a label image.
    """

    format = "coco_panoptic"
    layout = "panoptic json + PNG folder"

    def __init__(self, root, *, png_root=None, **kw) -> None:
        self.png_root = None if png_root is None else Path(png_root)
        super().__init__(root, **kw)

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
            elif self.categories[cat].get("isthing", 1):
                classes.append(cat)
                instances[m] = len(classes)
        return Sample(
            image,
            instances,
            semantic=semantic,
            classes=np.asarray(classes, np.int64),
            ignore=ignore if ignore.any() else None,
            meta={"image_dtype": dtype, "label_encoding": "coco_panoptic"},
        )


# ---------------------------------------------------------------------------------------------
# Cityscapes
# ---------------------------------------------------------------------------------------------

# Cityscapes label table (cityscapesScripts ``labels.py``): id -> (name, trainId, hasInstances).
CITYSCAPES_LABELS: dict[int, tuple[str, int, bool]] = {
    0: ("unlabeled", 255, False), 1: ("ego vehicle", 255, False),
    2: ("rectification border", 255, False), 3: ("out of roi", 255, False),
    4: ("static", 255, False), 5: ("dynamic", 255, False), 6: ("ground", 255, False),
    7: ("road", 0, False), 8: ("sidewalk", 1, False), 9: ("parking", 255, False),
    10: ("rail track", 255, False), 11: ("building", 2, False), 12: ("wall", 3, False),
    13: ("fence", 4, False), 14: ("guard rail", 255, False), 15: ("bridge", 255, False),
    16: ("tunnel", 255, False), 17: ("pole", 5, False), 18: ("polegroup", 255, False),
    19: ("traffic light", 6, False), 20: ("traffic sign", 7, False),
    21: ("vegetation", 8, False), 22: ("terrain", 9, False), 23: ("sky", 10, False),
    24: ("person", 11, True), 25: ("rider", 12, True), 26: ("car", 13, True),
    27: ("truck", 14, True), 28: ("bus", 15, True), 29: ("caravan", 255, True),
    30: ("trailer", 255, True), 31: ("train", 16, True), 32: ("motorcycle", 17, True),
    33: ("bicycle", 18, True),
}  # fmt: skip
#: the 19 evaluated classes, index = trainId
CITYSCAPES_TRAIN_CLASSES: tuple[str, ...] = tuple(
    name
    for _id, (name, tid, _i) in sorted(CITYSCAPES_LABELS.items(), key=lambda t: t[1][1])
    if tid != 255
)
CITYSCAPES_THINGS: tuple[int, ...] = tuple(range(11, 19))
CITYSCAPES_STUFF: tuple[int, ...] = tuple(range(0, 11))


class CityscapesReader(Reader):
    """Cityscapes fine annotations.

    Layout::

        root/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
        root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_instanceIds.png
        root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

    ``semantic`` is the trainId (19 classes, 255 = void) of each pixel's labelId. In
    ``instanceIds`` a value ``>= 1000`` is ``labelId * 1000 + k`` (instance ``k`` of a thing
    class); a thing-class pixel with a value ``< 1000`` belongs to a crowd/group region and is
    marked in ``ignore``, as are instances of classes not evaluated (caravan, trailer).
    ``classes`` holds each instance's trainId. ``split`` picks ``train``/``val``/... (default: all).
    """

    format = "cityscapes"
    layout = "leftImg8bit/<split>/<city>/*_leftImg8bit.png + gtFine/<split>/<city>/*_gtFine_{instanceIds,labelIds}.png"

    def __init__(self, root, *, split: str | None = None, normalize: str = "range", **kw) -> None:
        self.split = split
        super().__init__(root, normalize=normalize, **kw)

    def _index(self) -> list[Item]:
        img_root, gt_root = self.root / "leftImg8bit", self.root / "gtFine"
        if not img_root.is_dir() or not gt_root.is_dir():
            raise ValueError(f"{self.root}: expected leftImg8bit/ and gtFine/ folders (Cityscapes)")
        if self.split is not None:
            img_root, gt_root = img_root / self.split, gt_root / self.split
            if not img_root.is_dir():
                raise ValueError(f"{self.root}: no split {self.split!r} under leftImg8bit/")
        items = []
        base = self.root / "leftImg8bit"
        for img in sorted(img_root.rglob("*_leftImg8bit.png")):
            rel = img.relative_to(base)
            prefix = img.name[: -len("_leftImg8bit.png")]
            gt_dir = self.root / "gtFine" / rel.parent
            inst = gt_dir / f"{prefix}_gtFine_instanceIds.png"
            lab = gt_dir / f"{prefix}_gtFine_labelIds.png"
            missing = [p.name for p in (inst, lab) if not p.is_file()]
            if missing:
                self._problem(img, f"no ground truth {missing} in {gt_dir}")
                continue
            items.append(Item(prefix, img, [inst, lab]))
        return items

    def _load(self, item: Item) -> Sample:
        image, dtype = self._image(item.image)
        inst_raw = io.read_image(item.labels[0]).astype(np.int64)
        label_ids = io.read_image(item.labels[1]).astype(np.int64)
        if inst_raw.ndim != 2 or label_ids.ndim != 2:
            raise ValueError(f"{item.labels[0]}: Cityscapes id images must be single-channel")
        lut = np.full(256, IGNORE_INDEX, np.int64)
        for lid, (_n, tid, _i) in CITYSCAPES_LABELS.items():
            lut[lid] = tid
        if label_ids.max(initial=0) > 255 or label_ids.min(initial=0) < 0:
            raise ValueError(f"{item.labels[1]}: labelIds outside 0..255")
        semantic = lut[label_ids]
        instances = np.zeros(inst_raw.shape, np.int32)
        ignore = np.zeros(inst_raw.shape, bool)
        classes = []
        has_inst = {lid for lid, (_n, _t, hi) in CITYSCAPES_LABELS.items() if hi}
        for v in np.unique(inst_raw):
            m = inst_raw == v
            lid = int(v // 1000) if v >= 1000 else int(v)
            if lid not in has_inst:
                continue
            tid = CITYSCAPES_LABELS[lid][1]
            if v < 1000 or tid == IGNORE_INDEX:
                ignore |= m
                continue
            classes.append(tid)
            instances[m] = len(classes)
        return Sample(
            image,
            instances,
            semantic=semantic,
            classes=np.asarray(classes, np.int64),
            ignore=ignore if ignore.any() else None,
            meta={
                "image_dtype": dtype,
                "label_encoding": "cityscapes",
                "class_names": CITYSCAPES_TRAIN_CLASSES,
                "thing_classes": CITYSCAPES_THINGS,
                "stuff_classes": CITYSCAPES_STUFF,
            },
        )


# ---------------------------------------------------------------------------------------------
# format detection and the entry point
# ---------------------------------------------------------------------------------------------

FORMATS: dict[str, type[Reader]] = {
    "folder": FolderReader,
    "bbbc039": BBBC039Reader,
    "bbbc010": BBBC010Reader,
    "dsb2018": DSB2018Reader,
    "cvppp": CVPPPReader,
    "coco": COCOReader,
    "coco_panoptic": COCOPanopticReader,
    "cityscapes": CityscapesReader,
}


def _is_panoptic_json(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(1 << 20)
    return b'"segments_info"' in head


def detect_format(path: str | os.PathLike) -> tuple[str, str]:
    """Guess the layout of ``path``; returns ``(format, reason)``. Raises ``ValueError`` with the
    layouts looked for when none fits."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder")
    if p.is_file():
        if p.suffix.lower() == ".json":
            if _is_panoptic_json(p):
                return "coco_panoptic", "a json file with segments_info"
            return "coco", "a json file"
        raise ValueError(f"{p}: a file can only be a COCO json; give a folder for other layouts")
    if (p / "leftImg8bit").is_dir() and (p / "gtFine").is_dir():
        return "cityscapes", "leftImg8bit/ and gtFine/ folders"
    if (p / "BBBC010_v1_foreground_eachworm").is_dir():
        return "bbbc010", "a BBBC010_v1_foreground_eachworm/ folder"
    subdirs = sorted(d for d in p.iterdir() if d.is_dir())
    b39 = _bbbc039_base(p)
    if b39 is not None:
        masks = _image_files(b39 / "masks")
        if masks and masks[0].suffix.lower() == ".png":
            raw = io.read_image(masks[0])
            if raw.ndim == 3 and raw.shape[-1] in (3, 4) and not raw[..., 1:3].any():
                values = sorted(np.unique(raw[..., 0]).tolist())
                return "bbbc039", f"colour-coded masks (R only, values {values[:6]})"
    base = p / "stage1_train" if (p / "stage1_train").is_dir() else p
    dsb = (
        [d for d in subdirs if d.parent == base]
        if base == p
        else sorted(d for d in base.iterdir() if d.is_dir())
    )
    if dsb and 2 * sum(any((d / "images").glob(d.name + ".*")) for d in dsb[:6]) > len(dsb[:6]):
        return "dsb2018", "<id>/images/<id>.png + <id>/masks/ folders"
    ann = p / "annotations"
    jsons = sorted(ann.glob("*.json")) if ann.is_dir() else sorted(p.glob("*.json"))
    if len(jsons) == 1 and not _find_dir(p, LABEL_DIRS):
        return (
            "coco_panoptic" if _is_panoptic_json(jsons[0]) else "coco"
        ), f"one json {jsons[0].name}"
    if (
        next(p.rglob("*_rgb.png"), None) is not None
        and next(p.rglob("*_label.png"), None) is not None
    ):
        return "cvppp", "*_rgb.png + *_label.png files"
    if _find_dir(p, IMAGE_DIRS) and _find_dir(p, LABEL_DIRS):
        return "folder", "images/ + labels/ folders"
    raise ValueError(
        f"{p}: cannot tell the data set layout (found folders {[d.name for d in subdirs][:10]}); "
        "expected one of: "
        + "; ".join(f"{k}: {v.layout}" for k, v in FORMATS.items())
        + ". Pass format=... to choose one."
    )


def open_dataset(path: str | os.PathLike, format: str = "auto", **kw) -> Reader:
    """Open a data set folder (or COCO json) as a :class:`Reader` of Samples.

    ``format``: ``"auto"`` (detect and log the choice) or one of :data:`FORMATS`. ``kw`` go to
    the reader: ``normalize`` (``"percentile"``/``"percentile_darkbg"``/``"range"``/``"none"``), ``channels``,
    ``validate`` (``"header"``/``"full"``/``"none"``), ``skip_bad`` and the reader's own options.
    """
    if format == "auto":
        format, why = detect_format(path)
        log.info("%s: detected format %r (%s)", path, format, why)
    if format not in FORMATS:
        raise ValueError(
            f"unknown data set format {format!r}; expected 'auto' or one of {sorted(FORMATS)}"
        )
    reader = FORMATS[format](path, **kw)
    return reader

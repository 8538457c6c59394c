"""Generic folder layout: ``images/`` + ``labels/`` (or ``masks/``) matched by file stem.

Layout::

    root/images/<stem>.(png|tif|tiff|jpg)       image, 8/16/32-bit, gray or RGB(A)
    root/labels/<stem>[_label|_mask|...].(png|tif)   instance labels (any encoding below)
    root/labels/<stem>/                          or: a folder of binary masks, one per instance
    root/semantic/<stem>.png                     optional semantic class ids (255 = void)
    root/classes.json                            optional {"<stem>": [class of id 1, ...]}

The image folder may also be called ``image/``, ``imgs/`` or ``raw/``; the label folder
``label/``, ``masks/``, ``mask/``, ``gt/`` or ``ground_truth/``. Label files are decoded with
``encoding`` (default ``"auto"``, see :data:`instembed.data.io.LABEL_ENCODINGS`); a mask-stack
TIFF (``instembed synth`` writes them for overlapping kinds) gives an ``(N, H, W)`` stack.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from instembed.data import io
from instembed.data.readers.base import (
    IMAGE_DIRS,
    LABEL_DIRS,
    Item,
    Reader,
    _find_dir,
    _image_files,
    _subdirs,
    _visible,
)
from instembed.data.sample import Sample

#: name endings a label file may add to its image's stem
LABEL_SUFFIXES = ("", "_label", "_labels", "_mask", "_masks", "_gt", "_instances")


class FolderReader(Reader):
    """Generic folder: ``images/`` + ``labels/`` (or ``masks/``) matched by file stem.

    See the module docstring for the layout. ``encoding`` picks how label files are decoded
    (default ``"auto"``).
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

    @classmethod
    def detect(cls, root: Path) -> str | None:
        if _find_dir(root, IMAGE_DIRS) and _find_dir(root, LABEL_DIRS):
            return "images/ + labels/ folders"
        return None

    def _dirs(self) -> tuple[Path, Path]:
        img_dir = _find_dir(self.root, IMAGE_DIRS)
        lab_dir = _find_dir(self.root, LABEL_DIRS)
        if img_dir is None or lab_dir is None:
            raise ValueError(
                f"{self.root}: expected an images/ folder and a labels/ (or masks/) folder, "
                f"found {[p.name for p in _subdirs(self.root)]}"
            )
        return img_dir, lab_dir

    def _index(self) -> list[Item]:
        img_dir, lab_dir = self._dirs()
        images = _image_files(img_dir)
        labels = {p.stem: p for p in _image_files(lab_dir)}
        labels.update({p.name: p for p in _subdirs(lab_dir)})
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
                next(iter(_visible(sem_dir, sem_dir.glob(img.stem + ".*"))), None)
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

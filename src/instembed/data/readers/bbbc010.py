"""BBBC010 (C. elegans live/dead assay): one binary mask per worm; worms overlap.

Layout::

    root/BBBC010_v1_images/..._<WELL>_w2_<GUID>.tif        bright-field (channel w2), 16-bit
    root/BBBC010_v1_foreground_eachworm/<WELL>_<NN>_ground_truth.png   0/255, one per worm

Image and masks are matched by the well id (``A01`` ... ``P24``). Because worms overlap, the
instances of a sample are an ``(N, H, W)`` mask stack.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from instembed.data.readers.base import (
    Item,
    Reader,
    _binary_mask,
    _check_mask_sizes,
    _image_files,
)
from instembed.data.sample import Sample

IMAGE_FOLDER = "BBBC010_v1_images"
MASK_FOLDER = "BBBC010_v1_foreground_eachworm"


class BBBC010Reader(Reader):
    """BBBC010 (C. elegans live/dead): one binary mask per worm, worms overlap -> mask stack.

    See the module docstring for the layout. ``channel`` picks the image channel (``"w2"``
    bright-field; ``"w1"`` if those files are present).
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

    @classmethod
    def detect(cls, root: Path) -> str | None:
        if (root / MASK_FOLDER).is_dir():
            return f"a {MASK_FOLDER}/ folder"
        return None

    def _index(self) -> list[Item]:
        img_dir = self.root / IMAGE_FOLDER
        mask_dir = self.root / MASK_FOLDER
        if not img_dir.is_dir() or not mask_dir.is_dir():
            raise ValueError(
                f"{self.root}: expected folders {IMAGE_FOLDER}/ and {MASK_FOLDER}/ (BBBC010 layout)"
            )
        images: dict[str, Path] = {}
        for p in _image_files(img_dir):
            m = self._IMG.search(p.name)
            if m and m.group(2) == self.channel:
                images[m.group(1)] = p
        masks: dict[str, list[tuple[int, Path]]] = {}
        for p in _image_files(mask_dir):
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

"""Data Science Bowl 2018 / BBBC038: one folder per image, one binary mask per nucleus.

Layout::

    root/[stage1_train/]<id>/images/<id>.png     RGBA (alpha dropped) or gray
    root/[stage1_train/]<id>/masks/<mask>.png    0/255, one per nucleus
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from instembed.data.readers.base import (
    Item,
    Reader,
    _binary_mask,
    _check_mask_sizes,
    _image_files,
    _subdirs,
)
from instembed.data.sample import Sample


def _base(root: Path) -> Path:
    """The folder holding the per-image folders: ``root/stage1_train`` if present, else root."""
    return root / "stage1_train" if (root / "stage1_train").is_dir() else root


class DSB2018Reader(Reader):
    """Data Science Bowl 2018 / BBBC038 (layout in the module docstring).

    Gives a label image with ``k`` = position of the mask file in sorted order; pixels covered
    by more than one mask (rare) go to the later mask and are marked in ``ignore``. With
    ``as_stack=True`` the masks are returned as an ``(N, H, W)`` stack instead.
    """

    format = "dsb2018"
    layout = "<id>/images/<id>.png + <id>/masks/*.png"

    def __init__(self, root, *, as_stack: bool = False, normalize: str = "range", **kw) -> None:
        self.as_stack = as_stack
        super().__init__(root, normalize=normalize, **kw)

    @classmethod
    def detect(cls, root: Path) -> str | None:
        """More than half of the first (up to) six sub-folders ``<id>`` hold images/<id>.*."""
        if not root.is_dir():
            return None
        dirs = _subdirs(_base(root))[:6]
        hits = sum(any((d / "images").glob(d.name + ".*")) for d in dirs)
        if dirs and 2 * hits > len(dirs):
            return "<id>/images/<id>.png + <id>/masks/ folders"
        return None

    def _index(self) -> list[Item]:
        items = []
        for d in _subdirs(_base(self.root)):
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

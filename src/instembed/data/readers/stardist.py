"""StarDist training layouts: images and integer label masks paired by file name.

Layouts (``<split>`` is any sub-folder, e.g. ``train/``, ``test/``)::

    root/<split>/images/<name>.tif + root/<split>/masks/<name>.tif    the StarDist training layout
    root/images/<name>.tif + root/masks/<name>.tif                    the same without splits
    root/[images/]img<rest>.tif + mask<rest>.tif                      the stardist package example

Images and masks are paired by **identical file name** (``images/a.tif`` <-> ``masks/a.tif``;
a different suffix such as ``a.png`` <-> ``a.tif`` is accepted too). The example shipped in the
``stardist`` package (``stardist/data/images/img2d.tif`` + ``mask2d.tif`` in *one* folder) has
no masks/ folder: there an image ``img<rest>`` (or ``image<rest>``) is paired with the mask
``mask<rest>`` (or ``label<rest>``) of the same ``<rest>`` and suffix-free stem (``img2d`` <->
``mask2d``, item name ``img2d``); other files of that folder (``histo.jpg``) are ignored. Masks are
integer label images (0 background, k > 0 instance k, ids need not be consecutive), decoded with
``encoding`` (default ``"auto"``). Item names are ``<split>/<name>`` with splits, else ``<name>``;
``split="train"`` reads one split only and ``Sample.meta["split"]`` tells each item's split.

Detection: ``images/`` + ``masks/`` directly in ``root`` is left to the generic ``folder``
reader (which reads it the same way); this reader claims sub-folders holding ``images/`` +
``masks/`` and folders holding ``img*``/``mask*`` pairs.
"""

from __future__ import annotations

import re
from pathlib import Path

from instembed.data.readers.base import (
    IMAGE_DIRS,
    LABEL_DIRS,
    Item,
    _find_dir,
    _image_files,
    _subdirs,
)
from instembed.data.readers.folder import FolderReader
from instembed.data.sample import Sample

_IMG = re.compile(r"^(?:img|image)[_-]?(.*)$", re.IGNORECASE)
_MASK = re.compile(r"^(?:mask|label)[_-]?(.*)$", re.IGNORECASE)


def _split_dirs(root: Path) -> list[tuple[str, Path, Path]]:
    """``(split, images folder, masks folder)`` for every sub-folder holding both."""
    out = []
    for d in _subdirs(root):
        img, lab = _find_dir(d, IMAGE_DIRS), _find_dir(d, LABEL_DIRS)
        if img is not None and lab is not None:
            out.append((d.name, img, lab))
    return out


def _prefix_pairs(folder: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """``img<rest>`` images and ``mask<rest>`` masks of ``folder``, keyed by ``<rest>``."""
    images: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    for p in _image_files(folder):
        m = _MASK.match(p.stem)
        if m:
            masks.setdefault(m.group(1), p)
            continue
        m = _IMG.match(p.stem)
        if m:
            images.setdefault(m.group(1), p)
    return images, masks


def _pair_folder(root: Path) -> Path | None:
    """``root/images`` (or ``root`` itself) when it holds at least one img*/mask* pair."""
    for cand in (root / "images", root):
        if cand.is_dir():
            images, masks = _prefix_pairs(cand)
            if set(images) & set(masks):
                return cand
    return None


class StarDistReader(FolderReader):
    """StarDist layouts: ``[<split>/]images/`` + ``[<split>/]masks/`` with equal file names, or
    ``img<rest>`` + ``mask<rest>`` files in one folder (the stardist package example).

    See the module docstring for the layouts. ``split`` reads one split sub-folder only;
    ``encoding`` picks how masks are decoded (default ``"auto"``).
    """

    format = "stardist"
    layout = (
        "[<split>/]images/*.tif + [<split>/]masks/*.tif with equal file names, "
        "or img<X>.tif + mask<X>.tif in one folder (StarDist)"
    )

    def __init__(self, root, *, split: str | None = None, **kw) -> None:
        self.split = split
        super().__init__(root, **kw)

    @classmethod
    def detect(cls, root: Path) -> str | None:
        if not root.is_dir() or (_find_dir(root, IMAGE_DIRS) and _find_dir(root, LABEL_DIRS)):
            return None  # a plain images/ + masks/ root is the folder reader's
        splits = _split_dirs(root)
        if splits:
            names = [s for s, _, _ in splits]
            return f"StarDist split folders {names[:4]} with images/ + masks/"
        folder = _pair_folder(root)
        if folder is not None:
            where = "images/" if folder != root else "the folder"
            return f"img*/mask* file pairs in {where} (StarDist example)"
        return None

    def _groups(self) -> list[tuple[str, Path, Path | None]]:
        """``(split, images folder, masks folder or None for img*/mask* pairs)``."""
        img, lab = _find_dir(self.root, IMAGE_DIRS), _find_dir(self.root, LABEL_DIRS)
        if img is not None and lab is not None:
            return [("", img, lab)]
        splits = _split_dirs(self.root)
        if splits:
            if self.split is not None:
                splits = [s for s in splits if s[0] == self.split]
                if not splits:
                    raise ValueError(
                        f"{self.root}: no split {self.split!r} with images/ + masks/ "
                        f"(found {[s for s, _, _ in _split_dirs(self.root)]})"
                    )
            return splits
        folder = _pair_folder(self.root)
        if folder is not None:
            return [("", folder, None)]
        raise ValueError(
            f"{self.root}: expected [<split>/]images/ + [<split>/]masks/ folders or "
            "img<X>/mask<X> file pairs (StarDist layouts)"
        )

    def _index(self) -> list[Item]:
        items = []
        for split, img_dir, lab_dir in self._groups():
            prefix = f"{split}/" if split else ""
            extra = {"split": split} if split else {}
            if lab_dir is None:
                images, masks = _prefix_pairs(img_dir)
                for key, img in sorted(images.items()):
                    if key not in masks:
                        self._problem(img, f"image has no mask{key}.* beside it")
                        continue
                    items.append(Item(prefix + img.stem, img, [masks[key]], dict(extra)))
                for key in sorted(set(masks) - set(images)):
                    self._problem(masks[key], f"mask has no img{key}.* beside it")
                continue
            labels = {p.stem: p for p in _image_files(lab_dir)}
            used = set()
            for img in _image_files(img_dir):
                match = labels.get(img.stem)
                if match is None:
                    self._problem(img, f"image has no mask of the same name in {lab_dir.name}/")
                    continue
                used.add(img.stem)
                items.append(Item(prefix + img.stem, img, [match], dict(extra)))
            for stem in sorted(set(labels) - used):
                self._problem(
                    labels[stem], f"mask has no image of the same name in {img_dir.name}/"
                )
        return items

    def _check(self, item: Item) -> None:
        super(FolderReader, self)._check(item)

    def _load(self, item: Item) -> Sample:
        sample = super()._load(item)
        if "split" in item.extra:
            sample.meta["split"] = item.extra["split"]
        return sample

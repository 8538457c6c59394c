"""Cityscapes fine annotations (instance ids + label ids per image).

Layout::

    root/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_instanceIds.png
    root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

In ``instanceIds`` a value ``>= 1000`` is ``labelId * 1000 + k`` (instance ``k`` of a thing
class); smaller values are label ids (stuff, or a crowd/group region of a thing class).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from instembed.data import io
from instembed.data.readers.base import Item, Reader, _visible
from instembed.data.sample import Sample
from instembed.structures import IGNORE_INDEX

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
    """Cityscapes fine annotations (layout in the module docstring).

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

    @classmethod
    def detect(cls, root: Path) -> str | None:
        if (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir():
            return "leftImg8bit/ and gtFine/ folders"
        return None

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
        for img in _visible(img_root, img_root.rglob("*_leftImg8bit.png")):
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

"""Dataset readers: one class per on-disk layout, all yielding :class:`Sample`.

``open_dataset(path, format="auto")`` picks the reader (and logs which one and why). Every
reader is a read-only sequence: ``len(reader)``, ``reader[i] -> Sample`` (decoded on access),
``reader.format``, ``reader.items`` (the file index) and ``reader.bad`` (files skipped with
``skip_bad=True`` and why).

Checks on open (``validate="header"``, the default, reads only file headers; ``"full"`` decodes
every file; ``"none"`` skips them): an image without labels or labels without an image, a
missing, unreadable, empty or truncated file, image/label size mismatch, a float label file
with non-integer values (a float label file -- Fiji saves labels as float32 -- is read on open
and accepted when all its values are whole numbers >= 0); with ``"full"`` also negative ids,
non-integer values and a label image whose ids fill its dtype (overflowed). Problems raise one
``ValueError`` listing each file and what was wrong, or, with ``skip_bad=True``, drop those
items with a logged warning.

Layouts, one module each (see its docstring): ``folder``, ``bbbc039``, ``bbbc010``,
``dsb2018``, ``cvppp``, ``coco`` (``coco`` and ``coco_panoptic``), ``cityscapes``,
``stardist``. Hidden files and folders (names starting with ``.``: macOS ``._*`` AppleDouble
files, ``.DS_Store``) are ignored by every reader. Shared machinery is in
:mod:`instembed.data.readers.base`; COCO RLE in :mod:`instembed.data.rle`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from instembed.data.readers.base import (
    IMAGE_DIRS,
    LABEL_DIRS,
    VALIDATE_MODES,
    Item,
    Reader,
    _subdirs,
)
from instembed.data.readers.bbbc010 import BBBC010Reader
from instembed.data.readers.bbbc039 import BBBC039Reader
from instembed.data.readers.cityscapes import (
    CITYSCAPES_LABELS,
    CITYSCAPES_STUFF,
    CITYSCAPES_THINGS,
    CITYSCAPES_TRAIN_CLASSES,
    CityscapesReader,
)
from instembed.data.readers.coco import (
    COCOPanopticReader,
    COCOReader,
    annotation_to_mask,
    polygons_to_mask,
)
from instembed.data.readers.cvppp import CVPPPReader
from instembed.data.readers.dsb2018 import DSB2018Reader
from instembed.data.readers.folder import LABEL_SUFFIXES, FolderReader
from instembed.data.readers.stardist import StarDistReader
from instembed.data.rle import rle_decode

__all__ = [
    "CITYSCAPES_LABELS",
    "CITYSCAPES_STUFF",
    "CITYSCAPES_THINGS",
    "CITYSCAPES_TRAIN_CLASSES",
    "DETECTION_ORDER",
    "FORMATS",
    "IMAGE_DIRS",
    "LABEL_DIRS",
    "LABEL_SUFFIXES",
    "VALIDATE_MODES",
    "BBBC010Reader",
    "BBBC039Reader",
    "COCOPanopticReader",
    "COCOReader",
    "CVPPPReader",
    "CityscapesReader",
    "DSB2018Reader",
    "FolderReader",
    "StarDistReader",
    "Item",
    "Reader",
    "annotation_to_mask",
    "detect_format",
    "open_dataset",
    "polygons_to_mask",
    "rle_decode",
]

log = logging.getLogger(__name__)

#: format name -> reader class (this order is the one listed when detection fails)
FORMATS: dict[str, type[Reader]] = {
    "folder": FolderReader,
    "bbbc039": BBBC039Reader,
    "bbbc010": BBBC010Reader,
    "dsb2018": DSB2018Reader,
    "cvppp": CVPPPReader,
    "coco": COCOReader,
    "coco_panoptic": COCOPanopticReader,
    "cityscapes": CityscapesReader,
    "stardist": StarDistReader,
}

#: the order in which :func:`detect_format` asks the readers: the most specific layouts first,
#: the generic images/ + labels/ folder last
DETECTION_ORDER: tuple[str, ...] = (
    "cityscapes",
    "bbbc010",
    "bbbc039",
    "dsb2018",
    "coco_panoptic",
    "coco",
    "cvppp",
    "stardist",
    "folder",
)


def detect_format(path: str | os.PathLike) -> tuple[str, str]:
    """Guess the layout of ``path``; returns ``(format, reason)``. Raises ``ValueError`` with the
    layouts looked for when none fits."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder")
    if p.is_file() and p.suffix.lower() != ".json":
        raise ValueError(f"{p}: a file can only be a COCO json; give a folder for other layouts")
    for name in DETECTION_ORDER:
        why = FORMATS[name].detect(p)
        if why is not None:
            return name, why
    subdirs = [d.name for d in _subdirs(p)] if p.is_dir() else []
    raise ValueError(
        f"{p}: cannot tell the data set layout (found folders {subdirs[:10]}); "
        "expected one of: "
        + "; ".join(f"{k}: {v.layout}" for k, v in FORMATS.items())
        + ". Pass format=... to choose one."
    )


def open_dataset(path: str | os.PathLike, format: str = "auto", **kw) -> Reader:
    """Open a data set folder (or COCO json) as a :class:`Reader` of Samples.

    ``format``: ``"auto"`` (detect and log the choice) or one of :data:`FORMATS`. ``kw`` go to
    the reader: ``normalize`` (one of :data:`instembed.data.normalize.NORMALIZATIONS`), ``channels``,
    ``min_range`` (floor on the percentile range, raw intensity units; 0 = off: see
    :func:`instembed.data.normalize.percentile_normalize`), ``validate``
    (``"header"``/``"full"``/``"none"``), ``skip_bad`` and the reader's own options.
    """
    if format == "auto":
        format, why = detect_format(path)
        log.info("%s: detected format %r (%s)", path, format, why)
    if format not in FORMATS:
        raise ValueError(
            f"unknown data set format {format!r}; expected 'auto' or one of {sorted(FORMATS)}"
        )
    return FORMATS[format](path, **kw)

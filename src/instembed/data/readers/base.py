"""What every reader shares: the :class:`Item` index entry, the :class:`Reader` base class
(index, checks on open, lazy decoding) and small file helpers used by several layouts.

A reader is a read-only sequence: ``len(reader)``, ``reader[i] -> Sample`` (decoded on
access), ``reader.format``, ``reader.items`` (the file index) and ``reader.bad`` (files skipped
with ``skip_bad=True`` and why). Each reader class also has ``detect(root)``: the reason why
``root`` looks like its layout, or ``None``; :func:`instembed.data.readers.detect_format` asks
them in a fixed order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from instembed.data import io
from instembed.data.sample import Sample

log = logging.getLogger(__name__)

IMAGE_DIRS = ("images", "image", "imgs", "raw")
LABEL_DIRS = ("labels", "label", "masks", "mask", "gt", "ground_truth")
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

    Subclasses implement ``_index() -> list[Item]`` and ``_load(item) -> Sample``, may extend
    ``_check(item)`` (header checks; raise ``ValueError`` naming the file) and override the
    classmethod ``detect(root)`` so that auto-detection can recognise their layout.
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
        min_range: float = 0.0,
    ) -> None:
        self.root = Path(root)
        if not self.root.exists():
            raise FileNotFoundError(f"{self.root}: no such file or folder")
        if normalize not in io.NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {io.NORMALIZATIONS}, got {normalize!r}")
        if validate not in VALIDATE_MODES:
            raise ValueError(f"validate must be one of {VALIDATE_MODES}, got {validate!r}")
        self.normalize = normalize
        # floor on the percentile range (raw intensity units; io.normalize_image), 0 = off
        self.min_range = io.check_min_range(min_range, "min_range")
        if self.min_range and not normalize.startswith("percentile"):
            log.warning(
                "%s: min_range=%g has no effect with normalize=%r (it floors the percentile "
                "range of the 'percentile' modes only)",
                self.root,
                self.min_range,
                normalize,
            )
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

    # --- layout detection ---------------------------------------------------------------------
    @classmethod
    def detect(cls, root: Path) -> str | None:
        """Why ``root`` (an existing file or folder) has this reader's layout, or ``None``."""
        return None

    # --- subclass API -------------------------------------------------------------------------
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
                # Fiji saves label images as float32: read the values (this file only) and
                # accept whole numbers >= 0; anything else is refused naming the file
                io.check_float_labels(lab)

    def _labels_must_be_integer(self) -> bool:
        """Whether float label files must hold whole numbers (checked on open)."""
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

    # --- names of predictions -----------------------------------------------------------------
    def _relative(self, path: Path) -> str:
        """``path`` below the data set folder (the json's folder for a COCO json), POSIX,
        without its suffix; the absolute path when it lies elsewhere."""
        base = self.root if self.root.is_dir() else self.root.parent
        stripped = Path(os.path.abspath(Path(path).with_suffix("")))
        try:
            return stripped.relative_to(os.path.abspath(base)).as_posix()
        except ValueError:
            return stripped.as_posix()

    def item_keys(self, item: Item) -> list[str]:
        """The names a prediction of ``item`` may carry: the item name (``A04``,
        ``A1/plant001``, a DSB image id) and its image file below the data set folder without
        the suffix (``BBBC010_v1_images/<...>_A04_w2_<...>``, ``A1/plant001_rgb``). ``instembed
        predict`` names its outputs after the image files, keeping their folders below the
        inputs' common folder, so a prediction name is one of these or a trailing part of one
        (``instembed evaluate`` matches by whole path components)."""
        keys = [item.name]
        rel = self._relative(item.image)
        if rel != item.name:
            keys.append(rel)
        return keys

    def label_keys(self, item: Item) -> list[str]:
        """The ground-truth files of ``item`` (label files, masks, CVPPP ``_fg.png``) named
        like :meth:`item_keys`: predictions of them (``instembed predict`` run on a CVPPP
        folder segments ``plantNNN_label.png`` too) are recognised and left out of scoring."""
        paths = [*item.labels, *(v for v in item.extra.values() if isinstance(v, Path))]
        return [self._relative(p) for p in paths if not p.is_dir()]

    def _image(self, path: Path) -> tuple[np.ndarray, str]:
        return io.load_image(path, self.normalize, self.channels, min_range=self.min_range)


# ---------------------------------------------------------------------------------------------
# helpers shared by several layouts
# ---------------------------------------------------------------------------------------------


def _binary_mask(path: Path) -> np.ndarray:
    """(H, W) bool of a one-instance mask file (any non-zero pixel is inside)."""
    raw = io.read_image(path)
    if raw.ndim == 3:
        raw = raw[..., :3].max(-1) if raw.shape[-1] in (3, 4) else raw
    if raw.ndim != 2:
        raise ValueError(f"{path}: a mask must be a 2-D image, got shape {raw.shape}")
    return raw > 0


def _check_mask_sizes(item: Item) -> None:
    """Header check of the one-mask-per-object layouts: every mask has the image's size."""
    shape = io.probe(item.image).shape
    for p in item.labels:
        sh = io.probe(p).shape
        if sh != shape:
            raise ValueError(f"{p}: mask size {sh} differs from image size {shape}")


def _find_dir(root: Path, names: Sequence[str]) -> Path | None:
    """The first ``root/<name>`` of ``names`` that is a folder, or ``None``."""
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def _image_files(folder: Path) -> list[Path]:
    """Image files (by suffix) directly in ``folder``, sorted; hidden files (``._*``
    AppleDouble, ``.DS_Store``, any name starting with ``.``) are skipped."""
    return io.image_files(folder)


def _subdirs(folder: Path) -> list[Path]:
    """Sub-folders of ``folder``, sorted, without hidden ones (``.ipynb_checkpoints``, ...)."""
    return [p for p in io.list_dir(folder) if p.is_dir()]


def _visible(root: Path, paths) -> list[Path]:
    """``paths`` (below ``root``, e.g. from ``rglob``) without those with a hidden part
    (``._x_rgb.png``, ``.Trash/...``) below ``root``, sorted."""
    return sorted(
        p for p in paths if not any(part.startswith(".") for part in p.relative_to(root).parts)
    )

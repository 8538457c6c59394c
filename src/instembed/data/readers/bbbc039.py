"""BBBC039 (U2OS nuclei, Broad Bioimage Benchmark Collection): 16-bit images + colour-coded masks.

Layout::

    root/[cell nuclei/]images/<name>.tif     16-bit gray image
    root/[cell nuclei/]masks/<name>.png      RGBA mask, same stem

The masks have G = B = 0 and R in {0, 1, 2, 3}: R is a colouring of touching nuclei, not an id,
so an instance is one 4-connected region of one R value (BBBC039 SOURCE.md: 23,617 nuclei over
the 200 images this way, vs 19,582 foreground components). The images/ + masks/ pair may sit
in ``root`` or in one of its sub-folders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from instembed.data import io
from instembed.data.readers.base import _image_files, _subdirs
from instembed.data.readers.folder import FolderReader


def _bbbc039_base(root: Path) -> Path | None:
    """``root`` or its first sub-folder (sorted) holding both images/ and masks/, or ``None``."""
    for cand in [root, *_subdirs(root)]:
        if (cand / "images").is_dir() and (cand / "masks").is_dir():
            return cand
    return None


class BBBC039Reader(FolderReader):
    """BBBC039 (U2OS nuclei): ``images/*.tif`` (16-bit) + ``masks/*.png`` (same stem).

    A :class:`FolderReader` with the ``"components"`` label encoding (see the module docstring).
    """

    format = "bbbc039"
    layout = "images/*.tif + masks/*.png (R channel = colouring, instance = connected component)"

    def __init__(self, root, **kw) -> None:
        kw.setdefault("encoding", "components")
        super().__init__(root, **kw)

    @classmethod
    def detect(cls, root: Path) -> str | None:
        """An images/ + masks/ pair whose first mask is an RGB(A) PNG with only R set."""
        if not root.is_dir():
            return None
        base = _bbbc039_base(root)
        if base is None:
            return None
        masks = _image_files(base / "masks")
        if not masks or masks[0].suffix.lower() != ".png":
            return None
        raw = io.read_image(masks[0])
        if raw.ndim == 3 and raw.shape[-1] in (3, 4) and not raw[..., 1:3].any():
            values = sorted(np.unique(raw[..., 0]).tolist())
            return f"colour-coded masks (R only, values {values[:6]})"
        return None

    def _dirs(self) -> tuple[Path, Path]:
        base = _bbbc039_base(self.root) or self.root
        img, lab = base / "images", base / "masks"
        if not img.is_dir() or not lab.is_dir():
            raise ValueError(f"{self.root}: expected images/ and masks/ folders (BBBC039 layout)")
        return img, lab

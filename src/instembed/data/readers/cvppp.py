"""CVPPP leaf segmentation challenge (LSC): ``plantNNN_rgb.png`` + ``plantNNN_label.png``.

Layout (any depth below ``root``, e.g. ``A1/``, ``A2/``)::

    plantNNN_rgb.png      RGB(A) image
    plantNNN_label.png    leaf labels: palette PNG (index = leaf id) or RGB-coded colours
    plantNNN_fg.png       optional plant foreground mask (gives ``semantic``)

Without ``_fg.png`` the semantic mask is the union of the leaves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from instembed.data import io
from instembed.data.readers.base import Item, Reader, _visible
from instembed.data.sample import Sample


class CVPPPReader(Reader):
    """CVPPP leaf segmentation (LSC): ``plantNNN_rgb.png`` + ``plantNNN_label.png``.

    See the module docstring for the layout. Item names are the path of the plant below
    ``root`` without the ``_rgb.png`` ending (e.g. ``A1/plant001``).
    """

    format = "cvppp"
    layout = "plantNNN_rgb.png + plantNNN_label.png [+ plantNNN_fg.png]"

    def __init__(self, root, *, normalize: str = "range", **kw) -> None:
        super().__init__(root, normalize=normalize, **kw)

    @classmethod
    def detect(cls, root: Path) -> str | None:
        if not root.is_dir():
            return None
        if _visible(root, root.rglob("*_rgb.png")) and _visible(root, root.rglob("*_label.png")):
            return "*_rgb.png + *_label.png files"
        return None

    def _index(self) -> list[Item]:
        items = []
        for img in _visible(self.root, self.root.rglob("*_rgb.png")):
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
        for lab in _visible(self.root, self.root.rglob("*_label.png")):
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

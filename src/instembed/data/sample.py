"""The ``Sample`` contract: one image with its instance ground truth.

Every reader and synthetic generator returns Samples; every later stage accepts them.

Label conventions (checked by :meth:`Sample.validate`):

* ``instances`` is either a **label image** ``(H, W)`` of an integer dtype, ``0`` = background and
  ``1..N`` = instances, or a **mask stack** ``(N, H, W)`` of ``bool`` for data whose objects
  overlap (BBBC010 worms). ``N`` may be 0.
* ``semantic`` (optional) is ``(H, W)`` int, class ids, with ``ignore_index`` (default 255)
  marking void pixels.
* ``classes`` (optional) is ``(N,)`` int: the semantic class of each instance, in the order of
  the label ids ``1..N`` (label image) or of the stack.
* ``ignore`` (optional) is ``(H, W)`` bool, ``True`` = pixel excluded from training and scoring.
* ``image`` is ``(C, H, W)`` float32 (already normalised by the reader unless stated otherwise).
* ``meta["crowd"]`` (optional, COCO readers) is ``(M, H, W)`` bool: crowd regions (``iscrowd``),
  with ``meta["crowd_classes"]`` ``(M,)`` int. Their pixels are also in ``ignore`` (not
  trained on); scoring takes them out of ``ignore`` and scores them as crowd ground truths.
  It describes the sample as read: spatial transforms do not update it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Sample:
    image: np.ndarray  # (C, H, W) float32
    instances: np.ndarray  # (H, W) int label image, or (N, H, W) bool mask stack
    semantic: np.ndarray | None = None  # (H, W) int, IGNORE_INDEX = void
    classes: np.ndarray | None = None  # (N,) int class per instance
    ignore: np.ndarray | None = None  # (H, W) bool
    path: str | None = None  # source file (image) this sample came from
    meta: dict = field(default_factory=dict)

    @property
    def is_stack(self) -> bool:
        """True when ``instances`` is an (N, H, W) mask stack (objects may overlap)."""
        return self.instances.ndim == 3

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.image.shape[-2:])  # type: ignore[return-value]

    @property
    def num_instances(self) -> int:
        if self.is_stack:
            return int(self.instances.shape[0])
        ids = np.unique(self.instances)
        return int((ids > 0).sum())

    def label_image(self) -> np.ndarray:
        """(H, W) int32 label image. For a stack, overlapping pixels go to the later mask."""
        if not self.is_stack:
            return self.instances.astype(np.int32, copy=False)
        out = np.zeros(self.instances.shape[1:], np.int32)
        for k, m in enumerate(self.instances, start=1):
            out[m] = k
        return out

    def overlap_mask(self) -> np.ndarray:
        """(H, W) bool: pixels covered by more than one instance (always False for label images)."""
        if not self.is_stack:
            return np.zeros(self.shape, bool)
        return self.instances.sum(0) > 1

    def validate(self) -> Sample:
        """Raise ``ValueError`` naming ``path`` when the arrays break the contract."""
        where = f" in {self.path}" if self.path else ""
        if self.image.ndim != 3:
            raise ValueError(f"image must be (C, H, W), got shape {self.image.shape}{where}")
        h, w = self.image.shape[-2:]
        inst = self.instances
        if inst.ndim == 2:
            if not np.issubdtype(inst.dtype, np.integer):
                raise ValueError(f"label image must have an integer dtype, got {inst.dtype}{where}")
            if inst.size and inst.min() < 0:
                raise ValueError(f"label image has negative ids (min {inst.min()}){where}")
        elif inst.ndim == 3:
            if inst.dtype != bool:
                raise ValueError(f"mask stack must be bool, got {inst.dtype}{where}")
        else:
            raise ValueError(f"instances must be (H, W) or (N, H, W), got {inst.shape}{where}")
        if tuple(inst.shape[-2:]) != (h, w):
            raise ValueError(
                f"instances shape {tuple(inst.shape[-2:])} != image shape {(h, w)}{where}"
            )
        for name in ("semantic", "ignore"):
            arr = getattr(self, name)
            if arr is not None and tuple(arr.shape) != (h, w):
                raise ValueError(f"{name} shape {arr.shape} != image shape {(h, w)}{where}")
        if self.classes is not None and len(self.classes) != self.num_instances:
            raise ValueError(
                f"classes has {len(self.classes)} entries for {self.num_instances} instances{where}"
            )
        return self

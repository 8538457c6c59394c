"""The ``torchvision.ops`` subset instembed uses, under torchvision's names: code written for
``torchvision.ops`` runs with ``from instembed.detection import ops``.

:func:`roi_align` and :class:`RoIAlign` are in :mod:`instembed.detection.pooling`; the box
operations in :mod:`instembed.detection.boxes`.
"""

from instembed.detection.boxes import (
    batched_nms,
    box_area,
    box_iou,
    clip_boxes_to_image,
    nms,
    remove_small_boxes,
)
from instembed.detection.pooling import RoIAlign, roi_align

__all__ = [
    "RoIAlign",
    "batched_nms",
    "box_area",
    "box_iou",
    "clip_boxes_to_image",
    "nms",
    "remove_small_boxes",
    "roi_align",
]

"""Building blocks of proposal-based instance segmentation (Mask R-CNN and its semi-convolutional
variant), in plain PyTorch with the signatures and semantics of torchvision's detection ops (no
torchvision needed); see ``docs/detection.md``.

* :func:`roi_align` / :class:`RoIAlign` -- He et al. 2017's RoIAlign;
* :func:`nms`, :func:`batched_nms`, :func:`box_iou`, :func:`box_area`,
  :func:`clip_boxes_to_image`, :func:`remove_small_boxes` (``torchvision.ops``; also as
  :mod:`instembed.detection.ops`);
* :class:`BoxCoder`, :class:`Matcher`, :class:`BalancedPositiveNegativeSampler` (torchvision's
  ``models.detection._utils``);
* :class:`AnchorGenerator`, :class:`ImageList`;
* :func:`paste_masks_in_image`.
"""

from instembed.detection import ops
from instembed.detection.anchors import AnchorGenerator, ImageList
from instembed.detection.boxes import (
    BoxCoder,
    batched_nms,
    box_area,
    box_iou,
    clip_boxes_to_image,
    nms,
    remove_small_boxes,
)
from instembed.detection.masks import paste_masks_in_image
from instembed.detection.matching import BalancedPositiveNegativeSampler, Matcher
from instembed.detection.pooling import RoIAlign, convert_boxes_to_roi_format, roi_align

__all__ = [
    "AnchorGenerator",
    "BalancedPositiveNegativeSampler",
    "BoxCoder",
    "ImageList",
    "Matcher",
    "RoIAlign",
    "batched_nms",
    "box_area",
    "box_iou",
    "clip_boxes_to_image",
    "convert_boxes_to_roi_format",
    "nms",
    "ops",
    "paste_masks_in_image",
    "remove_small_boxes",
    "roi_align",
]

"""Box operations with the signatures and semantics of ``torchvision.ops`` (and torchvision's
detection ``BoxCoder``), in plain PyTorch.

Boxes are ``(x1, y1, x2, y2)`` in pixels, pixel *edges* (:mod:`instembed.structures`): the box of
a mask covering columns 3..5 is ``x1 = 3, x2 = 6``; its width is ``x2 - x1``.

* :func:`box_area`, :func:`box_iou`, :func:`clip_boxes_to_image`, :func:`remove_small_boxes`;
* :func:`nms`, :func:`batched_nms`: greedy non-maximum suppression (highest score first, ties by
  index; a box goes when its IoU with a kept box is ``> iou_threshold``);
* :class:`BoxCoder`: the (dx, dy, dw, dh) box deltas of R-CNN (Girshick et al. 2014, eq. 1-4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "BoxCoder",
    "batched_nms",
    "box_area",
    "box_iou",
    "clip_boxes_to_image",
    "decode_boxes",
    "nms",
    "remove_small_boxes",
]


def _upcast(t: Tensor) -> Tensor:
    """Integer boxes become float32 (torchvision's ``_upcast``); float boxes stay as they are."""
    return t if t.is_floating_point() else t.float()


def box_area(boxes: Tensor) -> Tensor:
    """(N,) area ``(x2 - x1) * (y2 - y1)`` of (N, 4) boxes (``torchvision.ops.box_area``: no
    clamping, a box with ``x2 < x1`` has a negative area)."""
    boxes = _upcast(boxes)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """(N, M) intersection over union of every pair of (N, 4) and (M, 4) boxes.

    As ``torchvision.ops.box_iou``, in the boxes' float dtype (integer boxes: float32), with two
    differences on boxes torchvision does not support: a box with ``x2 < x1`` or ``y2 < y1``
    counts as empty, and the IoU of two empty boxes is 0 (torchvision: NaN). Differentiable.
    """
    b1, b2 = _upcast(boxes1), _upcast(boxes2)
    area1 = (b1[:, 2] - b1[:, 0]).clamp(min=0) * (b1[:, 3] - b1[:, 1]).clamp(min=0)
    area2 = (b2[:, 2] - b2[:, 0]).clamp(min=0) * (b2[:, 3] - b2[:, 1]).clamp(min=0)
    lt = torch.maximum(b1[:, None, :2], b2[None, :, :2])
    rb = torch.minimum(b1[:, None, 2:], b2[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(2)
    union = area1[:, None] + area2[None, :] - inter
    positive = union > 0
    return torch.where(positive, inter / union.masked_fill(~positive, 1), torch.zeros_like(inter))


def clip_boxes_to_image(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Boxes (..., 4) clipped to an image of ``size = (height, width)``: x to ``[0, width]``,
    y to ``[0, height]`` (``torchvision.ops.clip_boxes_to_image``)."""
    height, width = int(size[0]), int(size[1])
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """(K,) int64 indices of the (N, 4) boxes whose width and height are both ``>= min_size``
    (``torchvision.ops.remove_small_boxes``)."""
    ws = boxes[:, 2] - boxes[:, 0]
    hs = boxes[:, 3] - boxes[:, 1]
    return torch.where((ws >= min_size) & (hs >= min_size))[0]


# --------------------------------------------------------------------------- NMS
_IOU_CHUNK = 1 << 24  # IoU values computed at a time by the suppression


def _greedy_keep(
    boxes: Tensor, scores: Tensor, iou_threshold: float, groups: Tensor | None = None
) -> Tensor:
    """Greedy NMS, boxes competing only within the same ``groups`` value when given."""
    n = int(boxes.shape[0])
    device = boxes.device
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    order = torch.sort(scores.detach(), descending=True, stable=True).indices
    b = _upcast(boxes.detach()).index_select(0, order)
    g = None if groups is None else groups.detach().index_select(0, order)
    rows = max(1, _IOU_CHUNK // n)
    over = np.empty((n, n), dtype=bool)  # over[i, j]: box i (sorted) suppresses box j
    for s in range(0, n, rows):
        o = box_iou(b[s : s + rows], b) > iou_threshold
        if g is not None:
            o &= g[s : s + rows, None] == g[None, :]
        over[s : s + rows] = o.cpu().numpy()
    removed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if not removed[i]:
            keep.append(i)
            removed[i + 1 :] |= over[i, i + 1 :]
    return order[torch.as_tensor(keep, dtype=torch.long, device=device)]


def _greedy_keep_script(
    boxes: Tensor, scores: Tensor, iou_threshold: float, groups: Tensor | None = None
) -> Tensor:
    """:func:`_greedy_keep` in TorchScript (no NumPy): the same suppression matrix, visited in
    the same order, hence the same indices."""
    n = int(boxes.shape[0])
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores.detach(), descending=True, stable=True).indices
    b = _upcast(boxes.detach()).index_select(0, order)
    over = box_iou(b, b) > iou_threshold  # (n, n): box i (sorted) suppresses box j
    if groups is not None:
        g = groups.detach().index_select(0, order)
        over &= g[:, None] == g[None, :]
    over = over.cpu()
    removed = torch.zeros(n, dtype=torch.bool)
    keep: list[int] = []
    for i in range(n):
        if not bool(removed[i]):
            keep.append(i)
            removed = removed | over[i]  # entries up to i are never read again
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression (``torchvision.ops.nms``).

    Visits the boxes by decreasing score -- exact ties in the order of their index, as
    torchvision's CPU kernel (a stable sort) -- and keeps a box unless a kept box overlaps it
    with IoU ``> iou_threshold``.

    Args:
        boxes: (N, 4) ``x1, y1, x2, y2``.
        scores: (N,).
        iou_threshold: discard boxes with IoU > this value.

    Returns:
        (K,) int64 indices of the kept boxes, by decreasing score, on the boxes' device.
    """
    if torch.jit.is_scripting():
        return _greedy_keep_script(boxes, scores, float(iou_threshold))
    return _greedy_keep(boxes, scores, float(iou_threshold))


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """:func:`nms` within each category (``torchvision.ops.batched_nms``): boxes of different
    ``idxs`` never suppress each other.

    Exact per group (no coordinate offsets, whose float rounding could change an IoU): the
    result is the union of ``nms`` on each category, by decreasing score (ties by index).

    Returns:
        (K,) int64 indices of the kept boxes, by decreasing score.
    """
    if torch.jit.is_scripting():
        return _greedy_keep_script(boxes, scores, float(iou_threshold), idxs)
    return _greedy_keep(boxes, scores, float(iou_threshold), idxs)


# --------------------------------------------------------------------------- BoxCoder
class BoxCoder:
    """The R-CNN box parametrisation (torchvision's ``models.detection._utils.BoxCoder``).

    For a proposal P (centre ``px, py``, size ``pw, ph``) and its target box G::

        dx = wx * (gx - px) / pw      dy = wy * (gy - py) / ph
        dw = ww * log(gw / pw)        dh = wh * log(gh / ph)

    Decoding inverts it, with ``dw, dh`` clamped to at most ``bbox_xform_clip`` before ``exp``
    (a box grows by at most ``exp(bbox_xform_clip)``, default 1000 / 16 = 62.5 times).

    Args:
        weights: ``(wx, wy, ww, wh)``; (10, 10, 5, 5) for Fast R-CNN box heads, (1, 1, 1, 1)
            for the RPN.
        bbox_xform_clip: the clamp of ``dw`` and ``dh`` at decoding.
    """

    def __init__(
        self,
        weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        bbox_xform_clip: float = math.log(1000.0 / 16),
    ) -> None:
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = float(bbox_xform_clip)

    # ----------------------------------------------------------------- encode
    def encode(
        self, reference_boxes: Tensor | Sequence[Tensor], proposals: Tensor | Sequence[Tensor]
    ) -> Tensor | tuple[Tensor, ...]:
        """Deltas that take ``proposals`` to ``reference_boxes`` (the targets).

        Lists of per-image (N_i, 4) tensors give a tuple of per-image (N_i, 4) deltas (as
        torchvision); two (N, 4) tensors give one (N, 4) tensor (:meth:`encode_single`).
        """
        if isinstance(reference_boxes, Tensor):
            return self.encode_single(reference_boxes, proposals)
        per_image = [len(b) for b in reference_boxes]
        targets = self.encode_single(torch.cat(list(reference_boxes)), torch.cat(list(proposals)))
        return targets.split(per_image, 0)

    def encode_single(self, reference_boxes: Tensor, proposals: Tensor) -> Tensor:
        """(N, 4) deltas ``(dx, dy, dw, dh)`` of (N, 4) ``reference_boxes`` w.r.t. (N, 4)
        ``proposals``, in the reference boxes' dtype."""
        dtype = reference_boxes.dtype
        wx, wy, ww, wh = self.weights
        p = proposals.to(dtype)
        pw = p[:, 2] - p[:, 0]
        ph = p[:, 3] - p[:, 1]
        px = p[:, 0] + 0.5 * pw
        py = p[:, 1] + 0.5 * ph
        g = reference_boxes
        gw = g[:, 2] - g[:, 0]
        gh = g[:, 3] - g[:, 1]
        gx = g[:, 0] + 0.5 * gw
        gy = g[:, 1] + 0.5 * gh
        dx = wx * (gx - px) / pw
        dy = wy * (gy - py) / ph
        dw = ww * torch.log(gw / pw)
        dh = wh * torch.log(gh / ph)
        return torch.stack((dx, dy, dw, dh), dim=1)

    # ----------------------------------------------------------------- decode
    def decode(self, rel_codes: Tensor, boxes: Tensor | Sequence[Tensor]) -> Tensor:
        """Boxes from deltas.

        ``boxes`` a list of per-image (N_i, 4) tensors (torchvision): ``rel_codes`` is
        (sum N_i, 4 k) and the result (sum N_i, k, 4) -- k = 1 for class-agnostic deltas, the
        number of classes for per-class deltas. ``boxes`` one (N, 4) tensor: the result has the
        shape of ``rel_codes``, (N, 4 k) (:meth:`decode_single`).
        """
        if isinstance(boxes, Tensor):
            return self.decode_single(rel_codes, boxes)
        concat = torch.cat(list(boxes), dim=0)
        total = int(concat.shape[0])
        if total > 0:
            rel_codes = rel_codes.reshape(total, -1)
        pred = self.decode_single(rel_codes, concat)
        return pred.reshape(total, -1, 4) if total > 0 else pred

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        """(N, 4 k) boxes from (N, 4 k) deltas applied to (N, 4) ``boxes``, in the deltas'
        dtype; ``dw, dh`` clamped to at most ``bbox_xform_clip``."""
        return decode_boxes(rel_codes, boxes, self.weights, self.bbox_xform_clip)


def decode_boxes(
    rel_codes: Tensor,
    boxes: Tensor,
    weights: tuple[float, float, float, float],
    bbox_xform_clip: float,
) -> Tensor:
    """:meth:`BoxCoder.decode_single` as a function (TorchScript compiles it)."""
    boxes = boxes.to(rel_codes.dtype)
    wx, wy, ww, wh = weights
    widths = (boxes[:, 2] - boxes[:, 0])[:, None]
    heights = (boxes[:, 3] - boxes[:, 1])[:, None]
    ctr_x = boxes[:, 0, None] + 0.5 * widths
    ctr_y = boxes[:, 1, None] + 0.5 * heights
    dx = rel_codes[:, 0::4] / wx
    dy = rel_codes[:, 1::4] / wy
    dw = (rel_codes[:, 2::4] / ww).clamp(max=bbox_xform_clip)
    dh = (rel_codes[:, 3::4] / wh).clamp(max=bbox_xform_clip)
    cx = dx * widths + ctr_x
    cy = dy * heights + ctr_y
    half_w = 0.5 * torch.exp(dw) * widths
    half_h = 0.5 * torch.exp(dh) * heights
    out = torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=2)
    return out.flatten(1)

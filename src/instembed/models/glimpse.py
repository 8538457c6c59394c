"""The differentiable attention window of the recurrent-attention family (Ren & Zemel 2017):
read a fixed-size glimpse of a box and paste a glimpse back into image coordinates.

Boxes are ``(x1, y1, x2, y2)`` in pixels, pixel *edges* (:mod:`instembed.structures`), float and
differentiable. Glimpse pixel ``(i, j)`` of a ``(gh, gw)`` glimpse looks at the image point

    y = y1 + (i + 0.5) * (y2 - y1) / gh,    x = x1 + (j + 0.5) * (x2 - x1) / gw   (edge coordinates)

i.e. the glimpse tiles the box with ``gh x gw`` equal cells and samples each cell's centre by
bilinear interpolation (``torch.nn.functional.grid_sample``, ``align_corners=False``; zeros
outside the image). An integer-aligned box of exactly ``gh x gw`` pixels therefore reads the
array slice ``image[..., y1:y2, x1:x2]`` unchanged.

:func:`paste_glimpse` is the inverse sampling: every image pixel centre is mapped into the
glimpse's coordinates and the glimpse is sampled there (zeros outside the box). For the
integer-aligned same-size box, ``paste(read(m))`` is ``m`` inside the box and 0 outside, and
``read(paste(g)) == g`` exactly.

The paper reads glimpses with a Gaussian filter bank (DRAW); a bilinear grid is the same
operator with a triangle kernel of one pixel's width -- exact on integer boxes, cheap on CPU,
and its gradient w.r.t. the box flows through the sample positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

MIN_SIZE = 1.0
"""Smallest box side (pixels) the sampler accepts; smaller boxes are widened about their centre."""


def _theta(boxes: Tensor, size: tuple[int, int], inverse: bool) -> Tensor:
    """(B, 2, 3) ``affine_grid`` matrices mapping glimpse -> image normalized coordinates
    (or image -> glimpse with ``inverse``)."""
    h, w = size
    x1, y1, x2, y2 = boxes.unbind(-1)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    bw = (x2 - x1).clamp(min=MIN_SIZE)
    bh = (y2 - y1).clamp(min=MIN_SIZE)
    ax, ay = bw / w, bh / h  # half-extent in normalized units: [-1, 1] spans 2
    tx, ty = 2 * cx / w - 1, 2 * cy / h - 1
    zero = torch.zeros_like(ax)
    if inverse:
        rows = [
            torch.stack([1 / ax, zero, -tx / ax], -1),
            torch.stack([zero, 1 / ay, -ty / ay], -1),
        ]
    else:
        rows = [torch.stack([ax, zero, tx], -1), torch.stack([zero, ay, ty], -1)]
    return torch.stack(rows, -2)


def read_glimpse(image: Tensor, boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """The (B, C, gh, gw) glimpse of each (B, C, H, W) image inside its (B, 4) box.

    ``boxes`` are in the pixels of ``image``'s own grid; a lower-resolution feature map can be
    read with the boxes of the full image by passing ``boxes`` scaled by its stride, or -- as the
    model does -- :func:`read_glimpse_normalized` with the resolution-free grid.
    """
    theta = _theta(boxes, tuple(image.shape[-2:]), inverse=False).to(image.dtype)
    grid = F.affine_grid(theta, [image.shape[0], 1, *size], align_corners=False)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def glimpse_grid(boxes: Tensor, image_size: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """The (B, gh, gw, 2) normalized sampling grid of :func:`read_glimpse` for boxes in the pixels
    of an ``image_size`` image; valid for any feature map of that image (``align_corners=False``
    normalized coordinates do not depend on the resolution)."""
    theta = _theta(boxes, image_size, inverse=False)
    return F.affine_grid(theta, [boxes.shape[0], 1, *size], align_corners=False)


def read_glimpse_normalized(features: Tensor, grid: Tensor) -> Tensor:
    """Sample ``features`` (B, C, h, w), a map of the whole image at any resolution, on ``grid``."""
    return F.grid_sample(
        features,
        grid.to(features.dtype),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )


def paste_glimpse(glimpse: Tensor, boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """The (B, C, H, W) image of each (B, C, gh, gw) glimpse put back into its (B, 4) box (zeros
    outside): the inverse sampling of :func:`read_glimpse`."""
    theta = _theta(boxes, size, inverse=True).to(glimpse.dtype)
    grid = F.affine_grid(theta, [glimpse.shape[0], 1, *size], align_corners=False)
    return F.grid_sample(glimpse, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def expand_boxes(boxes: Tensor, factor: float) -> Tensor:
    """Boxes scaled by ``factor`` about their centres (the glimpse's context margin)."""
    c = (boxes[..., :2] + boxes[..., 2:]) / 2
    half = (boxes[..., 2:] - boxes[..., :2]) / 2 * factor
    return torch.cat([c - half, c + half], -1)


def box_iou_pairs(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """(..., ) IoU of boxes ``a`` and ``b`` (same shape (..., 4)); differentiable."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_a + area_b - inter + eps)

"""Pasting Mask R-CNN's fixed-size mask predictions into the image.

:func:`paste_masks_in_image` resizes each (M, M) mask of probabilities bilinearly onto its box
and writes it at the box's place in an (H, W) image:

* the box is taken in continuous pixel-edge coordinates (:mod:`instembed.structures`): image pixel
  (i, j) belongs to box ``(x1, y1, x2, y2)`` when its centre ``(j + 0.5, i + 0.5)`` lies in
  ``[x1, x2) x [y1, y2)``; pixels outside the box are 0 (False);
* inside, the value is the mask sampled at the pixel centre with the mapping of
  ``F.interpolate(mode="bilinear", align_corners=False)`` -- mask pixel k covers the fraction
  ``[k / M, (k + 1) / M)`` of the box, sources clamped to the mask (edge replication). For a box
  with integer corners it *is* ``F.interpolate(mask, size=(y2 - y1, x2 - x1))`` pasted at
  ``[y1:y2, x1:x2]``;
* thresholded (``>= threshold``) to a bool mask, or left as probabilities with
  ``threshold=None``.

A constant mask of value ``>= threshold`` therefore gives exactly the box region. torchvision's
``paste_masks_in_image`` differs on purpose: it pads the mask by one zero pixel and grows the
box by one mask pixel (a soft rim around the box), rounds the box to integers and treats
``x2, y2`` as inclusive (pastes ``x2 - x1 + 1`` columns), returns (N, 1, H, W) probabilities and
never thresholds.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["paste_masks", "paste_masks_in_image"]

_MAX_ELEMENTS = 1 << 24  # image pixels pasted at a time (in windows around the boxes)


def _tiny(dtype: torch.dtype) -> float:
    """``torch.finfo(dtype).tiny`` (which TorchScript lacks) of a floating dtype."""
    if dtype == torch.float64:
        return 2.2250738585072014e-308
    if dtype == torch.float16:
        return 6.103515625e-05
    if dtype == torch.bfloat16:
        return 1.1754943508222875e-38
    return 1.1754943508222875e-38  # float32


def _axis(lo: Tensor, hi: Tensor, size: int, m: int) -> tuple[Tensor, Tensor]:
    """Along one axis, per box: the first image row (column) of a window of ``n`` rows that holds
    the part of the box inside the image, (L,), and the (L, n, m) interpolation weights of the
    window's rows (two non-zero ones per row inside the box, all zero outside it)."""
    n = int((hi.ceil() - lo.floor()).clamp(1, size).max())  # window size of this chunk
    start = lo.floor().clamp(min=0).long().clamp(max=size - n)  # window inside the image
    centres = start[:, None] + torch.arange(n, device=lo.device)[None, :] + 0.5
    centres = centres.to(lo.dtype)
    inside = (centres >= lo[:, None]) & (centres < hi[:, None])  # (L, n)
    extent = (hi - lo).clamp(min=_tiny(lo.dtype))
    # F.interpolate's source index (align_corners=False), clamped to the mask
    src = ((centres - lo[:, None]) * (m / extent)[:, None] - 0.5).clamp(0, m - 1)
    i0 = src.floor()
    frac = (src - i0) * inside
    i0 = i0.long()
    i1 = (i0 + 1).clamp(max=m - 1)
    w = torch.zeros(src.shape[0], src.shape[1], m, dtype=lo.dtype, device=lo.device)
    w.scatter_add_(2, i0[..., None], ((1 - frac) * inside)[..., None])
    w.scatter_add_(2, i1[..., None], frac[..., None])
    return start, w


def _paste(masks: Tensor, boxes: Tensor, out: Tensor, threshold: float | None) -> None:
    """Paste masks into ``out`` (L, H, W), zero: per mask, ``Wy @ mask @ Wx^T`` (bilinear
    interpolation is separable) on a window around its box."""
    n, mh, mw = masks.shape
    height, width = out.shape[1:]
    y0, wy = _axis(boxes[:, 1], boxes[:, 3], height, mh)  # (L,), (L, nh, mh)
    x0, wx = _axis(boxes[:, 0], boxes[:, 2], width, mw)  # (L,), (L, nw, mw)
    vals = torch.bmm(wy, torch.bmm(masks, wx.transpose(1, 2)))  # (L, nh, nw)
    if threshold is not None:
        inside = (wy.sum(2) > 0.5)[:, :, None] & (wx.sum(2) > 0.5)[:, None, :]
        vals = (vals >= threshold) & inside
    rows = y0[:, None] + torch.arange(wy.shape[1], device=y0.device)  # (L, nh), distinct
    cols = x0[:, None] + torch.arange(wx.shape[1], device=x0.device)  # (L, nw)
    idx = torch.arange(n, device=y0.device)[:, None, None]
    out[idx, rows[:, :, None], cols[:, None, :]] = vals


def paste_masks_in_image(
    masks: Tensor,
    boxes: Tensor,
    image_shape: tuple[int, int],
    threshold: float | None = 0.5,
) -> Tensor:
    """Masks pasted into their boxes in an image (see the module docstring).

    Args:
        masks: (N, Mh, Mw) mask probabilities (or (N, 1, Mh, Mw), the mask head's layout).
        boxes: (N, 4) ``x1, y1, x2, y2`` in image pixels.
        image_shape: ``(H, W)``.
        threshold: pixels ``>= threshold`` are the mask; None: return the probabilities.

    Returns:
        (N, H, W) bool masks, or (N, H, W) float probabilities (0 outside the box) when
        ``threshold`` is None; on the masks' device.
    """
    if masks.ndim == 4:
        if masks.shape[1] != 1:
            raise ValueError(f"masks must be (N, M, M) or (N, 1, M, M), got {tuple(masks.shape)}")
        masks = masks[:, 0]
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, M, M) or (N, 1, M, M), got {tuple(masks.shape)}")
    height, width = int(image_shape[0]), int(image_shape[1])
    return paste_masks(masks, boxes, height, width, threshold, _MAX_ELEMENTS)


def paste_masks(
    masks: Tensor,
    boxes: Tensor,
    height: int,
    width: int,
    threshold: float | None = 0.5,
    max_elements: int = 1 << 24,
) -> Tensor:
    """:func:`paste_masks_in_image` of (N, Mh, Mw) ``masks`` (TorchScript compiles it);
    ``max_elements`` bounds the image pixels pasted at a time."""
    n = int(masks.shape[0])
    m = masks if masks.is_floating_point() else masks.float()
    b = boxes.to(dtype=m.dtype, device=m.device)
    out = m.new_zeros(n, height, width, dtype=m.dtype if threshold is None else torch.bool)
    step = max(1, max_elements // max(1, height * width))  # bounds the windows of a chunk
    for s in range(0, n, step):
        _paste(m[s : s + step], b[s : s + step], out[s : s + step], threshold)
    return out

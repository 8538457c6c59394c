"""Center + offset grouping (Cheng et al. 2020, Panoptic-DeepLab; detectron2's post-processing).

* :func:`find_instance_centers`: keep the pixels of the center heatmap that equal the maximum of
  their ``nms_kernel`` x ``nms_kernel`` neighbourhood (max-pooling NMS) and exceed ``threshold``;
  then the ``top_k`` highest of them -- exactly ``min(top_k, #peaks)`` centres (detectron2's
  ``> k-th score`` comparison keeps one fewer).
* :func:`group_pixels`: every thing pixel (y, x) points to (y + dy, x + dx); it joins the centre
  nearest to that point. Computed without a (pixels x centres) table
  (:func:`instembed.cluster.assign.assign_labels`), so memory does not grow with their product.

Both compile with ``torch.jit.script``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from instembed.cluster.assign import assign_labels
from instembed.cluster.threads import one_intra_op_thread


def find_instance_centers(
    center: Tensor, threshold: float = 0.1, nms_kernel: int = 7, top_k: int = 200
) -> tuple[Tensor, Tensor]:
    """Instance centres from a center heatmap.

    Args:
        center: (H, W) or (1, H, W) heatmap.
        threshold: a centre's heatmap value must exceed this.
        nms_kernel: odd side of the max-pooling window.
        top_k: keep at most this many (the highest); <= 0 keeps all.

    Returns:
        centers (K, 2) int64 (y, x) ordered by decreasing score, and scores (K,).
    """
    if nms_kernel < 1 or nms_kernel % 2 == 0:
        raise ValueError(f"nms_kernel must be a positive odd integer, got {nms_kernel}")
    h, w = center.shape[-2], center.shape[-1]
    heat = center.reshape(1, 1, h, w).to(torch.float32)
    pooled = F.max_pool2d(heat, nms_kernel, stride=1, padding=nms_kernel // 2)
    peaks = (heat == pooled) & (heat > threshold)
    values = torch.where(peaks, heat, torch.full_like(heat, -1.0)).reshape(-1)
    n = int(peaks.sum().item())
    k = n if top_k <= 0 else min(top_k, n)
    top = torch.topk(values, k)
    flat = top.indices
    y = torch.div(flat, w, rounding_mode="floor")
    return torch.stack([y, flat - y * w], 1), top.values.to(center.dtype)


def group_pixels(
    centers: Tensor, offset: Tensor, thing: Tensor | None = None, stride: int = 4
) -> Tensor:
    """Assign every thing pixel to the centre nearest to where its offset points.

    Args:
        centers: (K, 2) (y, x) in pixels.
        offset: (2, H, W) (dy, dx) in pixels from each pixel to its centre.
        thing: (H, W) bool mask of the pixels to group; None = all.
        stride: grid step of the assignment (speed only).

    Returns:
        (H, W) int64, 0 outside ``thing`` (or when K = 0), k+1 for centre k.
    """
    if torch.jit.is_scripting():
        return _group_pixels(centers, offset, thing, stride)
    with one_intra_op_thread():  # see instembed.cluster.threads
        return _group_pixels(centers, offset, thing, stride)


def _group_pixels(centers: Tensor, offset: Tensor, thing: Tensor | None, stride: int) -> Tensor:
    _, h, w = offset.shape
    if offset.shape[0] != 2:
        raise ValueError(f"offset must be (2, H, W), got {list(offset.shape)}")
    mask = torch.ones(h, w, dtype=torch.bool, device=offset.device) if thing is None else thing
    if centers.shape[0] == 0:
        return torch.zeros(h, w, dtype=torch.long, device=offset.device)
    dt = offset.dtype if offset.is_floating_point() else torch.float32
    ys = torch.arange(h, dtype=dt, device=offset.device).view(h, 1).expand(h, w)
    xs = torch.arange(w, dtype=dt, device=offset.device).view(1, w).expand(h, w)
    target = torch.stack([ys + offset[0].to(dt), xs + offset[1].to(dt)], 0)
    return assign_labels(target, mask, centers.to(dt), None, stride)


def center_offset_cluster(
    center: Tensor,
    offset: Tensor,
    thing: Tensor | None = None,
    threshold: float = 0.1,
    nms_kernel: int = 7,
    top_k: int = 200,
    stride: int = 4,
) -> tuple[Tensor, Tensor, Tensor]:
    """Panoptic-DeepLab instance grouping of one image.

    Args:
        center: (H, W) or (1, H, W) heatmap; offset: (2, H, W); thing: (H, W) bool or None.
        threshold, nms_kernel, top_k: see :func:`find_instance_centers`.
        stride: see :func:`group_pixels`.

    Returns:
        labels (H, W) int64, scores (K,) center heatmap value of each instance, centers (K, 2).
    """
    centers, scores = find_instance_centers(center, threshold, nms_kernel, top_k)
    labels = group_pixels(centers, offset, thing, stride)
    return labels, scores, centers

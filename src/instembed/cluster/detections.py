"""Post-processing of models that find the objects themselves: from a model's raw per-image
:class:`~instembed.structures.Instances` (scores, soft or bool masks, optional boxes and classes)
to the final instances.

* :func:`filter_detections` (method ``"detections"``, proposal-based models such as Mask R-CNN):
  score threshold, minimum size, greedy non-maximum suppression on mask IoU (box IoU when the
  model gives no masks), per class when the instances have classes;
* :func:`filter_steps` (method ``"steps"``, recurrent models that emit one instance per step):
  the steps in order until the first one whose score is below ``stop_thresh``.

Both threshold soft masks (``>= mask_thresh``) and return Instances with bool ``masks`` (overlaps
allowed), ``labels`` painted from them (the higher score wins an overlapping pixel), ``scores``,
``classes`` (when given) and ``boxes`` (the model's, else those of the thresholded masks).

:func:`greedy_nms` is the suppression loop itself, on a precomputed IoU matrix: plain torch,
small, and exact (the same result as the textbook loop over boxes, highest score first). The mask
IoU matrix comes from the masks' pixels (:func:`mask_pixels`, :func:`pixel_iou`): only pixels
that several masks share are visited, so the many pairs of detections that do not touch cost
nothing; the values are :func:`mask_iou`'s (all pairs, whole-image masks), bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor

from instembed.detection.boxes import box_iou as _pairwise_box_iou
from instembed.structures import Instances, masks_to_boxes


def mask_iou(masks: Tensor, chunk_elements: int = 1 << 22) -> Tensor:
    """(N, N) float64 IoU of every pair of an (N, H, W) bool mask stack (0 between two empty
    masks); exact, in chunks of pixels of at most ``chunk_elements`` values."""
    m = masks.flatten(1)
    n, p = m.shape
    inter = torch.zeros(n, n, dtype=torch.float64, device=m.device)
    step = max(1, min(chunk_elements // max(1, n), 1 << 23))  # float32 counts stay exact
    for s in range(0, p, step):
        part = m[:, s : s + step].to(torch.float32)
        inter += (part @ part.t()).to(torch.float64)
    area = inter.diagonal().clone()
    union = area[:, None] + area[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def mask_pixels(masks: Tensor, select: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The pixels of an (N, H, W) bool mask stack as two int64 CPU vectors ``(owner, pixel)``:
    the mask index and the row-major ``y * W + x`` of every True pixel, by mask, then pixel.
    ``select``: (N,) bool, the masks to list (default: all).

    The stack is read once by a max over each row; only the rows that hold pixels are read
    again, so the cost is that of one pass plus the masks' rows, not of one pass per pair.
    """
    n, h, w = masks.shape
    if masks.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    rows = masks.view(torch.uint8).amax(2).bool()  # (N, H): rows with a pixel of the mask
    if select is not None:
        rows &= select.to(rows.device)[:, None]
    ni, yi = rows.nonzero(as_tuple=True)
    r, x = masks[ni, yi].nonzero(as_tuple=True)  # only those rows
    return ni[r].cpu(), (yi[r] * w + x).cpu()


def pixel_iou(owner: Tensor, pixel: Tensor, n: int) -> Tensor:
    """(n, n) float64 IoU of the masks given by their pixels (:func:`mask_pixels`; ``owner`` in
    ``0 .. n - 1``, each (owner, pixel) at most once) -- the same values as :func:`mask_iou` of
    the stack, bit for bit (both count exact integers and divide them the same way). Only the pixels shared by several masks are visited: a pixel
    covered by c masks adds 1 to each of its c (c - 1) / 2 pairs, and a pair that shares no
    pixel (every pair of disjoint boxes) keeps IoU 0 without being looked at."""
    area = torch.bincount(owner, minlength=n).to(torch.float64)
    order = torch.sort(pixel, stable=True).indices  # the masks of one pixel side by side
    p, o = pixel[order], owner[order]
    shared = torch.zeros(p.shape[0], dtype=torch.bool)
    if p.shape[0] > 1:
        dup = p[1:] == p[:-1]
        shared[1:] |= dup
        shared[:-1] |= dup
    p, o = p[shared], o[shared]
    keys = []
    d = 1  # entries d apart with the same pixel: pairs of that pixel's masks (one per pair)
    while d < p.shape[0]:
        same = p[d:] == p[:-d]
        if not bool(same.any()):
            break  # no pixel is covered by more than d masks
        keys.append(o[:-d][same] * n + o[d:][same])
        d += 1
    counts = torch.bincount(torch.cat(keys), minlength=n * n) if keys else None
    inter = torch.zeros(n, n, dtype=torch.float64)
    if counts is not None:
        once = counts.view(n, n).to(torch.float64)  # each pair's pixel once, as (a, b) or (b, a)
        inter += once + once.t()
    inter.diagonal().copy_(area)
    union = area[:, None] + area[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def sparse_mask_iou(masks: Tensor) -> Tensor:
    """:func:`mask_iou` -- the same (N, N) float64 values, bit for bit, on the CPU -- from the
    masks' pixels (:func:`mask_pixels`, :func:`pixel_iou`): the cost grows with the mask pixels
    and the pixels shared by several masks instead of N * N * H * W."""
    owner, pixel = mask_pixels(masks)
    return pixel_iou(owner, pixel, int(masks.shape[0]))


def box_iou(boxes: Tensor) -> Tensor:
    """(N, N) float64 IoU of every pair of (N, 4) ``x1, y1, x2, y2`` boxes (0 between empty
    boxes): :func:`instembed.detection.box_iou` of the boxes with themselves."""
    b = boxes.to(torch.float64)
    return _pairwise_box_iou(b, b)


def greedy_nms(
    iou: Tensor, scores: Tensor, iou_thresh: float, classes: Tensor | None = None
) -> Tensor:
    """Greedy non-maximum suppression on a precomputed IoU matrix.

    Visits the instances by decreasing score (ties: the earlier index first); an instance is
    kept unless a kept instance (of the same class, when ``classes`` is given) overlaps it with
    IoU > ``iou_thresh``.

    Args:
        iou: (N, N) pairwise IoU (:func:`mask_iou`, :func:`box_iou`).
        scores: (N,).
        iou_thresh: suppression threshold.
        classes: (N,) int or None (every instance competes with every other).

    Returns:
        (K,) int64 indices of the kept instances, by decreasing score.
    """
    n = int(scores.shape[0])
    order = torch.sort(scores.detach().cpu(), descending=True, stable=True).indices
    if n == 0:
        return order.to(device=scores.device, dtype=torch.long)
    over = iou.detach().cpu()[order][:, order] > iou_thresh
    if classes is not None:
        c = classes.detach().cpu()[order]
        over &= c[:, None] == c[None, :]
    suppressed = torch.zeros(n, dtype=torch.bool)
    keep: list[int] = []
    for i in range(n):
        if not bool(suppressed[i]):
            keep.append(i)
            suppressed |= over[i]
    return order[torch.tensor(keep, dtype=torch.long)].to(scores.device)


def _bool_masks(inst: Instances, mask_thresh: float) -> Tensor:
    masks = inst.get_masks()
    return masks if masks.dtype == torch.bool else masks >= mask_thresh


def _result(inst: Instances, masks: Tensor, keep: Tensor) -> Instances:
    """The kept instances (``keep``: indices, in output order) with bool masks."""
    masks = masks.index_select(0, keep)
    boxes = inst.boxes.index_select(0, keep).float() if inst.boxes is not None else None
    return Instances(
        masks=masks,
        scores=inst.scores.index_select(0, keep).float(),
        classes=None if inst.classes is None else inst.classes.index_select(0, keep).long(),
        boxes=masks_to_boxes(masks) if boxes is None else boxes,
        centers=None if inst.centers is None else inst.centers.index_select(0, keep),
        semantic=inst.semantic,
        meta=dict(inst.meta),
    )


def filter_detections(
    instances: Instances,
    *,
    score_thresh: float = 0.5,
    nms_iou: float = 0.5,
    mask_thresh: float = 0.5,
    min_size: int = 0,
) -> Instances:
    """The final instances of a proposal-based model (see the module docstring).

    1. soft masks become ``masks >= mask_thresh``;
    2. instances with ``score < score_thresh`` or fewer than ``min_size`` mask pixels go;
    3. greedy NMS (:func:`greedy_nms`) with IoU > ``nms_iou`` on the masks -- on the boxes
       when the raw instances carry no mask stack -- within each class when classes are given.

    Args:
        instances: one image's raw instances (``outputs.instances[b]``).

    Returns:
        Instances by decreasing score, bool ``masks``, ``boxes``, painted ``labels``.
    """
    inst = instances.tensors()
    masks = _bool_masks(inst, mask_thresh)
    dev = masks.device
    ok = inst.scores >= score_thresh
    if inst.masks is not None:  # mask IoU from the pixels of the masks that pass the score
        n = int(masks.shape[0])
        owner, pixel = mask_pixels(masks, select=ok)
        if min_size > 0:
            ok &= (torch.bincount(owner, minlength=n) >= min_size).to(dev)
        cand = ok.nonzero().squeeze(1)
        ok_cpu = ok.cpu()
        on = ok_cpu[owner]
        new_id = torch.cumsum(ok_cpu, 0) - 1  # index among the candidates (order kept)
        iou = pixel_iou(new_id[owner[on]], pixel[on], int(cand.shape[0]))
    else:
        if min_size > 0:
            ok &= masks.flatten(1).sum(1) >= min_size
        cand = ok.nonzero().squeeze(1)
        iou = box_iou(inst.get_boxes().index_select(0, cand))
    classes = None if inst.classes is None else inst.classes.index_select(0, cand)
    kept = greedy_nms(iou, inst.scores.index_select(0, cand), float(nms_iou), classes)
    return _result(inst, masks, cand.index_select(0, kept.to(dev)))


def filter_steps(
    instances: Instances, *, stop_thresh: float = 0.5, mask_thresh: float = 0.5
) -> Instances:
    """The final instances of a recurrent model that emits one instance per step, in order:
    the steps before the first one whose score is below ``stop_thresh``, masks thresholded at
    ``mask_thresh`` (see the module docstring).

    Args:
        instances: one image's raw instances, one per step in step order (``scores`` the
            per-step confidence).

    Returns:
        Instances in step order, bool ``masks``, ``boxes``, painted ``labels``.
    """
    inst = instances.tensors()
    masks = _bool_masks(inst, mask_thresh)
    low = (inst.scores < stop_thresh).nonzero()
    n = int(low[0, 0]) if low.numel() else len(inst)
    return _result(inst, masks, torch.arange(n, device=masks.device))

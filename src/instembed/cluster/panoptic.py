"""Panoptic fusion of a semantic map and an instance map (Panoptic-DeepLab / detectron2's
``merge_semantic_and_instance``, Kirillov et al. 2019's panoptic format).

* each instance takes the class that most of its pixels have in the semantic map, counting
  only thing classes (ties go to the smaller class id); an instance without any thing pixel is
  dropped;
* the n-th instance of class c (in order of instance id) gets the panoptic id
  ``c * label_divisor + n`` (n = 1, 2, ...);
* every stuff class takes its pixels not covered by an instance when there are at least
  ``stuff_area`` of them (id ``c * label_divisor``);
* the other pixels get ``void_label``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def majority_class(instances: Tensor, semantic: Tensor, n: int, classes: Sequence[int]) -> Tensor:
    """Majority semantic class of each instance among ``classes`` (-1 when none).

    Args:
        instances: (H, W) int64, ids 1..n (0 = background).
        semantic: (H, W) int64 class ids.
        n: number of instances.
        classes: the classes that may vote.

    Returns:
        (n,) int64.
    """
    dev = instances.device
    cls = torch.as_tensor(list(classes), dtype=torch.long, device=dev)
    if n == 0 or cls.numel() == 0:
        return torch.full((n,), -1, dtype=torch.long, device=dev)
    lut_size = int(max(int(semantic.max().item()), int(cls.max().item()))) + 1
    lut = torch.full((lut_size,), -1, dtype=torch.long, device=dev)
    lut[cls] = torch.arange(cls.numel(), device=dev)
    sem = semantic.clamp(min=0)
    col = lut[sem.reshape(-1)]
    inst = instances.reshape(-1)
    sel = (inst > 0) & (col >= 0) & (semantic.reshape(-1) >= 0)
    c = cls.numel()
    votes = torch.bincount((inst[sel] - 1) * c + col[sel], minlength=n * c).reshape(n, c)
    # among tied columns argmax keeps the first; order the columns by class id for "smaller id"
    order = torch.argsort(cls)
    best = order[votes[:, order].argmax(1)]
    out = cls[best]
    return torch.where(votes.sum(1) > 0, out, torch.full_like(out, -1))


def panoptic_fusion(
    semantic: Tensor,
    instances: Tensor,
    thing_classes: Sequence[int],
    stuff_classes: Sequence[int] | None = None,
    *,
    stuff_area: int = 2048,
    label_divisor: int = 1000,
    void_label: int = -1,
) -> tuple[Tensor, Tensor]:
    """Fuse a semantic map and an instance map into a panoptic map.

    Args:
        semantic: (H, W) int64 class ids (or (K, H, W) logits, argmax taken).
        instances: (H, W) int64 instance ids, 0 = none.
        thing_classes: class ids that have instances.
        stuff_classes: class ids of stuff; None = every class in ``semantic`` that is not a thing
            class (negative ids excluded).
        stuff_area: smallest area of a stuff segment.
        label_divisor: panoptic id = class * label_divisor + instance number.
        void_label: value of unassigned pixels.

    Returns:
        panoptic (H, W) int64, and the class of each instance id (n,) int64 (-1 = dropped).
    """
    if semantic.dim() == 3:
        semantic = semantic.argmax(0)
    if semantic.shape != instances.shape:
        raise ValueError(
            f"semantic and instances must have the same (H, W); got {list(semantic.shape)} and "
            f"{list(instances.shape)}"
        )
    semantic = semantic.to(torch.long)
    instances = instances.to(torch.long)
    n = int(instances.max().item()) if instances.numel() > 0 else 0
    n = max(n, 0)
    pan = torch.full_like(semantic, void_label)
    inst_class = majority_class(instances, semantic, n, thing_classes)
    if n > 0:
        # number the instances of each class 1, 2, ... in order of id
        valid = inst_class >= 0
        number = torch.zeros(n, dtype=torch.long, device=semantic.device)
        for c in inst_class[valid].unique().tolist():
            ids = (inst_class == c).nonzero().squeeze(1)
            number[ids] = torch.arange(1, ids.numel() + 1, device=semantic.device)
        pid = torch.where(
            valid, inst_class * label_divisor + number, torch.full_like(number, void_label)
        )
        lut = torch.cat([torch.tensor([void_label], device=semantic.device), pid])
        pan = lut[instances]
    if stuff_classes is None:
        things = set(int(c) for c in thing_classes)
        stuff_classes = [c for c in semantic.unique().tolist() if c >= 0 and c not in things]
    free = pan == void_label
    for c in stuff_classes:
        mask = free & (semantic == int(c))
        if int(mask.sum().item()) >= stuff_area:
            pan = torch.where(mask, torch.full_like(pan, int(c) * label_divisor), pan)
    return pan, inst_class

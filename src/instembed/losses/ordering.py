"""Spatial-centre ordering (the report's phase 2): instances as ordered slots.

The instances of an image are sorted by their centroid -- by ``x`` (column), ties broken by
``y`` (row) -- and the ``k``-th of them (0-based) is slot ``k + 1`` of ``K = num_slots``;
slot 0 is background. A network with a ``K + 1``-channel per-pixel classification head (the
embedding family with a ``semantic`` head of ``K + 1`` channels, or the ``ordering`` model)
is trained with pixel-wise cross-entropy against this slot map; the ``"slots"`` post-processing
(``instembed.cluster.slots``) turns the argmax slot map back into instances.

Pixels of the instances past the ``K``-th, and ``ignore`` pixels, are left out of the loss.

Why it fails on identical objects (see docs/instance_fcn.md): the slot of an object depends
on how many objects lie to its left (above it in its column), a global count that a
convolution, which maps identical neighbourhoods to identical outputs, cannot see -- the
coloring dilemma of Novotny et al. (2018).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instembed.structures import IGNORE_INDEX, Outputs


def centroids(labels: Tensor) -> tuple[Tensor, Tensor]:
    """``(ids, centres)``: the instance ids present in a (H, W) label image (sorted, 0 left
    out) and their centroids (N, 2) ``(y, x)`` float64 (mean pixel coordinates)."""
    flat = labels.reshape(-1).long()
    h, w = labels.shape
    ids = torch.unique(flat)
    ids = ids[ids > 0]
    if ids.numel() == 0:
        return ids, torch.zeros(0, 2, dtype=torch.float64, device=labels.device)
    lut = torch.zeros(int(ids.max()) + 1, dtype=torch.long, device=labels.device)
    lut[ids] = torch.arange(1, ids.numel() + 1, device=labels.device)
    idx = lut[flat]  # 0 = background, 1..N
    ar = torch.arange(h * w, device=labels.device)
    ys, xs = (ar // w).to(torch.float64), (ar % w).to(torch.float64)
    n = ids.numel() + 1
    count = torch.zeros(n, dtype=torch.float64, device=labels.device).index_add_(
        0, idx, torch.ones_like(ys)
    )
    sy = torch.zeros(n, dtype=torch.float64, device=labels.device).index_add_(0, idx, ys)
    sx = torch.zeros(n, dtype=torch.float64, device=labels.device).index_add_(0, idx, xs)
    c = torch.stack([sy, sx], 1)[1:] / count[1:, None]
    return ids, c


def spatial_order(centres: Tensor) -> Tensor:
    """The order of instances with centroids ``centres`` (N, 2) ``(y, x)``: indices sorted by
    ``x``, ties broken by ``y`` (both ascending; exact ties of both keep the given order)."""
    if centres.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=centres.device)
    by_y = torch.sort(centres[:, 0], stable=True).indices
    by_x = torch.sort(centres[by_y, 1], stable=True).indices
    return by_y[by_x]


def slot_targets(labels: Tensor, num_slots: int, ignore: Tensor | None = None) -> Tensor:
    """(H, W) int64 slot map of a (H, W) label image: background 0, the instance of rank ``r``
    in :func:`spatial_order` gets slot ``r + 1`` (``r < num_slots``); pixels of later
    instances and ``ignore`` pixels are :data:`~instembed.structures.IGNORE_INDEX`."""
    ids, cen = centroids(labels)
    order = spatial_order(cen)
    lut = torch.zeros(int(ids.max()) + 1 if ids.numel() else 1, dtype=torch.long,
                      device=labels.device)  # fmt: skip
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=labels.device)
    slot = torch.where(rank < num_slots, rank + 1, torch.full_like(rank, IGNORE_INDEX))
    if ids.numel():
        lut[ids] = slot
    out = lut[labels.long().clamp(min=0, max=lut.numel() - 1)]
    out = torch.where(labels > 0, out, torch.zeros_like(out))
    if ignore is not None:
        out = torch.where(ignore.bool(), torch.full_like(out, IGNORE_INDEX), out)
    return out


def ordering_loss(
    logits: Tensor,
    labels: Tensor,
    ignore: Tensor | None = None,
    *,
    num_slots: int | None = None,
    background_weight: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Pixel-wise cross-entropy of (B, K + 1, H, W) slot logits against the slot maps of the
    (B, H, W) label images (:func:`slot_targets`); ``num_slots`` defaults to ``K``.

    Returns ``(total, {"slot_ce", "slot_acc"})``; ``slot_acc`` is the pixel accuracy on the
    instance pixels (not on background). An image without labelled pixels gives 0."""
    b, c = logits.shape[:2]
    k = c - 1 if num_slots is None else int(num_slots)
    if c != k + 1:
        raise ValueError(f"slot logits must have num_slots + 1 = {k + 1} channels, got {c}")
    target = torch.stack(
        [slot_targets(labels[i], k, None if ignore is None else ignore[i]) for i in range(b)]
    )
    weight = torch.ones(c, dtype=logits.dtype, device=logits.device)
    weight[0] = float(background_weight)
    valid = target != IGNORE_INDEX
    if not bool(valid.any()):
        zero = logits.sum() * 0.0
        return zero, {"slot_ce": zero.detach(), "slot_acc": zero.detach()}
    ce = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE_INDEX)
    inst = valid & (target > 0)
    acc = (logits.argmax(1)[inst] == target[inst]).float().mean() if inst.any() else ce * 0
    return ce, {"slot_ce": ce.detach(), "slot_acc": acc.detach()}


class OrderingLoss(nn.Module):
    """``forward(outputs, batch) -> (total, terms)``: :func:`ordering_loss` of
    ``outputs.semantic`` (the K + 1 slot logits) against ``batch["labels"]``."""

    def __init__(self, num_slots: int | None = None, background_weight: float = 1.0) -> None:
        super().__init__()
        self.num_slots = None if num_slots is None else int(num_slots)
        self.background_weight = float(background_weight)

    def forward(self, outputs: Outputs, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        if outputs.semantic is None:
            raise ValueError(
                "the ordering loss needs outputs.semantic (K + 1 slot logits): the 'ordering' "
                "model, or the embedding family with heads {semantic: K + 1}"
            )
        return ordering_loss(
            outputs.semantic,
            batch["labels"],
            batch.get("ignore"),
            num_slots=self.num_slots,
            background_weight=self.background_weight,
        )

"""The training loss of the recurrent-attention family (Ren & Zemel 2017), as the paper:

* **matching** -- the first ``min(T, N)`` steps of an image (``T`` steps run, ``N`` objects) are
  matched one-to-one to its ground-truth objects by the Hungarian algorithm
  (``scipy.optimize.linear_sum_assignment``) on the cost ``-softIoU(step mask, object mask)``;
* **segmentation** -- ``1 - softIoU`` (or ``1 - Dice``) of each matched pair, averaged over the
  objects, ignored pixels excluded;
* **box** -- ``1 - IoU`` of the step's predicted attention box and its matched object's box,
  plus an L1 term on the box coordinates in units of the image size (a gradient even when the
  boxes do not overlap);
* **score** -- the monotone score loss: target 1 for the steps ``t < N`` (each matched to an
  object), 0 for the steps after the last object; the binary cross-entropy is taken on
  ``min_{t' <= t} s_t'`` for positive targets and on ``max_{t' >= t} s_t'`` for negative ones,
  so that the scores are pushed to fall once and stay low (the paper's monotone loss).

An image without objects only has the score term (its single step should stop); the total is
always finite. The model's step curriculum lives in the model (``RecurrentAttention.train_step``).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from instembed.structures import Outputs


def soft_iou_matrix(pred: Tensor, gt: Tensor, valid: Tensor | None = None, eps: float = 1e-6):
    """(T, N) soft IoU ``sum(p g) / sum(p + g - p g)`` of every soft mask ``pred`` (T, H, W) with
    every mask ``gt`` (N, H, W); ``valid`` (H, W) bool restricts the pixels."""
    p = pred.flatten(1)
    g = gt.flatten(1).to(p.dtype)
    if valid is not None:
        v = valid.flatten().to(p.dtype)
        p, g = p * v, g * v
    inter = p @ g.t()
    union = p.sum(1)[:, None] + g.sum(1)[None, :] - inter
    return inter / union.clamp(min=eps)


def soft_dice_matrix(pred: Tensor, gt: Tensor, valid: Tensor | None = None, eps: float = 1e-6):
    """(T, N) soft Dice ``2 sum(p g) / sum(p + g)`` (see :func:`soft_iou_matrix`)."""
    p = pred.flatten(1)
    g = gt.flatten(1).to(p.dtype)
    if valid is not None:
        v = valid.flatten().to(p.dtype)
        p, g = p * v, g * v
    inter = p @ g.t()
    return 2 * inter / (p.sum(1)[:, None] + g.sum(1)[None, :]).clamp(min=eps)


def hungarian_match(overlap: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the one-to-one assignment maximising the total ``overlap`` (T, N)."""
    if overlap.numel() == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows, cols = linear_sum_assignment(-overlap.detach().double().cpu().numpy())
    return rows.astype(np.int64), cols.astype(np.int64)


def monotone_score_loss(scores: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """Mean over steps of the monotone BCE (one image): (T,) scores in (0, 1), (T,) 0/1 target."""
    low = torch.cummin(scores, 0).values  # min_{t' <= t}
    high = torch.flip(torch.cummax(torch.flip(scores, [0]), 0).values, [0])  # max_{t' >= t}
    pos = -target * torch.log(low.clamp(min=eps))
    neg = -(1 - target) * torch.log((1 - high).clamp(min=eps))
    return (pos + neg).mean()


def recurrent_attention_loss(
    masks: Tensor,
    scores: Tensor,
    boxes: Tensor,
    gt_masks: list[Tensor],
    gt_boxes: list[Tensor],
    ignore: Tensor | None = None,
    *,
    seg_weight: float = 1.0,
    box_weight: float = 1.0,
    score_weight: float = 1.0,
    seg_loss: str = "iou",
) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss of one batch.

    Args:
        masks: (B, T, H, W) soft masks of the T steps; scores: (B, T) in (0, 1); boxes: (B, T, 4)
            predicted attention boxes (pixels, ``x1, y1, x2, y2``).
        gt_masks, gt_boxes: per image, (N, H, W) bool masks and (N, 4) boxes.
        ignore: (B, H, W) bool, pixels left out of the segmentation term.

    Returns:
        (total, terms) with terms ``seg``, ``box``, ``score``, ``matched_iou``.
    """
    if seg_loss not in ("iou", "dice"):
        raise ValueError(f"seg_loss must be 'iou' or 'dice', got {seg_loss!r}")
    overlap_fn = soft_iou_matrix if seg_loss == "iou" else soft_dice_matrix
    b, t_steps, h, w = masks.shape
    size = masks.new_tensor([w, h, w, h])
    seg_terms, box_terms, score_terms, ious = [], [], [], []
    for i in range(b):
        gm = gt_masks[i]
        n = int(gm.shape[0])
        k = min(t_steps, n)
        if k:
            valid = None if ignore is None else ~ignore[i]
            ov = overlap_fn(masks[i, :k], gm, valid)  # (k, N)
            rows, cols = hungarian_match(ov)
            r = torch.as_tensor(rows, device=masks.device)
            c = torch.as_tensor(cols, device=masks.device)
            matched = ov[r, c]
            seg_terms.append((1 - matched).sum() / n)
            ious.append(matched.detach().mean())
            pb = boxes[i, r]
            gb = gt_boxes[i][c].to(pb)
            biou = _box_iou(pb, gb)
            l1 = ((pb - gb).abs() / size).sum(1)
            box_terms.append((1 - biou + l1).mean())
        target = (torch.arange(t_steps, device=scores.device) < n).to(scores.dtype)
        score_terms.append(monotone_score_loss(scores[i], target))
    zero = masks.sum() * 0
    seg = torch.stack(seg_terms).mean() if seg_terms else zero
    box = torch.stack(box_terms).mean() if box_terms else zero
    score = torch.stack(score_terms).mean()
    total = seg_weight * seg + box_weight * box + score_weight * score
    miou = torch.stack(ious).mean() if ious else zero.detach()
    return total, {
        "seg": seg.detach(),
        "box": box.detach(),
        "score": score.detach(),
        "matched_iou": miou,
    }


def _box_iou(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_a + area_b - inter + eps)


class RecurrentAttentionLoss(nn.Module):
    """``forward(outputs, batch) -> (total, terms)`` of :func:`recurrent_attention_loss`, reading
    ``outputs.aux`` (``masks``, ``scores``, ``boxes``) and the batch's ``instance_masks``,
    ``boxes`` and ``ignore``."""

    def __init__(
        self,
        seg_weight: float = 1.0,
        box_weight: float = 1.0,
        score_weight: float = 1.0,
        seg_loss: str = "iou",
    ) -> None:
        super().__init__()
        self.options = {
            "seg_weight": float(seg_weight),
            "box_weight": float(box_weight),
            "score_weight": float(score_weight),
            "seg_loss": str(seg_loss),
        }

    def forward(self, outputs: Outputs, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        aux = outputs.aux
        return recurrent_attention_loss(
            aux["masks"],
            aux["scores"],
            aux["boxes"],
            list(batch["instance_masks"]),
            list(batch["boxes"]),
            batch.get("ignore"),
            **self.options,
        )

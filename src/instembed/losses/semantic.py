"""Semantic cross-entropy with an ignore label, class weights and optional hard-pixel mining.

``semantic_ce(logits (B, K, H, W), target (B, H, W))``: mean of the per-pixel weighted CE over
non-ignored pixels (``ignore_index``, default 255). ``pixel_weights`` (B, H, W) multiply the
per-pixel loss (Panoptic-DeepLab's small-instance weights). ``top_k`` in (0, 1]: keep only the
hardest ``top_k`` fraction of the valid pixels (bootstrapped CE, Panoptic-DeepLab uses 0.2 on
Cityscapes), averaged over them.

Without a semantic target in the batch, :class:`SemanticCE` trains foreground/background:
target = (labels > 0), pixels in ``batch["ignore"]`` set to ``ignore_index``.
"""

from __future__ import annotations

import torch
from torch import nn

from instembed.structures import IGNORE_INDEX


def semantic_ce(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    class_weights: torch.Tensor | list[float] | None = None,
    ignore_index: int = IGNORE_INDEX,
    pixel_weights: torch.Tensor | None = None,
    top_k: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Returns ``(total, {"semantic": total})``."""
    if logits.ndim != 4 or target.shape != (logits.shape[0], *logits.shape[-2:]):
        raise ValueError(
            f"semantic logits must be (B, K, H, W) and target (B, H, W); got "
            f"{tuple(logits.shape)} and {tuple(target.shape)}"
        )
    if not 0 < top_k <= 1:
        raise ValueError(f"top_k must be in (0, 1], got {top_k}")
    target = target.long()
    k = logits.shape[1]
    bad = (target != ignore_index) & ((target < 0) | (target >= k))
    if bad.any():
        raise ValueError(
            f"semantic target has class ids outside 0..{k - 1} (and != ignore {ignore_index}): "
            f"{sorted(set(target[bad].tolist()))[:5]}"
        )
    w = None
    if class_weights is not None:
        w = torch.as_tensor(class_weights, dtype=logits.dtype, device=logits.device)
        if w.shape != (k,):
            raise ValueError(f"class_weights must have K = {k} entries, got {tuple(w.shape)}")
    per_pixel = nn.functional.cross_entropy(
        logits, target, weight=w, ignore_index=ignore_index, reduction="none"
    )  # (B, H, W), 0 at ignored pixels
    valid = target != ignore_index
    if pixel_weights is not None:
        per_pixel = per_pixel * pixel_weights.to(per_pixel.dtype)
    vals = per_pixel[valid]
    if vals.numel() == 0:
        total = 0.0 * logits.sum()
    elif top_k < 1:
        n = max(1, int(round(top_k * vals.numel())))
        total = torch.topk(vals, n, sorted=False).values.mean()
    elif w is None:
        total = vals.mean()
    else:  # PyTorch's weighted mean convention: divide by the sum of target class weights
        total = vals.sum() / w[target[valid]].sum().clamp(min=torch.finfo(w.dtype).tiny)
    return total, {"semantic": total}


def default_semantic_target(batch: dict, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``batch["semantic"]``, or foreground/background from the labels; ignore -> ignore_index."""
    if batch.get("semantic") is not None:
        target = batch["semantic"].long().clone()
    else:
        target = (batch["labels"] > 0).long()
    if batch.get("ignore") is not None:
        target[batch["ignore"].bool()] = ignore_index
    return target


class SemanticCE(nn.Module):
    def __init__(self, **params) -> None:
        super().__init__()
        self.params = params

    def forward(self, outputs, batch: dict):
        if outputs.semantic is None:
            raise ValueError("semantic_ce loss needs outputs.semantic (add a 'semantic' head)")
        ign = self.params.get("ignore_index", IGNORE_INDEX)
        return semantic_ce(outputs.semantic, default_semantic_target(batch, ign), **self.params)

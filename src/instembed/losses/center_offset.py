"""Panoptic-DeepLab loss (Cheng et al. 2020): center heatmap MSE + offset L1 + semantic CE.

::

    L = w_center * L_center + w_offset * L_offset + w_semantic * L_semantic
    L_center   = sum_p c_p (center_p - heatmap_p)^2 / sum_p c_p           (c = center_weights)
    L_offset   = sum_p o_p |offset_p - target_p|_1 / sum_p o_p           (o = offset_weights)
    L_semantic = bootstrapped CE over the hardest ``top_k`` pixels, pixel weights = small-instance
                 weights (see losses.semantic), only when the model has a semantic head

Defaults are the paper's: w_center = 200, w_offset = 0.01, w_semantic = 1, top_k = 0.2.
Sums run over all pixels of the batch (as the reference implementation pools them), so the batch
value is the mean of single-image values weighted by their numbers of weighted pixels.
Targets come from ``instembed.targets.build_targets("center_offset", labels)`` in the data stage;
when the batch lacks them, :class:`CenterOffsetLoss` builds them from ``batch["labels"]``.
Pixels in ``batch["ignore"]`` get centre and offset weight 0 (and semantic target void).
"""

from __future__ import annotations

import torch
from torch import nn

from instembed.losses.semantic import default_semantic_target, semantic_ce
from instembed.structures import IGNORE_INDEX
from instembed.targets import center_offset_targets

TARGET_KEYS = (
    "center_heatmap",
    "offset_target",
    "offset_weights",
    "center_weights",
    "semantic_weights",
)


def _wmean(v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    s = w.sum()
    return (v * w).sum() / s if s > 0 else 0.0 * v.sum()


def center_offset_loss(
    center: torch.Tensor,
    offset: torch.Tensor,
    center_heatmap: torch.Tensor,
    offset_target: torch.Tensor,
    *,
    center_weights: torch.Tensor | None = None,
    offset_weights: torch.Tensor | None = None,
    semantic: torch.Tensor | None = None,
    semantic_target: torch.Tensor | None = None,
    semantic_weights: torch.Tensor | None = None,
    w_center: float = 200.0,
    w_offset: float = 0.01,
    w_semantic: float = 1.0,
    top_k: float = 0.2,
    class_weights=None,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """center (B, 1, H, W), offset (B, 2, H, W) predictions; heatmap (B, 1, H, W) and offset
    target (B, 2, H, W); weights (B, H, W). Returns ``(total, {"center", "offset"[, "semantic"]})``.
    """
    if center.shape != center_heatmap.shape:
        raise ValueError(
            f"center {tuple(center.shape)} and center_heatmap {tuple(center_heatmap.shape)} differ"
        )
    if offset.shape != offset_target.shape or offset.shape[1] != 2:
        raise ValueError(
            f"offset {tuple(offset.shape)} and offset_target {tuple(offset_target.shape)} must "
            "both be (B, 2, H, W)"
        )
    b, _, h, w = center.shape
    cw = torch.ones(b, h, w, device=center.device) if center_weights is None else center_weights
    ow = (offset_target.abs().sum(1) > 0).float() if offset_weights is None else offset_weights
    cw, ow = cw.to(center.dtype), ow.to(offset.dtype)
    terms = {
        "center": _wmean(((center - center_heatmap) ** 2)[:, 0], cw),
        "offset": _wmean((offset - offset_target).abs().sum(1), ow),
    }
    total = w_center * terms["center"] + w_offset * terms["offset"]
    if semantic is not None:
        if semantic_target is None:
            raise ValueError("semantic logits given without semantic_target")
        terms["semantic"], _ = semantic_ce(
            semantic,
            semantic_target,
            class_weights=class_weights,
            ignore_index=ignore_index,
            pixel_weights=semantic_weights,
            top_k=top_k,
        )
        total = total + w_semantic * terms["semantic"]
    return total, terms


class CenterOffsetLoss(nn.Module):
    """Reads ``outputs.center/offset[/semantic]``; targets from the batch or built on the fly.

    ``target_params`` (sigma, small_instance_area, small_instance_weight) are used only when
    the batch lacks the targets.
    """

    def __init__(self, target_params: dict | None = None, **params) -> None:
        super().__init__()
        self.params = params
        self.target_params = dict(target_params or {})

    def forward(self, outputs, batch: dict):
        if outputs.center is None or outputs.offset is None:
            raise ValueError("center_offset loss needs outputs.center and outputs.offset heads")
        tg = {k: batch[k] for k in TARGET_KEYS if k in batch}
        if len(tg) < len(TARGET_KEYS):
            ign = batch.get("ignore")
            per = [
                center_offset_targets(
                    batch["labels"][i], ignore=None if ign is None else ign[i], **self.target_params
                )
                for i in range(batch["labels"].shape[0])
            ]
            tg = {k: torch.stack([p[k] for p in per]) for k in TARGET_KEYS}
        if batch.get("ignore") is not None:  # ignored pixels weigh 0 however targets were built
            keep = (~batch["ignore"].bool()).to(tg["center_weights"].dtype)
            tg = {**tg, "center_weights": tg["center_weights"] * keep}
            tg["offset_weights"] = tg["offset_weights"] * keep
        dt = outputs.center.dtype
        ign = self.params.get("ignore_index", IGNORE_INDEX)
        return center_offset_loss(
            outputs.center,
            outputs.offset,
            tg["center_heatmap"].to(dt),
            tg["offset_target"].to(dt),
            center_weights=tg["center_weights"],
            offset_weights=tg["offset_weights"],
            semantic=outputs.semantic,
            semantic_target=None
            if outputs.semantic is None
            else default_semantic_target(batch, ign),
            semantic_weights=tg["semantic_weights"],
            **self.params,
        )

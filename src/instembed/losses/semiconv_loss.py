"""Attractive loss of Novotny et al. (2018), eq. 5, for semi-convolutional embeddings.

For the segments S of one image (instances; background too with ``background="cluster"``)::

    L_attract = sum_S 1/|S| sum_{u in S} || Psi_u - mean_{v in S} Psi_v ||       (unsquared L2)

summed over segments as in the paper (``segment_reduction="sum"``), or averaged
(``"mean"``). Optional repulsive term (not in eq. 5; off by default, ``repulsive_weight=0``)::

    L_repel = 1/(C (C-1)) sum_{A != B} [ margin - ||mean_A - mean_B|| ]_+^2

Batch reduction: mean over images. 0 instances give 0 (finite gradient).
"""

from __future__ import annotations

import torch
from torch import nn

from instembed.losses.discriminative import pairwise_hinge
from instembed.losses.segments import (
    check_spatial,
    find_segments,
    pixels_of,
    reduce_groups,
    segment_sum,
)


def semiconv_loss(
    embedding: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore: torch.Tensor | None = None,
    background: str = "ignore",
    segment_reduction: str = "sum",
    repulsive_weight: float = 0.0,
    margin: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """embedding (B, E, H, W) (Psi, coordinates already added), labels (B, H, W) int.

    Returns ``(total, {"attract"[, "repel"]})``.
    """
    if background not in ("ignore", "cluster"):
        raise ValueError(f"background must be 'ignore' or 'cluster', got {background!r}")
    if segment_reduction not in ("sum", "mean"):
        raise ValueError(f"segment_reduction must be 'sum' or 'mean', got {segment_reduction!r}")
    check_spatial(embedding, labels, "embedding")
    segs = find_segments(labels, ignore, include_background=background == "cluster")
    x = pixels_of(embedding, segs)
    mu = segs.mean(x)
    d = torch.linalg.vector_norm(x - mu[segs.seg], dim=1)
    per_seg = segment_sum(d, segs.seg, segs.num_segments) / segs.counts.to(x.dtype)
    per_group = segment_sum(per_seg, segs.seg_group, segs.num_groups)
    if segment_reduction == "mean":
        c = segment_sum(torch.ones_like(per_seg), segs.seg_group, segs.num_groups)
        per_group = per_group / c.clamp(min=1)
    terms = {"attract": reduce_groups(per_group, segs)}
    total = terms["attract"]
    if repulsive_weight:
        terms["repel"] = reduce_groups(pairwise_hinge(mu, segs, margin, 2), segs)
        total = total + repulsive_weight * terms["repel"]
    return total + 0.0 * embedding.sum(), terms


class SemiconvLoss(nn.Module):
    """Module form of :func:`semiconv_loss` reading ``outputs.embedding`` and the batch."""

    def __init__(self, **params) -> None:
        super().__init__()
        self.params = params

    def forward(self, outputs, batch: dict):
        if outputs.embedding is None:
            raise ValueError("semiconv loss needs outputs.embedding (add an 'embedding' head)")
        return semiconv_loss(
            outputs.embedding, batch["labels"], ignore=batch.get("ignore"), **self.params
        )

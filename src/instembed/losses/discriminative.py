"""Discriminative loss of De Brabandere, Neven and Van Gool (2017), eq. 5-8 (numbering of our brief).

For the C clusters (instances) of one image, with mean embeddings mu_c over their N_c pixels::

    L_var  = 1/C sum_c 1/N_c sum_{i in c} [ ||mu_c - x_i|| - delta_v ]_+^2
    L_dist = 1/(C (C-1)) sum_{cA != cB} [ 2 delta_d - ||mu_cA - mu_cB|| ]_+^2   (ordered pairs)
    L_reg  = 1/C sum_c ||mu_c||
    L      = alpha L_var + beta L_dist + gamma L_reg        (defaults alpha = beta = 1, gamma = 0.001)

``||.||`` is the L2 norm (``norm=2``, the paper's) or L1 (``norm=1``). L_dist is 0 when C < 2;
every term is 0 when C = 0. Batch reduction: mean over the B images (an image without
instances contributes 0). When L_var = L_dist = 0, every pixel lies within delta_v of its mean
and means are >= 2 delta_d apart, so (paper eq. 9) a pixel is closer to its own mean than to any
other when delta_d > delta_v, and closer to every pixel of its instance than to any pixel of
another when delta_d > 2 delta_v.

Background policy (``background``):

* ``"ignore"`` (default): label-0 pixels are not used.
* ``"cluster"``: the label-0 pixels of an image form one more cluster, in all three terms
  (not available in per-class mode).
* ``"push"``: background pixels are pushed at least 2 delta_d from every instance mean, an extra
  term ``L_bg = 1/C sum_c 1/N_bg sum_{i in bg} [2 delta_d - ||mu_c - x_i||]_+^2`` weighted by
  ``beta`` (reported as ``terms["bg"]``).

Per-class mode (``semantic`` given, ``per_class=True``): the loss is computed separately within
each semantic class of each image (instances of different classes are not pushed apart) and
averaged over the classes present in the image, then over images. The embedding may then be
per-class (B, K, E, H, W): pixels of class k use slice k. Pixels with ``semantic ==
ignore_index`` are dropped.
"""

from __future__ import annotations

import torch
from torch import nn

from instembed.losses.segments import (
    Segments,
    check_spatial,
    find_segments,
    pixels_of,
    reduce_groups,
    segment_sum,
)
from instembed.structures import IGNORE_INDEX

BACKGROUND_POLICIES = ("ignore", "cluster", "push")


def _pairwise_dist(mu: torch.Tensor, norm: int) -> torch.Tensor:
    """(S, S) distances between rows of mu (S, E); zero-safe gradients (vector_norm)."""
    return torch.linalg.vector_norm(mu.unsqueeze(1) - mu.unsqueeze(0), ord=norm, dim=-1)


def _check_norm(norm: int) -> int:
    if norm not in (1, 2):
        raise ValueError(f"norm must be 1 or 2, got {norm!r}")
    return norm


def pairwise_hinge(mu: torch.Tensor, segs: Segments, margin: float, norm: int) -> torch.Tensor:
    """(G,) per group: mean over ordered pairs (A != B, same group) of [margin - ||mu_A - mu_B||]_+^2."""
    g = segs.num_groups
    if mu.shape[0] < 2:
        return mu.new_zeros(g)
    same = segs.seg_group.unsqueeze(1) == segs.seg_group.unsqueeze(0)
    same.fill_diagonal_(False)
    h = torch.relu(margin - _pairwise_dist(mu, norm)) ** 2 * same
    per_group = segment_sum(h.sum(1), segs.seg_group, g)
    c = segment_sum(torch.ones_like(segs.counts), segs.seg_group, g).to(mu.dtype)
    return per_group / (c * (c - 1)).clamp(min=1)


def discriminative_loss(
    embedding: torch.Tensor,
    labels: torch.Tensor,
    *,
    delta_v: float = 0.5,
    delta_d: float = 1.5,
    alpha: float = 1.0,
    beta: float = 1.0,
    gamma: float = 0.001,
    norm: int = 2,
    background: str = "ignore",
    ignore: torch.Tensor | None = None,
    semantic: torch.Tensor | None = None,
    per_class: bool = False,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Discriminative loss (see module doc).

    embedding (B, E, H, W) float, or (B, K, E, H, W) per-class with ``per_class``;
    labels (B, H, W) int, 0 = background; ignore (B, H, W) bool; semantic (B, H, W) int.
    Returns ``(total, {"var", "dist", "reg"[, "bg"]})``, all scalars.
    """
    _check_norm(norm)
    if background not in BACKGROUND_POLICIES:
        raise ValueError(f"background must be one of {BACKGROUND_POLICIES}, got {background!r}")
    if per_class and background == "cluster":
        raise ValueError(
            "background='cluster' is not defined in per-class mode (which class would the "
            "background cluster belong to?); use background='ignore' or 'push'"
        )
    if per_class and semantic is None:
        raise ValueError("per_class=True needs the semantic (B, H, W) class map")
    if embedding.ndim == 5 and not per_class:
        raise ValueError("a per-class embedding (B, K, E, H, W) needs per_class=True")
    check_spatial(embedding, labels, "embedding", ndim=embedding.ndim)
    segs = find_segments(
        labels,
        ignore,
        include_background=background == "cluster",
        semantic=semantic if per_class else None,
        ignore_index=ignore_index,
    )
    x = pixels_of(embedding, segs)  # (P, E)
    mu = segs.mean(x)  # (S, E)
    g = segs.num_groups
    c = segment_sum(torch.ones_like(segs.counts), segs.seg_group, g).to(x.dtype)  # (G,)

    d = torch.linalg.vector_norm(x - mu[segs.seg], ord=norm, dim=1)  # (P,)
    var_seg = segment_sum(torch.relu(d - delta_v) ** 2, segs.seg, segs.num_segments)
    var_seg = var_seg / segs.counts.to(x.dtype)
    var_g = segment_sum(var_seg, segs.seg_group, g) / c.clamp(min=1)
    dist_g = pairwise_hinge(mu, segs, 2 * delta_d, norm)
    reg_seg = torch.linalg.vector_norm(mu, ord=norm, dim=1)
    reg_g = segment_sum(reg_seg, segs.seg_group, g) / c.clamp(min=1)

    terms = {
        "var": reduce_groups(var_g, segs),
        "dist": reduce_groups(dist_g, segs),
        "reg": reduce_groups(reg_g, segs),
    }
    total = alpha * terms["var"] + beta * terms["dist"] + gamma * terms["reg"]
    if background == "push":
        terms["bg"] = _background_push(embedding, labels, ignore, segs, mu, delta_d, norm, x)
        total = total + beta * terms["bg"]
    if x.numel() == 0:  # keep the graph connected to the input (zero gradient)
        total = total + 0.0 * embedding.sum()
    return total, terms


def _background_push(embedding, labels, ignore, segs, mu, delta_d, norm, x):
    """Mean over groups/images of 1/C sum_c mean_bg [2 delta_d - ||mu_c - x_bg||]_+^2."""
    b = labels.shape[0]
    bg = labels == 0
    if ignore is not None:
        bg &= ~ignore.bool()
    per_group = []
    for gi in range(segs.num_groups):
        img = int(segs.group_image[gi])
        in_g = segs.seg_group == gi
        pix = bg[img].reshape(-1).nonzero().squeeze(1)
        if pix.numel() == 0:
            per_group.append(mu.new_zeros(()))
            continue
        emb = embedding[img]
        if emb.ndim == 4:  # per-class: the group's class slice
            emb = emb[int(segs.group_class[gi])]
        xb = emb.reshape(emb.shape[0], -1)[:, pix].T  # (N_bg, E)
        dist = torch.cdist(
            xb.unsqueeze(0),
            mu[in_g].unsqueeze(0),
            p=float(norm),
            compute_mode="donot_use_mm_for_euclid_dist",
        )[0]
        per_group.append((torch.relu(2 * delta_d - dist) ** 2).mean())
    if not per_group:
        return x.new_zeros(()) if x.numel() else embedding.new_zeros(())
    return reduce_groups(torch.stack(per_group), segs) if b else embedding.new_zeros(())


class DiscriminativeLoss(nn.Module):
    """Module form of :func:`discriminative_loss`; reads ``outputs.embedding`` (or
    ``outputs.class_embedding`` in per-class mode) and ``batch["labels"|"ignore"|"semantic"]``."""

    def __init__(self, **params) -> None:
        super().__init__()
        self.params = params
        _check_norm(params.get("norm", 2))

    def forward(self, outputs, batch: dict):
        per_class = self.params.get("per_class", False)
        emb = outputs.embedding
        if per_class and outputs.class_embedding is not None:
            emb = outputs.class_embedding
        if emb is None:
            raise ValueError(
                "discriminative loss needs outputs.embedding (add an 'embedding' head)"
            )
        return discriminative_loss(
            emb,
            batch["labels"],
            ignore=batch.get("ignore"),
            semantic=batch.get("semantic") if per_class else None,
            **self.params,
        )

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.params.items())

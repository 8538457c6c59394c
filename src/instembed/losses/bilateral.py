"""Steered bilateral kernel loss of Novotny et al. (2018), §3.4-3.5.

The mask of an instance is read from the embedding through a kernel centred on a seed::

    K_sigma(u, v) = exp( - ||Psi_u - Psi_v|| / sigma )           (§3.4, unsquared L2)

Per instance k the seed embedding is a soft-argmax over the instance's pixels (§3.5, "steering"):
``a_i = softmax_{i in S_k}( logit(seed_i) / temperature )`` and ``Psi_k = sum_i a_i Psi_i``; with
no seed head, a_i is uniform (the instance mean). sigma is learnable: the same soft-argmax of
the ``sigma`` head (S = 1) when the model has one, else one scalar parameter of the module
(``log_sigma``). The loss is the binary cross-entropy of the kernel against the instance mask
over every non-ignored pixel v of the image::

    L_k = -1/N sum_v [ m_kv log K(Psi_k, Psi_v) + (1 - m_kv) log(1 - K(Psi_k, Psi_v)) ]

with log K = -d / sigma computed exactly and 1 - K clamped at ``eps`` (1e-6). Mean over
instances, then over images (an image without instances contributes 0).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from instembed.losses.segments import check_spatial, find_segments, pixels_of, segment_sum


def _segment_softmax(score: torch.Tensor, seg: torch.Tensor, n: int) -> torch.Tensor:
    """Softmax of ``score`` (P,) within each segment (scatter max for stability)."""
    mx = torch.full((n,), -math.inf, dtype=score.dtype, device=score.device)
    mx = mx.scatter_reduce(0, seg, score.detach(), reduce="amax", include_self=True)
    ex = torch.exp(score - mx[seg])
    return ex / segment_sum(ex, seg, n)[seg]


def bilateral_loss(
    embedding: torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: torch.Tensor | None = None,
    sigma: torch.Tensor | float = 1.0,
    ignore: torch.Tensor | None = None,
    temperature: float = 1.0,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """embedding (B, E, H, W); labels (B, H, W); seed (B, 1, H, W) in (0, 1) or None;
    sigma a (B, 1, H, W) map, or a positive scalar / 0-d tensor. Returns ``(total, {"bce"})``."""
    check_spatial(embedding, labels, "embedding")
    b, e, h, w = embedding.shape
    segs = find_segments(labels, ignore)
    x = pixels_of(embedding, segs)  # (P, E)
    if seed is not None:
        check_spatial(seed, labels, "seed")
        s = pixels_of(seed, segs)[:, 0].clamp(eps, 1 - eps)
        logit = torch.log(s) - torch.log1p(-s)
        a = _segment_softmax(logit / temperature, segs.seg, segs.num_segments)
    else:
        a = 1.0 / segs.counts.to(x.dtype)[segs.seg]
    psi_k = segment_sum(a.unsqueeze(1) * x, segs.seg, segs.num_segments)  # (S, E)
    if isinstance(sigma, torch.Tensor) and sigma.ndim == 4:
        check_spatial(sigma, labels, "sigma")
        if sigma.shape[1] != 1:
            raise ValueError(f"bilateral loss needs a 1-channel sigma map, got {sigma.shape[1]}")
        sig_k = segment_sum(a * pixels_of(sigma, segs)[:, 0], segs.seg, segs.num_segments)
    else:
        sig = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        if sig.numel() != 1 or not bool(sig > 0):
            raise ValueError(
                f"sigma must be a positive scalar or a (B, 1, H, W) map, got {sigma!r}"
            )
        sig_k = sig.reshape(1).expand(segs.num_segments)
    valid = torch.ones(b, h * w, dtype=torch.bool, device=labels.device)
    if ignore is not None:
        valid &= ~ignore.reshape(b, -1).bool()
    flat_e = embedding.reshape(b, e, -1)
    flat_l = labels.reshape(b, -1)
    per_image = []
    for i in range(b):
        k_idx = (segs.seg_image == i).nonzero().squeeze(1)
        if k_idx.numel() == 0:
            per_image.append(x.new_zeros(()))
            continue
        v = valid[i]
        ev = flat_e[i][:, v].T  # (Pv, E)
        # (K, Pv) distances without a (K, Pv, E) intermediate; exact (no matrix-product trick)
        d = torch.cdist(psi_k[k_idx], ev, compute_mode="donot_use_mm_for_euclid_dist")
        log_k = -d / sig_k[k_idx].unsqueeze(1)  # (K, Pv)
        log_1mk = torch.log((-torch.expm1(log_k)).clamp(min=eps))
        m = (flat_l[i][v].unsqueeze(0) == segs.seg_label[k_idx].unsqueeze(1)).to(x.dtype)
        bce = -(m * log_k + (1 - m) * log_1mk).mean(1)
        per_image.append(bce.mean())
    total = torch.stack(per_image).mean() + 0.0 * embedding.sum()
    if isinstance(sigma, torch.Tensor) and sigma.requires_grad:  # keep sigma in the graph
        total = total + 0.0 * sigma.sum()
    return total, {"bce": total}


class BilateralLoss(nn.Module):
    """Reads ``outputs.embedding`` and, when present, ``outputs.seed`` / ``outputs.sigma``;
    otherwise sigma is the learnable scalar ``exp(self.log_sigma)`` (initial ``sigma_init``)."""

    def __init__(self, sigma_init: float = 1.0, **params) -> None:
        super().__init__()
        if sigma_init <= 0:
            raise ValueError(f"sigma_init must be > 0, got {sigma_init}")
        self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma_init)))
        self.params = params

    def forward(self, outputs, batch: dict):
        if outputs.embedding is None:
            raise ValueError("bilateral loss needs outputs.embedding (add an 'embedding' head)")
        sigma = outputs.sigma if outputs.sigma is not None else torch.exp(self.log_sigma)
        return bilateral_loss(
            outputs.embedding,
            batch["labels"],
            seed=outputs.seed,
            sigma=sigma,
            ignore=batch.get("ignore"),
            **self.params,
        )

"""Metric-learning pair loss of Fathi et al. (2017), eq. 1-4, with seediness and class heads.

Similarity of two pixels p, q with embeddings e_p, e_q (eq. 1)::

    sigma(p, q) = 2 / (1 + exp(||e_p - e_q||^2))       in (0, 1], 1 when e_p = e_q

Embedding loss over a set of sampled ordered pairs P (eq. 2), same = same instance::

    L_e = - sum_{(p,q) in P} w_pq [ same log sigma(p,q) + (1 - same) log(1 - sigma(p,q)) ] / sum w_pq

with instance-size-inverse weights w_pq = 1 / (|A_p| |A_q|) (|A| = instance area in pixels of
the whole image), so that every pair of instances weighs the same whatever their sizes.
Computed stably: log sigma = log 2 - softplus(d^2), 1 - sigma = tanh(d^2 / 2) clamped at ``eps``.

Sampling (the budget): ``num_points`` pixels per image drawn uniformly without replacement among
the instance pixels (``generator`` for reproducibility), all ``n (n - 1)`` ordered pairs among
them; ``num_points=None`` uses every pixel (exact, O(N^2) memory). Default 512 points, i.e.
261 632 pairs per image.

Seediness (eq. 3, our reading of the paper's description): the seed map s_p should predict how
good p is as a seed: the IoU, over the sampled points, between p's mask {q : sigma(p,q) > 0.5}
and p's instance (detached), trained by binary cross-entropy; background pixels get target 0.
L_seed = mean over sampled points of BCE + mean over background pixels of BCE (each 0 when
absent), halved when both are present. Class head (eq. 4): semantic cross-entropy
(losses.semantic). Total = L_e + w_seed L_seed + w_class L_class; batch = mean over images.
``background="cluster"`` samples background pixels too, as one more instance.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from instembed.losses.segments import check_labels, check_spatial
from instembed.losses.semantic import default_semantic_target, semantic_ce


def pair_log_similarity(d2: torch.Tensor, eps: float = 1e-6):
    """(log sigma, log(1 - sigma)) for squared distances d2, sigma = 2 / (1 + exp(d2))."""
    log_sim = math.log(2.0) - nn.functional.softplus(d2)
    log_dis = torch.log(torch.tanh(d2 / 2).clamp(min=eps))
    return log_sim, log_dis


def _bce(p: torch.Tensor, t: torch.Tensor, eps: float) -> torch.Tensor:
    p = p.clamp(eps, 1 - eps)
    return -(t * torch.log(p) + (1 - t) * torch.log1p(-p))


def metric_loss(
    embedding: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore: torch.Tensor | None = None,
    num_points: int | None = 512,
    generator: torch.Generator | None = None,
    background: str = "ignore",
    seed: torch.Tensor | None = None,
    w_seed: float = 1.0,
    semantic: torch.Tensor | None = None,
    semantic_target: torch.Tensor | None = None,
    w_class: float = 1.0,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """embedding (B, E, H, W), labels (B, H, W); seed (B, 1, H, W) in [0, 1]; semantic logits
    (B, K, H, W) with target (B, H, W). Returns ``(total, {"embedding"[, "seed"][, "class"]})``."""
    labels = check_labels(labels)
    check_spatial(embedding, labels, "embedding")
    if background not in ("ignore", "cluster"):
        raise ValueError(f"background must be 'ignore' or 'cluster', got {background!r}")
    if num_points is not None and num_points < 2:
        raise ValueError(f"num_points must be >= 2 or None, got {num_points}")
    if seed is not None:
        check_spatial(seed, labels, "seed")
    b, e, h, w = embedding.shape
    flat_e = embedding.reshape(b, e, -1)
    flat_l = labels.reshape(b, -1)
    valid_all = torch.ones_like(flat_l, dtype=torch.bool)
    if ignore is not None:
        valid_all &= ~ignore.reshape(b, -1).bool()
    emb_terms, seed_terms = [], []
    for i in range(b):
        lab = flat_l[i]
        sel = valid_all[i] & (lab > 0) if background == "ignore" else valid_all[i]
        idx = sel.nonzero().squeeze(1)
        area = torch.bincount(lab[idx], minlength=int(lab.max()) + 1 if lab.numel() else 1)
        if num_points is not None and idx.numel() > num_points:
            perm = torch.randperm(idx.numel(), generator=generator)[:num_points]
            idx = idx[perm.to(idx.device)]
        n = idx.numel()
        x = flat_e[i][:, idx].T  # (n, E)
        li = lab[idx]
        if n >= 2:
            d2 = ((x.unsqueeze(1) - x.unsqueeze(0)) ** 2).sum(-1)  # (n, n)
            log_sim, log_dis = pair_log_similarity(d2, eps)
            same = li.unsqueeze(1) == li.unsqueeze(0)
            off = ~torch.eye(n, dtype=torch.bool, device=x.device)
            a = area[li].to(x.dtype)
            wpq = off / (a.unsqueeze(1) * a.unsqueeze(0))
            nll = -torch.where(same, log_sim, log_dis)
            emb_terms.append((wpq * nll).sum() / wpq.sum())
        else:
            emb_terms.append(x.new_zeros(()).sum())
        if seed is not None:
            s = seed.reshape(b, -1)[i]
            parts = []
            if n >= 2:
                with torch.no_grad():
                    pred = torch.exp(log_sim) > 0.5  # sigma(p, q) > 0.5
                    inter = (pred & same).sum(1).to(x.dtype)
                    union = (pred | same).sum(1).to(x.dtype)
                    target = inter / union
                    if background == "cluster":
                        target = torch.where(li > 0, target, torch.zeros_like(target))
                parts.append(_bce(s[idx], target, eps).mean())
            bg = valid_all[i] & (lab == 0)
            if bg.any():
                parts.append(_bce(s[bg], torch.zeros_like(s[bg]), eps).mean())
            seed_terms.append(sum(parts) / len(parts) if parts else s.sum() * 0.0)
    terms = {"embedding": torch.stack(emb_terms).mean()}
    total = terms["embedding"]
    if seed is not None:
        terms["seed"] = torch.stack(seed_terms).mean()
        total = total + w_seed * terms["seed"]
    if semantic is not None:
        if semantic_target is None:
            raise ValueError("semantic logits given without semantic_target")
        terms["class"], _ = semantic_ce(semantic, semantic_target)
        total = total + w_class * terms["class"]
    return total + 0.0 * embedding.sum(), terms


class MetricLoss(nn.Module):
    """Reads ``outputs.embedding`` (+ ``seed``, ``semantic`` when the model has them).

    ``seed_value`` fixes the sampling generator's seed (reproducible pairs); None = global RNG.
    """

    def __init__(self, seed_value: int | None = None, **params) -> None:
        super().__init__()
        self.params = params
        self.generator = None
        if seed_value is not None:
            self.generator = torch.Generator().manual_seed(int(seed_value))

    def forward(self, outputs, batch: dict):
        if outputs.embedding is None:
            raise ValueError("metric loss needs outputs.embedding (add an 'embedding' head)")
        return metric_loss(
            outputs.embedding,
            batch["labels"],
            ignore=batch.get("ignore"),
            generator=self.generator,
            seed=outputs.seed,
            semantic=outputs.semantic,
            semantic_target=None if outputs.semantic is None else default_semantic_target(batch),
            **self.params,
        )

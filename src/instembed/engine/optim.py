"""Optimizer and learning-rate schedule of a training config (``cfg.optim``).

The schedule is linear warm-up then poly / cosine decay (or constant) to ``min_lr``, one
:class:`~torch.optim.lr_scheduler.LambdaLR` step per optimizer step (:func:`lr_factor`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from instembed.engine.config import Config


def lr_factor(step: int, total: int, schedule: str, power: float, warmup: int, floor: float):
    """Multiplier of the base LR at ``step`` (0-based): linear warm-up then poly / cosine / constant.

    ``floor`` is the final fraction of the base LR (``min_lr / lr``).
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    if schedule == "poly":
        f = (1.0 - t) ** power
    elif schedule == "cosine":
        f = 0.5 * (1.0 + math.cos(math.pi * t))
    else:
        f = 1.0
    return floor + (1.0 - floor) * f


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    oc = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    cls = torch.optim.AdamW if oc.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=oc.lr, betas=tuple(oc.betas), weight_decay=oc.weight_decay)


def build_scheduler(cfg: Config, optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    oc = cfg.optim
    floor = oc.min_lr / oc.lr if oc.lr > 0 else 0.0
    steps = cfg.run.steps
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(s, steps, oc.schedule, oc.poly_power, oc.warmup_steps, floor),
    )

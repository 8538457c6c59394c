"""``build_loss(name, **params)``: the one name -> loss module builder of instembed."""

from __future__ import annotations

from torch import nn

from instembed.losses.discriminative import DiscriminativeLoss

LOSSES: dict[str, type[nn.Module]] = {
    "discriminative": DiscriminativeLoss,
}


def build_loss(name: str, **params) -> nn.Module:
    """Loss module by name; ``forward(outputs, batch) -> (total, terms)``."""
    key = str(name).lower()
    if key not in LOSSES:
        raise ValueError(f"unknown loss name {name!r}; valid names: {sorted(LOSSES)}")
    try:
        return LOSSES[key](**params)
    except TypeError as e:
        raise TypeError(f"bad parameters for loss {key!r}: {e}") from e

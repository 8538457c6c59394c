"""``build_loss(name, **params)``: the one name -> loss module builder of instembed."""

from __future__ import annotations

from torch import nn

from instembed.losses.bilateral import BilateralLoss
from instembed.losses.center_offset import CenterOffsetLoss
from instembed.losses.discriminative import DiscriminativeLoss
from instembed.losses.metric import MetricLoss
from instembed.losses.semantic import SemanticCE
from instembed.losses.semiconv_loss import SemiconvLoss
from instembed.losses.spatial import SpatialEmbeddingLoss

LOSSES: dict[str, type[nn.Module]] = {
    "discriminative": DiscriminativeLoss,
    "semiconv": SemiconvLoss,
    "metric": MetricLoss,
    "bilateral": BilateralLoss,
    "spatial": SpatialEmbeddingLoss,
    "center_offset": CenterOffsetLoss,
    "semantic_ce": SemanticCE,
}


def build_loss(name: str, **params) -> nn.Module:
    """Loss module by name; ``forward(outputs, batch) -> (total, terms)``.

    ``params`` are the keyword options of the matching pure function (see docs/losses.md).
    """
    key = str(name).lower()
    if key not in LOSSES:
        raise ValueError(f"unknown loss name {name!r}; valid names: {sorted(LOSSES)}")
    try:
        return LOSSES[key](**params)
    except TypeError as e:
        raise TypeError(f"bad parameters for loss {key!r}: {e}") from e

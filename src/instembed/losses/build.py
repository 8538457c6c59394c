"""``build_loss(name, **params)``: the one name -> loss module builder of instembed."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from instembed.losses.bilateral import BilateralLoss, bilateral_loss
from instembed.losses.center_offset import CenterOffsetLoss, center_offset_loss
from instembed.losses.discriminative import DiscriminativeLoss, discriminative_loss
from instembed.losses.isfcn import ISFCNLoss, isfcn_loss
from instembed.losses.maskrcnn import MaskRCNNLoss, SemiconvMaskRCNNLoss
from instembed.losses.metric import MetricLoss, metric_loss
from instembed.losses.ordering import OrderingLoss, ordering_loss
from instembed.losses.recurrent import RecurrentAttentionLoss
from instembed.losses.semantic import SemanticCE, semantic_ce
from instembed.losses.semiconv_loss import SemiconvLoss, semiconv_loss
from instembed.losses.spatial import SpatialEmbeddingLoss, spatial_embedding_loss

LOSSES: dict[str, type[nn.Module]] = {
    "discriminative": DiscriminativeLoss,
    "semiconv": SemiconvLoss,
    "metric": MetricLoss,
    "bilateral": BilateralLoss,
    "spatial": SpatialEmbeddingLoss,
    "center_offset": CenterOffsetLoss,
    "semantic_ce": SemanticCE,
    "recurrent_attention": RecurrentAttentionLoss,
    "isfcn": ISFCNLoss,
    "ordering": OrderingLoss,
}

FUNCTIONS = {
    "discriminative": discriminative_loss,
    "semiconv": semiconv_loss,
    "metric": metric_loss,
    "bilateral": bilateral_loss,
    "spatial": spatial_embedding_loss,
    "center_offset": center_offset_loss,
    "semantic_ce": semantic_ce,
    "isfcn": isfcn_loss,
    "ordering": ordering_loss,
}
# keyword arguments the modules fill from ``outputs`` / ``batch`` themselves
_FILLED = {
    "ignore",
    "semantic",
    "seed",
    "sigma",
    "coords_origin",
    "generator",
    "semantic_target",
    "center_weights",
    "offset_weights",
    "semantic_weights",
    "pixel_weights",
    "instance_masks",
}


def register_loss(
    name: str, module: type[nn.Module], function: Callable | None = None
) -> type[nn.Module]:
    """Add a loss to :data:`LOSSES` (usable as ``loss.name`` in configs); returns ``module``.

    ``module(**options)`` is called with the config's ``loss.params``; its ``forward(outputs,
    batch) -> (total, terms)`` reads :class:`~instembed.structures.Outputs` (``aux`` included)
    and the batch. ``function``: the pure function whose keyword-only options the module
    forwards through ``**params`` (as the built-in losses do), if any.
    """
    key = str(name).lower()
    LOSSES[key] = module
    if function is not None:
        FUNCTIONS[key] = function
    return module


def loss_options(name: str) -> list[str]:
    """The keyword options ``build_loss(name, ...)`` accepts."""
    kw = []
    fn = FUNCTIONS.get(name)
    if fn is not None:
        kw = [
            p.name
            for p in inspect.signature(fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _FILLED
        ]
    extra = inspect.signature(LOSSES[name].__init__).parameters
    kw += [p for p in extra if p not in ("self", "params")]
    if name == "discriminative":
        kw.append("per_class")
    return sorted(set(kw))


def build_loss(name: str, **params) -> nn.Module:
    """Loss module by name; ``forward(outputs, batch) -> (total, terms)``.

    ``params`` are the keyword options of the matching pure function (see docs/losses.md).
    """
    key = str(name).lower()
    if key not in LOSSES:
        raise ValueError(f"unknown loss name {name!r}; valid names: {sorted(LOSSES)}")
    bad = set(params) - set(loss_options(key))
    if bad:
        raise TypeError(
            f"unknown options {sorted(bad)} for loss {key!r}; valid: {loss_options(key)}"
        )
    try:
        return LOSSES[key](**params)
    except TypeError as e:
        raise TypeError(f"bad parameters for loss {key!r}: {e}") from e


register_loss("maskrcnn", MaskRCNNLoss)
register_loss("semiconv_maskrcnn", SemiconvMaskRCNNLoss)

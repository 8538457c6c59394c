"""The tables of networks: :data:`MODELS` (whole models, by family) and :data:`BACKBONES`
(encoder-decoders that the embedding family and later families put their heads on).

A whole model is called ``model(image, coords_origin=None, targets=None) -> Outputs`` in training
and evaluation alike (:mod:`instembed.structures`). ``targets`` is the list of per-image target
dicts of the batch (``instembed.data.dataset.image_targets``); proposal-based families use it to
sample regions in training; dense families ignore it. A model never computes its loss.

Adding a family: write its builder ``build_x(in_channels=..., **params) -> nn.Module`` and call
:func:`register_model` (or add it to :data:`MODELS`); a config then names it in ``model.name``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from instembed.models.deeplab import DeepLabV3Plus
from instembed.models.embedding_net import EmbeddingNet
from instembed.models.enet import ENet
from instembed.models.erfnet import ERFNet
from instembed.models.fcn8s import FCN8s
from instembed.models.hrnet import HRNet
from instembed.models.isfcn import ISFCN_PARAM_TYPES, build_isfcn
from instembed.models.maskrcnn import MASKRCNN_PARAM_TYPES, build_maskrcnn
from instembed.models.ordering import ORDERING_PARAM_TYPES, build_ordering_net
from instembed.models.pspnet import PSPNet
from instembed.models.recurrent import PARAM_TYPES as RECURRENT_PARAM_TYPES
from instembed.models.recurrent import build_recurrent_attention
from instembed.models.segnet import SegNet
from instembed.models.semiconv_maskrcnn import SEMICONV_MASKRCNN_PARAM_TYPES as SCM_TYPES
from instembed.models.semiconv_maskrcnn import build_semiconv_maskrcnn
from instembed.models.unet import UNet
from instembed.structures import DEFAULT_COORD_SCALE

BACKBONES: dict[str, type[nn.Module]] = {
    "unet": UNet,
    "erfnet": ERFNet,
    "enet": ENet,
    "fcn8s": FCN8s,
    "segnet": SegNet,
    "pspnet": PSPNet,
    "deeplabv3plus": DeepLabV3Plus,
    "hrnet": HRNet,
}
# ERFNet follows SpatialEmbeddings: one decoder for embedding/sigma/offset, one for seed/center/semantic
DEFAULT_HEAD_GROUPS = {
    "unet": "single",
    "erfnet": "auto",
    "enet": "single",
    "fcn8s": "single",
    "segnet": "single",
    "pspnet": "single",
    "deeplabv3plus": "single",
    "hrnet": "single",
}


def build_embedding_net(
    backbone: str = "unet",
    in_channels: int = 1,
    heads: dict | None = None,
    semiconv: bool = False,
    coord_scale: float = DEFAULT_COORD_SCALE,
    coordconv: bool = False,
    head_groups: list | str | None = None,
    sigma_init: float = 0.5,
    **params,
) -> EmbeddingNet:
    """The dense family: a backbone of :data:`BACKBONES` with one decoder per head group.

    ``heads``: name -> channels, default ``{"embedding": 8}`` (see ``EmbeddingNet``).
    ``coordconv`` appends 2 input channels ``u = (y, x) * coord_scale`` (original-image
    coordinates, CoordConv as in De Brabandere et al.'s CVPPP setup). ``head_groups``: "single"
    (one decoder), "auto" (embedding/sigma/offset vs seed/center/semantic), or a list of name
    tuples. ``params`` go to the backbone: unet ``depth, width, max_width, norm, bilinear``;
    erfnet ``widths, dropout, norm``; enet ``widths, norm``.
    """
    key = str(backbone).lower()
    if key not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; valid backbones: {sorted(BACKBONES)}")
    if int(in_channels) < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    heads = {"embedding": 8} if heads is None else dict(heads)
    cin = int(in_channels) + (2 if coordconv else 0)
    try:
        net: nn.Module = BACKBONES[key](cin, **params)
    except TypeError as e:
        raise TypeError(f"bad parameters for backbone {key!r}: {e}") from e
    return EmbeddingNet(
        net,
        int(in_channels),
        heads,
        semiconv=semiconv,
        coord_scale=coord_scale,
        coordconv=coordconv,
        head_groups=DEFAULT_HEAD_GROUPS[key] if head_groups is None else head_groups,
        sigma_init=sigma_init,
    )


MODELS: dict[str, Callable[..., nn.Module]] = {
    "embedding": build_embedding_net,
    "recurrent_attention": build_recurrent_attention,
    "isfcn": build_isfcn,
    "ordering": build_ordering_net,
}
"""Whole-model builders by family name: ``MODELS[name](in_channels=..., **params)``."""

MODEL_PARAM_TYPES: dict[str, dict[str, Any]] = {
    "embedding": {
        "backbone": str,
        "heads": dict[str, int],
        "semiconv": bool,
        "coord_scale": float,
        "coordconv": bool,
        "sigma_init": float,
    },
    "recurrent_attention": RECURRENT_PARAM_TYPES,
    "isfcn": ISFCN_PARAM_TYPES,
    "ordering": ORDERING_PARAM_TYPES,
}
"""Types of a family's named parameters, checked when a config is read (``model.params.<key>``);
parameters not listed (e.g. a backbone's) are passed through unchecked."""


def register_model(
    name: str, builder: Callable[..., nn.Module], param_types: dict[str, Any] | None = None
) -> Callable[..., nn.Module]:
    """Add a family to :data:`MODELS` (usable as ``model.name`` in configs); returns ``builder``.

    ``param_types``: name -> type of the builder's parameters, checked on config load.
    """
    key = str(name).lower()
    if key in BACKBONES:
        raise ValueError(f"model name {name!r} is a backbone name; choose another")
    MODELS[key] = builder
    MODEL_PARAM_TYPES[key] = dict(param_types or {})
    return builder


def build_model(name: str, in_channels: int = 1, **params) -> nn.Module:
    """Build a whole model by name.

    ``name`` is a family of :data:`MODELS` (``"embedding"`` takes ``backbone=``), or a backbone
    of :data:`BACKBONES` as a shorthand for ``build_model("embedding", backbone=name, ...)``::

        build_model("unet", in_channels=1, heads={"embedding": 8})
        build_model("embedding", backbone="erfnet", heads={"embedding": 2, "seed": 1})
    """
    key = str(name).lower()
    if key in BACKBONES:
        if "backbone" in params:
            raise ValueError(
                f"build_model({name!r}, backbone={params['backbone']!r}): {name!r} is itself "
                "a backbone; use name='embedding' with backbone=..."
            )
        return build_embedding_net(key, in_channels, **params)
    if key not in MODELS:
        raise ValueError(
            f"unknown model name {name!r}; valid names: {sorted(MODELS)} (families) or "
            f"{sorted(BACKBONES)} (backbones, for the embedding family)"
        )
    try:
        return MODELS[key](in_channels=in_channels, **params)
    except TypeError as e:
        raise TypeError(f"bad parameters for model {key!r}: {e}") from e


register_model("maskrcnn", build_maskrcnn, MASKRCNN_PARAM_TYPES)
register_model("semiconv_maskrcnn", build_semiconv_maskrcnn, SCM_TYPES)

"""``build_model(name, ...)``: the one name -> network builder of instembed."""

from __future__ import annotations

from torch import nn

from instembed.models.embedding_net import EmbeddingNet
from instembed.models.enet import ENet
from instembed.models.erfnet import ERFNet
from instembed.models.unet import UNet
from instembed.structures import DEFAULT_COORD_SCALE

BACKBONES = {"unet": UNet, "erfnet": ERFNet, "enet": ENet}
# ERFNet follows SpatialEmbeddings: one decoder for embedding/sigma/offset, one for seed/center/semantic
DEFAULT_HEAD_GROUPS = {"unet": "single", "erfnet": "auto", "enet": "single"}


def build_model(
    name: str,
    in_channels: int = 1,
    heads: dict | None = None,
    semiconv: bool = False,
    coord_scale: float = DEFAULT_COORD_SCALE,
    coordconv: bool = False,
    head_groups: list | str | None = None,
    sigma_init: float = 0.5,
    **params,
) -> EmbeddingNet:
    """Build a network by name ("unet", "erfnet", "enet") returning :class:`Outputs`.

    ``heads``: name -> channels, default ``{"embedding": 8}`` (see ``EmbeddingNet``).
    ``coordconv`` appends 2 input channels ``u = (y, x) * coord_scale`` (original-image
    coordinates, CoordConv as in De Brabandere et al.'s CVPPP setup). ``head_groups``: "single"
    (one decoder), "auto" (embedding/sigma/offset vs seed/center/semantic), or a list of name
    tuples. ``params`` go to the backbone: unet ``depth, width, max_width, norm, bilinear``;
    erfnet ``widths, dropout, norm``; enet ``widths, norm``.
    """
    key = str(name).lower()
    if key not in BACKBONES:
        raise ValueError(f"unknown model name {name!r}; valid names: {sorted(BACKBONES)}")
    if int(in_channels) < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    heads = {"embedding": 8} if heads is None else dict(heads)
    cin = int(in_channels) + (2 if coordconv else 0)
    try:
        backbone: nn.Module = BACKBONES[key](cin, **params)
    except TypeError as e:
        raise TypeError(f"bad parameters for model {key!r}: {e}") from e
    return EmbeddingNet(
        backbone,
        int(in_channels),
        heads,
        semiconv=semiconv,
        coord_scale=coord_scale,
        coordconv=coordconv,
        head_groups=DEFAULT_HEAD_GROUPS[key] if head_groups is None else head_groups,
        sigma_init=sigma_init,
    )

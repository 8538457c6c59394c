"""Spatial-centre ordering (the report's phase 2): a backbone with a ``K + 1``-channel
per-pixel classification head (slot 0 background, slots 1..K the instances sorted by centroid,
``x`` then ``y``).

The model is the embedding family with one ``semantic`` head of ``num_slots + 1`` channels
(:class:`~instembed.models.embedding_net.EmbeddingNet`): ``Outputs.semantic`` holds the slot
logits. Its loss is ``instembed.losses.ordering`` (pixel-wise cross-entropy against the slot
map), its post-processing the ``"slots"`` method (``instembed.cluster.slots``). ``coordconv``
(off by default: a plain convolutional network) appends the pixel coordinates to the input.
"""

from __future__ import annotations

from torch import nn

ORDERING_PARAM_TYPES = {"backbone": str, "num_slots": int, "coordconv": bool}
"""Types of the ``ordering`` family's parameters (checked on config load)."""


def build_ordering_net(
    backbone: str = "unet",
    in_channels: int = 1,
    num_slots: int = 30,
    coordconv: bool = False,
    **params,
) -> nn.Module:
    """The ``ordering`` family: ``build_embedding_net(backbone, heads={"semantic": num_slots
    + 1}, coordconv=coordconv, **params)`` (``params``: the backbone's, e.g. unet ``depth``)."""
    from instembed.models.build import build_embedding_net  # build registers this family

    if int(num_slots) < 1:
        raise ValueError(f"num_slots must be >= 1, got {num_slots}")
    return build_embedding_net(
        backbone,
        in_channels,
        heads={"semantic": int(num_slots) + 1},
        coordconv=bool(coordconv),
        **params,
    )

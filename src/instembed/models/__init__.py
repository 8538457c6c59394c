"""Networks: backbones with named heads, returning :class:`Outputs`; the semi-conv operator."""

from instembed.models.build import BACKBONES, build_model
from instembed.models.embedding_net import EmbeddingNet
from instembed.models.outputs import OUTPUT_FIELDS, Outputs
from instembed.models.semiconv import (
    DEFAULT_COORD_SCALE,
    pixel_coordinates,
    semiconv,
    unflip_outputs,
)

__all__ = [
    "BACKBONES",
    "DEFAULT_COORD_SCALE",
    "EmbeddingNet",
    "OUTPUT_FIELDS",
    "Outputs",
    "build_model",
    "pixel_coordinates",
    "semiconv",
    "unflip_outputs",
]

"""Networks: whole-model builders (:data:`MODELS`), backbones (:data:`BACKBONES`), heads, and the
semi-convolutional operator. Every model returns :class:`instembed.structures.Outputs`."""

from instembed.models.build import BACKBONES, MODELS, build_model, register_model
from instembed.models.embedding_net import EmbeddingNet
from instembed.models.semiconv import semiconv, unflip_outputs

__all__ = [
    "BACKBONES",
    "EmbeddingNet",
    "MODELS",
    "build_model",
    "register_model",
    "semiconv",
    "unflip_outputs",
]

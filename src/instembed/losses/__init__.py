"""Losses of the pixel-embedding methods: pure functions, thin modules, one ``build_loss``.

Every function returns ``(total, terms)`` (scalar tensor, dict of named scalar terms); every
module's ``forward(outputs: Outputs, batch: dict)`` returns the same. See docs/losses.md.
"""

from instembed.losses.bilateral import BilateralLoss, bilateral_loss
from instembed.losses.build import LOSSES, build_loss, register_loss
from instembed.losses.center_offset import CenterOffsetLoss, center_offset_loss
from instembed.losses.discriminative import DiscriminativeLoss, discriminative_loss
from instembed.losses.lovasz import lovasz_hinge_rows
from instembed.losses.metric import MetricLoss, metric_loss
from instembed.losses.semantic import SemanticCE, semantic_ce
from instembed.losses.semiconv_loss import SemiconvLoss, semiconv_loss
from instembed.losses.spatial import SpatialEmbeddingLoss, spatial_embedding_loss
from instembed.targets import build_targets

__all__ = [
    "LOSSES",
    "BilateralLoss",
    "CenterOffsetLoss",
    "DiscriminativeLoss",
    "MetricLoss",
    "SemanticCE",
    "SemiconvLoss",
    "SpatialEmbeddingLoss",
    "bilateral_loss",
    "build_loss",
    "register_loss",
    "build_targets",
    "center_offset_loss",
    "discriminative_loss",
    "lovasz_hinge_rows",
    "metric_loss",
    "semantic_ce",
    "semiconv_loss",
    "spatial_embedding_loss",
]

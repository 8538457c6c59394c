"""Losses of the pixel-embedding methods: pure functions, thin modules, one ``build_loss``."""

from instembed.losses.build import LOSSES, build_loss
from instembed.losses.discriminative import DiscriminativeLoss, discriminative_loss

__all__ = ["LOSSES", "build_loss", "DiscriminativeLoss", "discriminative_loss"]

"""Small building blocks shared by the networks, and a receptive-field tracker.

Every block keeps the spatial size unless it says otherwise ("down" halves H and W, "up"
doubles them). Normalisation is chosen by name through :func:`make_norm`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

NORMS = ("batch", "group", "instance", "none")


def make_norm(kind: str, channels: int) -> nn.Module:
    """A normalisation layer by name: ``batch``, ``group`` (8 groups or fewer), ``instance``, ``none``."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class ConvNormAct(nn.Sequential):
    """conv(k x k, 'same' padding) -> norm -> ReLU."""

    def __init__(self, cin: int, cout: int, k: int = 3, norm: str = "batch") -> None:
        super().__init__(
            nn.Conv2d(cin, cout, k, padding=k // 2, bias=norm == "none"),
            make_norm(norm, cout),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """Two :class:`ConvNormAct` 3x3 layers (the U-Net level block, Ronneberger et al. 2015)."""

    def __init__(self, cin: int, cout: int, norm: str = "batch") -> None:
        super().__init__(ConvNormAct(cin, cout, 3, norm), ConvNormAct(cout, cout, 3, norm))


@dataclass
class ReceptiveField:
    """Track the theoretical receptive field along a chain of layers.

    ``size`` is the side (pixels of the input) of the window one output unit depends on;
    ``jump`` the distance in input pixels between neighbouring units of the current layer.
    """

    size: float = 1.0
    jump: float = 1.0

    def conv(self, k: int, stride: int = 1, dilation: int = 1) -> ReceptiveField:
        self.size += (k - 1) * dilation * self.jump
        self.jump *= stride
        return self

    def up(self, factor: int = 2, k: int = 1) -> ReceptiveField:
        """Upsampling by ``factor`` (transposed conv with kernel ``k``, or interpolation k=1)."""
        self.jump /= factor
        self.size += (k - 1) * self.jump
        return self


def _pad_amount(size: int, divisor: int) -> int:
    return (-size) % divisor


def pad_to_multiple(x: torch.Tensor, divisor: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (B, C, H, W) at the bottom/right so H and W are multiples of ``divisor``.

    Reflection padding where the image is large enough, replication otherwise. Returns the
    padded tensor and the original (H, W) for :func:`crop_to`.
    """
    h, w = x.shape[-2:]
    ph, pw = _pad_amount(h, divisor), _pad_amount(w, divisor)
    if ph == 0 and pw == 0:
        return x, (h, w)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return nn.functional.pad(x, (0, pw, 0, ph), mode=mode), (h, w)


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return x[..., : size[0], : size[1]]

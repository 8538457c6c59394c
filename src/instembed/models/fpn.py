"""A small ResNet + Feature Pyramid Network (Lin et al. 2017) for the proposal-based families.

:class:`ResNetFPN` runs :class:`~instembed.models.resnet_blocks.DilatedResNet` with output
stride 32 (no dilation) to get C2..C5 (strides 4, 8, 16, 32), then the FPN: a lateral 1x1 conv
per level, the top-down path (nearest 2x upsampling of the coarser merged map, added to the
lateral), a 3x3 output conv per level: P2..P5, all ``out_channels`` wide; P6 is P5 max-pooled
with kernel 1 and stride 2 (for the RPN's largest anchors only, as in the paper).

The input must be a multiple of 32 in height and width (the Mask R-CNN models pad it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instembed.models.resnet_blocks import DilatedResNet

FPN_STRIDES = (4, 8, 16, 32, 64)
"""Strides of P2, P3, P4, P5, P6."""


class FPN(nn.Module):
    """Lateral 1x1 + top-down (nearest x2) + 3x3 output convs; returns P2..P5 and P6."""

    def __init__(self, in_channels: Sequence[int], out_channels: int, p6: bool = True) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels
        )
        self.p6 = bool(p6)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        last = self.lateral[-1](feats[-1])
        out = [self.output[-1](last)]
        for i in range(len(feats) - 2, -1, -1):
            lat = self.lateral[i](feats[i])
            last = lat + F.interpolate(last, size=lat.shape[-2:], mode="nearest")
            out.insert(0, self.output[i](last))
        if self.p6:
            out.append(F.max_pool2d(out[-1], kernel_size=1, stride=2))
        return out


class ResNetFPN(nn.Module):
    """C2..C5 of a small ResNet, then :class:`FPN`: ``forward(x)`` -> [P2, P3, P4, P5, P6]."""

    def __init__(
        self,
        in_channels: int = 1,
        widths: Sequence[int] = (16, 32, 64, 128),
        blocks: Sequence[int] = (1, 1, 1, 1),
        out_channels: int = 32,
        stem_width: int = 16,
        norm: str = "group",
    ) -> None:
        super().__init__()
        self.body = DilatedResNet(
            in_channels,
            tuple(int(w) for w in widths),
            tuple(int(b) for b in blocks),
            output_stride=32,
            stem_width=int(stem_width),
            norm=norm,
        )
        self.fpn = FPN(self.body.widths, int(out_channels))
        self.out_channels = int(out_channels)
        self.strides = FPN_STRIDES

    def forward(self, x: Tensor) -> list[Tensor]:
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(f"ResNetFPN needs H, W multiples of 32, got {tuple(x.shape[-2:])}")
        return self.fpn(self.body(x))


class GradScale(torch.autograd.Function):
    """Identity forward; the backward pass multiplies the gradient by ``scale``."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = float(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.scale, None


def grad_scale(x: Tensor, scale: float) -> Tensor:
    """``x`` unchanged, with its gradient scaled by ``scale`` on the way back (plain ``x``
    under ``torch.jit.trace``, which cannot record an autograd Function: export is inference)."""
    if torch.jit.is_tracing():
        return x
    return GradScale.apply(x, scale)

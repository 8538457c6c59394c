"""Residual blocks, a small dilated ResNet encoder, and receptive-field helpers shared by the
lecture backbones (PSPNet, DeepLabV3+, HRNet, FCN-8s).

The dilated ResNet (He et al. 2016; dilation as in Yu & Koltun 2016 / DeepLab): a deep stem
(3x3 stride-2 conv, 3x3 conv, 3x3 stride-2 max pool: stride 4), then four stages of
:class:`BasicBlock`. Stage 1 keeps stride 4 (the "low-level" features of DeepLabV3+), stage 2
goes to stride 8; stages 3 and 4 either keep downsampling (stride 16 / 32) or replace the stride
by dilation so that the output stride stays ``output_stride`` (8 or 16).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from instembed.models.blocks import make_norm

GLOBAL_RECEPTIVE_FIELD = 1 << 16
"""``receptive_field()`` of networks with a global (image-level or pyramid) pooling branch: one
output pixel depends on the whole input, so no finite window is exact; this stands for
"the whole image" (65536 px). Tiling such a network is never exact; give an explicit overlap."""


@dataclass
class Window:
    """The input window ``[n * jump + lo, n * jump + hi]`` (pixels) of unit ``n`` of a layer.

    Exact through convolutions and poolings (with their padding, so off-centre windows are
    tracked); after an upsampling the window depends on the output position modulo the factor,
    and ``lo`` / ``hi`` are the extremes over those positions, so :attr:`size` is then an upper
    bound of every pixel's field. :func:`union` joins the windows of parallel paths.
    """

    lo: float = 0.0
    hi: float = 0.0
    jump: float = 1.0

    @property
    def size(self) -> int:
        return int(round(self.hi - self.lo + 1))

    def conv(self, k: int, stride: int = 1, dilation: int = 1, padding: int | None = None):
        """Conv or pooling (kernel ``k``); ``padding`` defaults to 'same' ((k // 2) dilation)."""
        p = (k // 2) * dilation if padding is None else padding
        self.lo -= p * self.jump
        self.hi += ((k - 1) * dilation - p) * self.jump
        self.jump *= stride
        return self

    def _up(self, factor: int, deps) -> Window:
        """``deps(r)``: offsets ``i - q`` of the coarse units that fine unit ``f q + r`` uses."""
        fine = self.jump / factor
        los = [min(deps(r)) * self.jump - r * fine for r in range(factor)]
        his = [max(deps(r)) * self.jump - r * fine for r in range(factor)]
        self.lo, self.hi, self.jump = self.lo + min(los), self.hi + max(his), fine
        return self

    def transposed(self, k: int, stride: int, padding: int = 0) -> Window:
        """Transposed conv: fine ``o`` uses coarse ``i`` with ``0 <= o + padding - s i < k``."""
        return self._up(
            stride,
            lambda r: [i for i in range(-k, k + 1) if 0 <= r + padding - stride * i <= k - 1],
        )

    def nearest(self, factor: int) -> Window:
        """Nearest upsampling, and max-unpooling (a fine unit gets at most its pooled unit)."""
        return self.transposed(factor, factor)

    def bilinear(self, factor: int) -> Window:
        """Bilinear upsampling, align_corners=False: the two coarse units around
        ``(o + 0.5) / f - 0.5``."""
        if factor == 1:
            return self
        return self._up(
            factor, lambda r: [math.floor((r + 0.5) / factor - 0.5) + d for d in (0, 1)]
        )

    def copy(self) -> Window:
        return Window(self.lo, self.hi, self.jump)


def union(*windows: Window) -> Window:
    """The window of a sum or concatenation of paths with the same jump."""
    if len({w.jump for w in windows}) != 1:
        raise ValueError(f"union of windows with different jumps: {windows}")
    return Window(min(w.lo for w in windows), max(w.hi for w in windows), windows[0].jump)


def conv_norm_act(
    cin: int,
    cout: int,
    k: int = 3,
    norm: str = "batch",
    stride: int = 1,
    dilation: int = 1,
    act: bool = True,
) -> nn.Sequential:
    """conv (k x k, 'same' padding for stride 1, dilated) -> norm -> ReLU (if ``act``)."""
    layers: list[nn.Module] = [
        nn.Conv2d(
            cin,
            cout,
            k,
            stride=stride,
            padding=(k // 2) * dilation,
            dilation=dilation,
            bias=norm == "none",
        ),
        make_norm(norm, cout),
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs (the first with ``stride``; both dilated), residual
    (1x1 conv + norm on the shortcut when the shape changes), ReLU."""

    def __init__(
        self, cin: int, cout: int, stride: int = 1, dilation: int = 1, norm: str = "batch"
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_norm_act(cin, cout, 3, norm, stride=stride, dilation=dilation),
            conv_norm_act(cout, cout, 3, norm, dilation=dilation, act=False),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = conv_norm_act(cin, cout, 1, norm, stride=stride, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))

    @staticmethod
    def rf(win: Window, stride: int = 1, dilation: int = 1) -> Window:
        """The residual path (a 3x3 conv with stride, then a 3x3 conv) contains the shortcut's
        window (a strided 1x1 conv)."""
        return win.conv(3, stride=stride, dilation=dilation).conv(3, dilation=dilation)


def stage_plan(output_stride: int) -> list[tuple[int, int]]:
    """(stride, dilation) of the first block of stages 1-4 for an output stride of 8, 16 or 32."""
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    if output_stride == 8:
        return [(1, 1), (2, 1), (1, 2), (1, 4)]
    if output_stride == 16:
        return [(1, 1), (2, 1), (2, 1), (1, 2)]
    return [(1, 1), (2, 1), (2, 1), (2, 1)]


class DilatedResNet(nn.Module):
    """Deep stem + four stages of basic blocks; ``forward`` returns the four stage outputs
    (B, widths[i], H / s_i, W / s_i) with s = (4, 8, s3, output_stride)."""

    def __init__(
        self,
        in_channels: int,
        widths: tuple[int, int, int, int] = (16, 32, 64, 128),
        blocks: tuple[int, int, int, int] = (2, 2, 2, 2),
        output_stride: int = 8,
        stem_width: int = 16,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if len(widths) != 4 or len(blocks) != 4:
            raise ValueError(f"widths and blocks need 4 entries, got {widths} and {blocks}")
        if min(widths) < 1 or min(blocks) < 1 or stem_width < 1:
            raise ValueError(f"widths, blocks, stem_width must be >= 1: {widths}, {blocks}")
        self.widths = tuple(int(w) for w in widths)
        self.blocks = tuple(int(b) for b in blocks)
        self.stem_width = int(stem_width)
        self.output_stride = int(output_stride)
        self.plan = stage_plan(self.output_stride)
        self.stem = nn.Sequential(
            conv_norm_act(in_channels, stem_width, 3, norm, stride=2),
            conv_norm_act(stem_width, stem_width, 3, norm),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.stages = nn.ModuleList()
        cin = stem_width
        for (stride, dil), w, n in zip(self.plan, self.widths, self.blocks):
            layers = [BasicBlock(cin, w, stride, dil, norm)]
            layers += [BasicBlock(w, w, 1, dil, norm) for _ in range(n - 1)]
            self.stages.append(nn.Sequential(*layers))
            cin = w

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def rf(self, stages: int = 4) -> Window:
        """Input window of the output of stage ``stages`` (1-4), along the residual paths."""
        rf = Window().conv(3, stride=2).conv(3).conv(3, stride=2)
        for (stride, dil), n in list(zip(self.plan, self.blocks))[:stages]:
            BasicBlock.rf(rf, stride, dil)
            for _ in range(n - 1):
                BasicBlock.rf(rf, 1, dil)
        return rf


def upsample_bilinear(x: torch.Tensor, size) -> torch.Tensor:
    return nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)


class PooledBranch(nn.Module):
    """Adaptive average pooling to ``bins`` x ``bins``, 1x1 conv -> norm -> ReLU, bilinear
    upsampling back to the input size. A 1 x 1 pooled map gets no batch or instance norm (their
    statistics would be one value per channel: batch size 1 could not train), only a biased conv
    and ReLU; group norm is kept."""

    def __init__(self, cin: int, cout: int, bins: int, norm: str) -> None:
        super().__init__()
        self.bins = int(bins)
        branch_norm = "none" if self.bins == 1 and norm != "group" else norm
        self.pool = nn.AdaptiveAvgPool2d(self.bins)
        self.conv = conv_norm_act(cin, cout, 1, branch_norm)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(B, cout, bins, bins): the branch before upsampling."""
        return self.conv(self.pool(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_bilinear(self.pooled(x), x.shape[-2:])

"""Configurable U-Net backbone (Ronneberger et al. 2015), encoder shared by several decoders.

``depth`` poolings (H and W must be multiples of ``2**depth``; :class:`EmbeddingNet` pads and
crops so any size works), ``width`` channels at full resolution doubling at each level.
Tiny CPU variant: ``depth=2, width=8`` (~30 k parameters); default ``depth=4, width=32``.
"""

from __future__ import annotations

import torch
from torch import nn

from instembed.models.blocks import DoubleConv, ReceptiveField


class UNetEncoder(nn.Module):
    def __init__(self, in_channels: int, widths: list[int], norm: str) -> None:
        super().__init__()
        self.inc = DoubleConv(in_channels, widths[0], norm)
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), DoubleConv(widths[i - 1], widths[i], norm))
            for i in range(1, len(widths))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.inc(x)]  # (B, w0, H, W)
        for down in self.downs:
            feats.append(down(feats[-1]))  # level l: (B, w_l, H / 2**l, W / 2**l)
        return feats


class UNetDecoder(nn.Module):
    """Upsampling path with skip connections, ending in a 1x1 conv ``head`` to ``out_channels``."""

    def __init__(self, widths: list[int], out_channels: int, norm: str, bilinear: bool) -> None:
        super().__init__()
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for i in range(len(widths) - 1, 0, -1):
            if bilinear:
                up = nn.Sequential(
                    nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                    nn.Conv2d(widths[i], widths[i - 1], 1),
                )
            else:
                up = nn.ConvTranspose2d(widths[i], widths[i - 1], 2, stride=2)
            self.ups.append(up)
            self.blocks.append(DoubleConv(2 * widths[i - 1], widths[i - 1], norm))
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for k, (up, block) in enumerate(zip(self.ups, self.blocks)):
            skip = feats[-2 - k]
            x = block(torch.cat([up(x), skip], dim=1))
        return self.head(x)


class UNet(nn.Module):
    """U-Net backbone: ``encoder`` plus a factory for decoders (one per head group)."""

    def __init__(
        self,
        in_channels: int,
        depth: int = 4,
        width: int = 32,
        max_width: int = 512,
        norm: str = "batch",
        bilinear: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"unet depth must be >= 1, got {depth}")
        if width < 1:
            raise ValueError(f"unet width must be >= 1, got {width}")
        self.widths = [min(width * 2**i, max_width) for i in range(depth + 1)]
        self.depth = depth
        self.norm = norm
        self.bilinear = bilinear
        self.encoder = UNetEncoder(in_channels, self.widths, norm)

    @property
    def size_divisor(self) -> int:
        return 2**self.depth

    def make_decoder(self, out_channels: int) -> nn.Module:
        return UNetDecoder(self.widths, out_channels, self.norm, self.bilinear)

    def receptive_field(self) -> int:
        rf = ReceptiveField().conv(3).conv(3)
        for _ in range(self.depth):
            rf.conv(2, stride=2).conv(3).conv(3)
        for _ in range(self.depth):
            rf.up(2).conv(3).conv(3)
        return int(round(rf.size))

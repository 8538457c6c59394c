"""PSPNet backbone (Zhao et al. 2017, "Pyramid Scene Parsing Network"), small and from scratch.

Encoder: a dilated ResNet of basic blocks (:class:`DilatedResNet`, output stride 8: stages 3 and
4 dilated by 2 and 4 instead of downsampling), then the pyramid pooling module (PPM): the
feature map average-pooled to 1x1, 2x2, 3x3 and 6x6 bins, each reduced by a 1x1 conv to
``ppm_width`` channels (default C / 4, as in the paper), upsampled bilinearly and concatenated
with the feature map. Each decoder: a 3x3 conv -> norm -> ReLU -> dropout (the paper's "final
convolution layer"), a 1x1 ``head``, and bilinear upsampling by 8 to the full resolution.

Input sizes must be multiples of 8 (padded by :class:`EmbeddingNet`). The 1x1 bin sees the
whole input, so ``receptive_field()`` is :data:`GLOBAL_RECEPTIVE_FIELD`;
``local_receptive_field()`` is that of the convolutional path alone.
"""

from __future__ import annotations

import torch
from torch import nn

from instembed.models.resnet_blocks import (
    GLOBAL_RECEPTIVE_FIELD,
    DilatedResNet,
    PooledBranch,
    conv_norm_act,
    upsample_bilinear,
)


class PyramidPooling(nn.Module):
    """PPM: ``cat([x] + [up(conv1x1(avgpool_b(x))) for b in bins])``: C + len(bins) * width."""

    def __init__(self, cin: int, width: int, bins=(1, 2, 3, 6), norm: str = "batch") -> None:
        super().__init__()
        if not bins or min(bins) < 1:
            raise ValueError(f"pyramid bins must be positive integers, got {bins!r}")
        self.branches = nn.ModuleList(PooledBranch(cin, width, b, norm) for b in bins)
        self.out_channels = cin + len(self.branches) * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x] + [branch(x) for branch in self.branches], dim=1)


class PSPEncoder(nn.Module):
    def __init__(self, resnet: DilatedResNet, ppm: PyramidPooling) -> None:
        super().__init__()
        self.resnet = resnet
        self.ppm = ppm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ppm(self.resnet(x)[-1])  # (B, C + 4 ppm_width, H / 8, W / 8)


class PSPDecoder(nn.Module):
    """3x3 conv -> norm -> ReLU -> dropout, 1x1 ``head``, bilinear upsampling by ``stride``."""

    def __init__(
        self, cin: int, width: int, out_channels: int, dropout: float, norm: str, stride: int
    ) -> None:
        super().__init__()
        self.stride = stride
        self.body = nn.Sequential(
            conv_norm_act(cin, width, 3, norm),
            nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(),
        )
        self.head = nn.Conv2d(width, out_channels, 1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        y = self.head(self.body(feats))
        return upsample_bilinear(y, tuple(s * self.stride for s in feats.shape[-2:]))


class PSPNet(nn.Module):
    """PSPNet backbone.

    ``widths`` / ``blocks``: channels / basic blocks of the 4 ResNet stages; ``stem_width``;
    ``bins``: pyramid levels; ``ppm_width``: channels per pyramid branch (None: widths[-1] // 4);
    ``decoder_width``: channels of the decoder's 3x3 conv; ``dropout`` before the head.
    """

    size_divisor = 8

    def __init__(
        self,
        in_channels: int,
        widths: tuple[int, int, int, int] = (16, 32, 64, 128),
        blocks: tuple[int, int, int, int] = (2, 2, 2, 2),
        stem_width: int = 16,
        bins: tuple[int, ...] = (1, 2, 3, 6),
        ppm_width: int | None = None,
        decoder_width: int = 64,
        dropout: float = 0.1,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        resnet = DilatedResNet(in_channels, widths, blocks, 8, stem_width, norm)
        c = resnet.widths[-1]
        ppm = PyramidPooling(c, int(ppm_width or max(c // 4, 1)), tuple(bins), norm)
        self.encoder = PSPEncoder(resnet, ppm)
        self.decoder_width = int(decoder_width)
        self.dropout = float(dropout)
        self.norm = norm

    def make_decoder(self, out_channels: int) -> nn.Module:
        return PSPDecoder(
            self.encoder.ppm.out_channels,
            self.decoder_width,
            out_channels,
            self.dropout,
            self.norm,
            self.size_divisor,
        )

    def local_receptive_field(self) -> int:
        """Receptive field of the convolutional path (the feature map passed through the PPM
        unpooled): ResNet, 3x3 decoder conv, bilinear x8 (an upper bound, see :class:`Window`)."""
        return self.encoder.resnet.rf().conv(3).bilinear(self.size_divisor).size

    def receptive_field(self) -> int:
        """The 1x1 pyramid bin pools the whole input: :data:`GLOBAL_RECEPTIVE_FIELD`."""
        return GLOBAL_RECEPTIVE_FIELD

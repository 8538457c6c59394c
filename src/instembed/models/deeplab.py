"""DeepLabV3+ backbone (Chen et al. 2018, "Encoder-Decoder with Atrous Separable Convolution"),
small and from scratch.

Encoder (DeepLabV3): a dilated ResNet of basic blocks (:class:`DilatedResNet`) at output stride
8 or 16 (``output_stride``), then atrous spatial pyramid pooling (ASPP): a 1x1 conv, three 3x3
convs dilated by ``rates`` (6, 12, 18 at output stride 16, doubled at 8: the rates scale with
the feature resolution) and image pooling (global average, 1x1 conv, upsampled), concatenated
and projected by a 1x1 conv (+ dropout). Each decoder (the DeepLabV3+ decoder): the stride-4
low-level features of ResNet stage 1 reduced by a 1x1 conv to ``low_width`` channels,
concatenated with the ASPP output upsampled bilinearly to stride 4, two 3x3 convs, a 1x1
``head``, and bilinear upsampling by 4. Plain (not separable) convolutions.

Input sizes must be multiples of the output stride (padded by :class:`EmbeddingNet`). Image
pooling sees the whole input, so ``receptive_field()`` is :data:`GLOBAL_RECEPTIVE_FIELD`;
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
    union,
    upsample_bilinear,
)

BASE_RATES = (6, 12, 18)  # ASPP rates at output stride 16 (Chen et al. 2017, 2018)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1 conv, one 3x3 conv per dilation ``rate``, image
    pooling; concatenated ((len(rates) + 2) * width channels) and projected to ``width``."""

    def __init__(
        self, cin: int, width: int, rates=BASE_RATES, dropout: float = 0.1, norm: str = "batch"
    ) -> None:
        super().__init__()
        self.rates = tuple(int(r) for r in rates)
        self.branches = nn.ModuleList([conv_norm_act(cin, width, 1, norm)])
        self.branches.extend(conv_norm_act(cin, width, 3, norm, dilation=r) for r in self.rates)
        self.branches.append(PooledBranch(cin, width, 1, norm))  # image pooling
        self.project = nn.Sequential(
            conv_norm_act(len(self.branches) * width, width, 1, norm),
            nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([b(x) for b in self.branches], dim=1))


class DeepLabEncoder(nn.Module):
    def __init__(self, resnet: DilatedResNet, aspp: ASPP) -> None:
        super().__init__()
        self.resnet = resnet
        self.aspp = aspp

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.resnet(x)
        # (B, widths[0], H / 4, W / 4), (B, aspp_width, H / os, W / os)
        return feats[0], self.aspp(feats[-1])


class DeepLabDecoder(nn.Module):
    def __init__(
        self, low_in: int, low_width: int, aspp_width: int, width: int, out_channels: int, norm
    ) -> None:
        super().__init__()
        self.low = conv_norm_act(low_in, low_width, 1, norm)
        self.body = nn.Sequential(
            conv_norm_act(low_width + aspp_width, width, 3, norm),
            conv_norm_act(width, width, 3, norm),
        )
        self.head = nn.Conv2d(width, out_channels, 1)

    def forward(self, feats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        low, high = feats
        y = torch.cat([upsample_bilinear(high, low.shape[-2:]), self.low(low)], dim=1)
        y = self.head(self.body(y))
        return upsample_bilinear(y, tuple(4 * s for s in low.shape[-2:]))


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ backbone.

    ``output_stride`` 8 or 16; ``widths`` / ``blocks``: channels / basic blocks of the 4 ResNet
    stages; ``stem_width``; ``aspp_width``; ``rates``: ASPP dilations at output stride 16 (None:
    6, 12, 18), multiplied by 16 / output_stride; ``low_width``: channels of the reduced
    low-level features; ``decoder_width``: channels of the decoder's 3x3 convs; ``dropout``
    after the ASPP projection.
    """

    def __init__(
        self,
        in_channels: int,
        output_stride: int = 16,
        widths: tuple[int, int, int, int] = (16, 32, 64, 128),
        blocks: tuple[int, int, int, int] = (2, 2, 2, 2),
        stem_width: int = 16,
        aspp_width: int = 64,
        rates: tuple[int, ...] | None = None,
        low_width: int = 16,
        decoder_width: int = 64,
        dropout: float = 0.1,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"deeplabv3plus output_stride must be 8 or 16, got {output_stride}")
        resnet = DilatedResNet(in_channels, widths, blocks, output_stride, stem_width, norm)
        scale = 16 // output_stride
        self.rates = tuple(int(r) * scale for r in (BASE_RATES if rates is None else rates))
        aspp = ASPP(resnet.widths[-1], int(aspp_width), self.rates, float(dropout), norm)
        self.encoder = DeepLabEncoder(resnet, aspp)
        self.output_stride = int(output_stride)
        self.aspp_width = int(aspp_width)
        self.low_width = int(low_width)
        self.decoder_width = int(decoder_width)
        self.norm = norm

    @property
    def size_divisor(self) -> int:
        return self.output_stride

    def make_decoder(self, out_channels: int) -> nn.Module:
        return DeepLabDecoder(
            self.encoder.resnet.widths[0],
            self.low_width,
            self.aspp_width,
            self.decoder_width,
            out_channels,
            self.norm,
        )

    def local_receptive_field(self) -> int:
        """Receptive field of the convolutional path without image pooling: ResNet, the largest
        ASPP rate, bilinear up to stride 4 (joined with the low-level path), two 3x3 convs, bilinear
        x4 (an upper bound, see :class:`Window`)."""
        resnet = self.encoder.resnet
        high = resnet.rf().conv(3, dilation=max(self.rates)).bilinear(self.output_stride // 4)
        rf = union(high, resnet.rf(1))  # the low-level path (1x1 conv)
        return rf.conv(3).conv(3).bilinear(4).size

    def receptive_field(self) -> int:
        """Image pooling sees the whole input: :data:`GLOBAL_RECEPTIVE_FIELD`."""
        return GLOBAL_RECEPTIVE_FIELD

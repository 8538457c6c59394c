"""ERFNet backbone (Romera et al. 2017), as used by SpatialEmbeddings (Neven et al. 2019).

Encoder: two downsampler blocks, five non-bottleneck-1D blocks, a third downsampler, then two
rounds of non-bottleneck-1D blocks with dilations 2, 4, 8, 16. Each decoder: transposed-conv
upsamplers with two non-bottleneck-1D blocks after each, and a final 2x2 transposed conv (the
``head``). Input sizes must be multiples of 8 (padded by :class:`EmbeddingNet`).
"""

from __future__ import annotations

import torch
from torch import nn

from instembed.models.blocks import ReceptiveField, make_norm


class Downsampler(nn.Module):
    """3x3 stride-2 conv concatenated with a 2x2 max pool of the input, then norm + ReLU."""

    def __init__(self, cin: int, cout: int, norm: str) -> None:
        super().__init__()
        self.pool = cin < cout
        self.conv = nn.Conv2d(cin, cout - cin if self.pool else cout, 3, stride=2, padding=1)
        self.norm = make_norm(norm, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.pool:
            y = torch.cat([y, nn.functional.max_pool2d(x, 2)], dim=1)
        return torch.relu(self.norm(y))


class NonBottleneck1D(nn.Module):
    """Residual block of factorised convs: 3x1, 1x3, then 3x1, 1x3 dilated by ``dilation``."""

    def __init__(self, ch: int, dropout: float, dilation: int, norm: str) -> None:
        super().__init__()
        d = dilation
        self.conv1 = nn.Conv2d(ch, ch, (3, 1), padding=(1, 0))
        self.conv2 = nn.Conv2d(ch, ch, (1, 3), padding=(0, 1))
        self.norm1 = make_norm(norm, ch)
        self.conv3 = nn.Conv2d(ch, ch, (3, 1), padding=(d, 0), dilation=(d, 1))
        self.conv4 = nn.Conv2d(ch, ch, (1, 3), padding=(0, d), dilation=(1, d))
        self.norm2 = make_norm(norm, ch)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv1(x))
        y = torch.relu(self.norm1(self.conv2(y)))
        y = torch.relu(self.conv3(y))
        y = self.dropout(self.norm2(self.conv4(y)))
        return torch.relu(y + x)


class Upsampler(nn.Sequential):
    def __init__(self, cin: int, cout: int, norm: str) -> None:
        super().__init__(
            nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1),
            make_norm(norm, cout),
            nn.ReLU(inplace=True),
        )


ENCODER_DILATIONS = (2, 4, 8, 16)


class ERFNetDecoder(nn.Module):
    def __init__(self, widths: tuple[int, int, int], out_channels: int, norm: str) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.body = nn.Sequential(
            Upsampler(w3, w2, norm),
            NonBottleneck1D(w2, 0.0, 1, norm),
            NonBottleneck1D(w2, 0.0, 1, norm),
            Upsampler(w2, w1, norm),
            NonBottleneck1D(w1, 0.0, 1, norm),
            NonBottleneck1D(w1, 0.0, 1, norm),
        )
        self.head = nn.ConvTranspose2d(w1, out_channels, 2, stride=2)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(feats))


class ERFNet(nn.Module):
    """ERFNet backbone; ``widths`` = channels at 1/2, 1/4, 1/8 resolution (16, 64, 128)."""

    def __init__(
        self,
        in_channels: int,
        widths: tuple[int, int, int] = (16, 64, 128),
        dropout: tuple[float, float] = (0.03, 0.3),
        norm: str = "batch",
    ) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.widths = (w1, w2, w3)
        self.norm = norm
        layers: list[nn.Module] = [Downsampler(in_channels, w1, norm), Downsampler(w1, w2, norm)]
        layers += [NonBottleneck1D(w2, dropout[0], 1, norm) for _ in range(5)]
        layers.append(Downsampler(w2, w3, norm))
        for _ in range(2):
            layers += [NonBottleneck1D(w3, dropout[1], d, norm) for d in ENCODER_DILATIONS]
        self.encoder = nn.Sequential(*layers)

    size_divisor = 8

    def make_decoder(self, out_channels: int) -> nn.Module:
        return ERFNetDecoder(self.widths, out_channels, self.norm)

    def receptive_field(self) -> int:
        rf = ReceptiveField()

        def nb1d(d: int) -> None:  # along one axis: a 3-tap conv, then a 3-tap conv dilated by d
            rf.conv(3).conv(3, dilation=d)

        rf.conv(3, stride=2).conv(3, stride=2)
        for _ in range(5):
            nb1d(1)
        rf.conv(3, stride=2)
        for _ in range(2):
            for d in ENCODER_DILATIONS:
                nb1d(d)
        for _ in range(2):
            rf.up(2, k=3)
            nb1d(1)
            nb1d(1)
        rf.up(2)
        return int(round(rf.size))

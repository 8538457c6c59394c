"""SegNet backbone (Badrinarayanan et al. 2017, "SegNet: A Deep Convolutional Encoder-Decoder
Architecture for Image Segmentation"), small and from scratch.

Encoder: VGG-style stages (``convs`` 3x3 conv -> norm -> ReLU layers each), each ending in a 2x2
max pool that records the argmax indices. Each decoder mirrors it: per stage, from the deepest,
max-unpooling with that stage's encoder indices (the pooled values go back to the positions of
the maxima, zeros elsewhere: a sparse map densified by the convs that follow), then the same
number of 3x3 conv -> norm -> ReLU layers, the last one reducing to the next stage's width; a
3x3 ``head`` conv at full resolution (the paper's classifier input layer).

Input sizes must be multiples of 2^stages (padded by :class:`EmbeddingNet`).
"""

from __future__ import annotations

import torch
from torch import nn

from instembed.models.blocks import ConvNormAct
from instembed.models.resnet_blocks import Window


class SegNetDown(nn.Module):
    """Convs, then a 2x2 max pool returning (pooled, indices)."""

    def __init__(self, cin: int, cout: int, n: int, norm: str) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            *(ConvNormAct(cin if i == 0 else cout, cout, 3, norm) for i in range(n))
        )
        self.pool = nn.MaxPool2d(2, stride=2, return_indices=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pool(self.convs(x))


class SegNetUp(nn.Module):
    """Max-unpool with the encoder's indices, then convs (the last to ``cout``)."""

    def __init__(self, cin: int, cout: int, n: int, norm: str) -> None:
        super().__init__()
        self.unpool = nn.MaxUnpool2d(2, stride=2)
        self.convs = nn.Sequential(
            *(ConvNormAct(cin, cout if i == n - 1 else cin, 3, norm) for i in range(n))
        )

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return self.convs(self.unpool(x, indices))


class SegNetEncoder(nn.Module):
    def __init__(self, in_channels: int, widths, convs, norm: str) -> None:
        super().__init__()
        cins = (in_channels, *widths[:-1])
        self.stages = nn.ModuleList(
            SegNetDown(ci, co, n, norm) for ci, co, n in zip(cins, widths, convs)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        indices = []
        for stage in self.stages:
            x, idx = stage(x)
            indices.append(idx)
        return x, indices  # (B, widths[-1], H / 2^n, W / 2^n), indices of stages 1..n


class SegNetDecoder(nn.Module):
    def __init__(self, widths, convs, out_channels: int, norm: str) -> None:
        super().__init__()
        n = len(widths)
        self.stages = nn.ModuleList(
            SegNetUp(widths[i], widths[max(i - 1, 0)], convs[i], norm) for i in range(n - 1, -1, -1)
        )
        self.head = nn.Conv2d(widths[0], out_channels, 3, padding=1)

    def forward(self, feats) -> torch.Tensor:
        x, indices = feats
        for stage, idx in zip(self.stages, reversed(indices)):
            x = stage(x, idx)
        return self.head(x)


class SegNet(nn.Module):
    """SegNet backbone.

    ``widths`` / ``convs``: channels / 3x3 conv layers of each encoder stage (one pooling each;
    SegNet (VGG16): 64-512 and 2-2-3-3-3); the decoder mirrors them; ``norm`` after every conv.
    """

    def __init__(
        self,
        in_channels: int,
        widths: tuple[int, ...] = (16, 32, 64, 96, 96),
        convs: tuple[int, ...] = (2, 2, 3, 3, 3),
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if not widths or len(widths) != len(convs):
            raise ValueError(f"segnet needs as many widths as conv counts, got {widths}, {convs}")
        if min(widths) < 1 or min(convs) < 1:
            raise ValueError(f"segnet widths and convs must be >= 1, got {widths}, {convs}")
        self.widths = tuple(int(w) for w in widths)
        self.convs = tuple(int(n) for n in convs)
        self.norm = norm
        self.encoder = SegNetEncoder(in_channels, self.widths, self.convs, norm)

    @property
    def size_divisor(self) -> int:
        return 2 ** len(self.widths)

    def make_decoder(self, out_channels: int) -> nn.Module:
        return SegNetDecoder(self.widths, self.convs, out_channels, self.norm)

    def receptive_field(self) -> int:
        """Deepest path: encoder convs and pools, then per stage unpooling (a fine unit gets at
        most its pooled unit) and the decoder convs, and the 3x3 head; an upper bound over the
        output positions (see :class:`Window`). The unpooling indices depend on the encoder's
        pooling windows, which this path already contains."""
        win = Window()
        for n in self.convs:
            for _ in range(n):
                win.conv(3)
            win.conv(2, stride=2, padding=0)
        for n in reversed(self.convs):
            win.nearest(2)
            for _ in range(n):
                win.conv(3)
        return win.conv(3).size

"""FCN-8s backbone (Long et al. 2015, "Fully Convolutional Networks for Semantic Segmentation"),
small and from scratch.

Encoder: a VGG-style network of 5 stages (``convs`` 3x3 conv -> norm -> ReLU layers each, then a
2x2 max pool: pool3 at stride 8, pool4 at 16, pool5 at 32), then the convolutionalised fully
connected layers fc6 (``fc_kernel`` x ``fc_kernel`` conv, 'same' padding) and fc7 (1x1), each
followed by ReLU and dropout. Each decoder: 1x1 score layers with the head's channels on fc7,
pool4 and pool3; the fc7 scores are upsampled x2 by a learned transposed conv (kernel 4) and
added to the pool4 scores (16s), the sum upsampled x2 again and added to the pool3 scores (8s),
and the final x8 transposed conv (kernel 16, the ``head``) brings the 8s scores to full
resolution. Transposed convs start as bilinear interpolation per channel, as in the paper.
The decoder's channels are the head channels throughout.

Input sizes must be multiples of 32 (padded by :class:`EmbeddingNet`); padding is 'same'
everywhere, so no crop offsets are needed (the paper's 100-pixel input padding is not used).
"""

from __future__ import annotations

import torch
from torch import nn

from instembed.models.blocks import ConvNormAct
from instembed.models.resnet_blocks import Window, union


def bilinear_kernel(k: int) -> torch.Tensor:
    """(k, k) bilinear interpolation kernel for a transposed conv with stride ``(k + 1) // 2``."""
    factor = (k + 1) // 2
    center = factor - 1 if k % 2 == 1 else factor - 0.5
    og = 1 - (torch.arange(k, dtype=torch.float32) - center).abs() / factor
    return og[:, None] * og[None, :]


def bilinear_transposed_conv(ch: int, factor: int, bias: bool) -> nn.ConvTranspose2d:
    """Transposed conv upsampling by ``factor`` (kernel 2 factor, padding factor / 2), weights
    initialised to per-channel bilinear interpolation (zero across channels)."""
    k = 2 * factor
    up = nn.ConvTranspose2d(ch, ch, k, stride=factor, padding=factor // 2, bias=bias)
    with torch.no_grad():
        up.weight.zero_()
        kernel = bilinear_kernel(k)
        for c in range(ch):
            up.weight[c, c] = kernel
        if bias:
            up.bias.zero_()
    return up


class VGGEncoder(nn.Module):
    """VGG stages + fc6/fc7; returns (pool3, pool4, fc7) at strides 8, 16, 32."""

    def __init__(
        self,
        in_channels: int,
        widths: tuple[int, ...],
        convs: tuple[int, ...],
        fc_width: int,
        fc_kernel: int,
        dropout: float,
        norm: str,
    ) -> None:
        super().__init__()
        self.stages = nn.ModuleList()
        cin = in_channels
        for w, n in zip(widths, convs):
            layers = [ConvNormAct(cin if i == 0 else w, w, 3, norm) for i in range(n)]
            self.stages.append(nn.Sequential(*layers, nn.MaxPool2d(2)))
            cin = w

        def drop() -> nn.Module:
            return nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

        self.fc = nn.Sequential(
            ConvNormAct(cin, fc_width, fc_kernel, norm),
            drop(),
            ConvNormAct(fc_width, fc_width, 1, norm),
            drop(),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pools = []
        for stage in self.stages:
            x = stage(x)
            pools.append(x)
        return pools[2], pools[3], self.fc(x)


class FCN8sDecoder(nn.Module):
    def __init__(self, skip_widths: tuple[int, int], fc_width: int, out_channels: int) -> None:
        super().__init__()
        c = out_channels
        self.score_fr = nn.Conv2d(fc_width, c, 1)
        self.score_pool4 = nn.Conv2d(skip_widths[1], c, 1)
        self.score_pool3 = nn.Conv2d(skip_widths[0], c, 1)
        self.up2 = bilinear_transposed_conv(c, 2, bias=False)
        self.up_pool4 = bilinear_transposed_conv(c, 2, bias=False)
        self.head = bilinear_transposed_conv(c, 8, bias=True)

    def forward(self, feats) -> torch.Tensor:
        pool3, pool4, fc7 = feats
        y = self.up2(self.score_fr(fc7)) + self.score_pool4(pool4)  # 16s, (B, c, H/16, W/16)
        y = self.up_pool4(y) + self.score_pool3(pool3)  # 8s, (B, c, H/8, W/8)
        return self.head(y)  # (B, c, H, W)


class FCN8s(nn.Module):
    """FCN-8s backbone.

    ``widths`` / ``convs``: channels / 3x3 conv layers of the 5 VGG stages (VGG16: 64-512,
    2-2-3-3-3); ``fc_width``, ``fc_kernel``: fc6/fc7 channels and fc6 kernel (VGG16: 4096, 7);
    ``dropout`` after fc6 and fc7 (paper: 0.5); ``norm`` after every encoder conv (VGG: none).
    """

    size_divisor = 32

    def __init__(
        self,
        in_channels: int,
        widths: tuple[int, int, int, int, int] = (16, 32, 64, 96, 96),
        convs: tuple[int, int, int, int, int] = (2, 2, 3, 3, 3),
        fc_width: int = 192,
        fc_kernel: int = 7,
        dropout: float = 0.0,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if len(widths) != 5 or len(convs) != 5:
            raise ValueError(f"fcn8s needs 5 widths and 5 conv counts, got {widths}, {convs}")
        if min(widths) < 1 or min(convs) < 1 or fc_width < 1 or fc_kernel % 2 != 1:
            raise ValueError(
                f"fcn8s widths, convs, fc_width must be >= 1 and fc_kernel odd: "
                f"{widths}, {convs}, {fc_width}, {fc_kernel}"
            )
        self.widths = tuple(int(w) for w in widths)
        self.convs = tuple(int(n) for n in convs)
        self.fc_width = int(fc_width)
        self.fc_kernel = int(fc_kernel)
        self.encoder = VGGEncoder(
            in_channels, self.widths, self.convs, self.fc_width, self.fc_kernel, dropout, norm
        )

    def make_decoder(self, out_channels: int) -> nn.Module:
        return FCN8sDecoder((self.widths[2], self.widths[3]), self.fc_width, out_channels)

    def receptive_field(self) -> int:
        """Input window of the score path 32s -> 16s -> 8s -> full resolution joined with the
        pool4 and pool3 score paths; an upper bound over the output positions modulo 8 (see
        :class:`Window`)."""
        win, pools = Window(), []
        for n in self.convs:
            for _ in range(n):
                win.conv(3)
            pools.append(win.conv(2, stride=2, padding=0).copy())
        win.conv(self.fc_kernel).conv(1)
        win = union(win.transposed(4, 2, 1), pools[3])  # 16s
        win = union(win.transposed(4, 2, 1), pools[2])  # 8s
        return win.transposed(16, 8, 4).size

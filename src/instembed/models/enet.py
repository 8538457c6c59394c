"""ENet backbone (Paszke et al. 2016): a fast encoder-decoder for real-time segmentation.

Initial block (3x3 stride-2 conv concatenated with a max pool), bottleneck stage 1 (downsample +
4 regular), stages 2 and 3 (regular, dilated 2, asymmetric 5, dilated 4, regular, dilated 8,
asymmetric 5, dilated 16; stage 2 starts with a downsampling bottleneck). Each decoder: two
upsampling bottlenecks that max-unpool with the encoder's pooling indices, and a final 3x3
transposed conv (the ``head``). Input sizes must be multiples of 8 (padded by
:class:`EmbeddingNet`).
"""

from __future__ import annotations

import torch
from torch import nn

from instembed.models.blocks import ReceptiveField, make_norm


class InitialBlock(nn.Module):
    def __init__(self, cin: int, cout: int, norm: str) -> None:
        super().__init__()
        self.pool = cin < cout
        self.conv = nn.Conv2d(cin, cout - cin if self.pool else cout, 3, stride=2, padding=1)
        self.norm = make_norm(norm, cout)
        self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.pool:
            y = torch.cat([y, nn.functional.max_pool2d(x, 2)], dim=1)
        return self.act(self.norm(y))


def _cna(cin: int, cout: int, k, norm: str, **kw) -> nn.Sequential:
    """conv -> norm -> PReLU; ``k`` an int or (kh, kw) with 'same' padding unless given."""
    kh, kw_ = (k, k) if isinstance(k, int) else k
    dil = kw.pop("dilation", 1)
    pad = kw.pop("padding", ((kh // 2) * dil, (kw_ // 2) * dil))
    return nn.Sequential(
        nn.Conv2d(cin, cout, (kh, kw_), padding=pad, dilation=dil, bias=False, **kw),
        make_norm(norm, cout),
        nn.PReLU(cout),
    )


class Bottleneck(nn.Module):
    """Regular / dilated / asymmetric bottleneck: 1x1 project, main conv, 1x1 expand, residual."""

    def __init__(self, ch: int, kind: str, dropout: float, norm: str, dilation: int = 1) -> None:
        super().__init__()
        mid = max(ch // 4, 1)
        if kind == "regular":
            main = _cna(mid, mid, 3, norm)
        elif kind == "dilated":
            main = _cna(mid, mid, 3, norm, dilation=dilation)
        elif kind == "asymmetric":
            main = nn.Sequential(_cna(mid, mid, (5, 1), norm), _cna(mid, mid, (1, 5), norm))
        else:
            raise ValueError(f"unknown bottleneck kind {kind!r}")
        self.ext = nn.Sequential(
            _cna(ch, mid, 1, norm),
            main,
            nn.Conv2d(mid, ch, 1, bias=False),
            make_norm(norm, ch),
            nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(),
        )
        self.act = nn.PReLU(ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.ext(x))


class DownBottleneck(nn.Module):
    """Downsampling bottleneck: max pool (indices kept) + zero channel padding, 2x2 stride-2 ext."""

    def __init__(self, cin: int, cout: int, dropout: float, norm: str) -> None:
        super().__init__()
        mid = max(cin // 4, 1)
        self.cpad = cout - cin
        self.ext = nn.Sequential(
            _cna(cin, mid, 2, norm, stride=2, padding=0),
            _cna(mid, mid, 3, norm),
            nn.Conv2d(mid, cout, 1, bias=False),
            make_norm(norm, cout),
            nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(),
        )
        self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        main, idx = nn.functional.max_pool2d(x, 2, return_indices=True)
        if self.cpad > 0:
            main = nn.functional.pad(main, (0, 0, 0, 0, 0, self.cpad))
        return self.act(main + self.ext(x)), idx


class UpBottleneck(nn.Module):
    """Upsampling bottleneck: 1x1 conv + max-unpool with the encoder indices; transposed-conv ext."""

    def __init__(self, cin: int, cout: int, norm: str) -> None:
        super().__init__()
        mid = max(cin // 4, 1)
        self.main = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), make_norm(norm, cout))
        self.ext = nn.Sequential(
            _cna(cin, mid, 1, norm),
            nn.ConvTranspose2d(mid, mid, 3, stride=2, padding=1, output_padding=1, bias=False),
            make_norm(norm, mid),
            nn.PReLU(mid),
            nn.Conv2d(mid, cout, 1, bias=False),
            make_norm(norm, cout),
        )
        self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        main = nn.functional.max_unpool2d(self.main(x), idx, 2)
        return self.act(main + self.ext(x))


def _stage(ch: int, dropout: float, norm: str) -> nn.Sequential:
    kinds = [
        ("regular", 1),
        ("dilated", 2),
        ("asymmetric", 1),
        ("dilated", 4),
        ("regular", 1),
        ("dilated", 8),
        ("asymmetric", 1),
        ("dilated", 16),
    ]
    return nn.Sequential(*(Bottleneck(ch, k, dropout, norm, d) for k, d in kinds))


class ENetEncoder(nn.Module):
    def __init__(self, in_channels: int, widths: tuple[int, int, int], norm: str) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.initial = InitialBlock(in_channels, w1, norm)
        self.down1 = DownBottleneck(w1, w2, 0.01, norm)
        self.stage1 = nn.Sequential(*(Bottleneck(w2, "regular", 0.01, norm) for _ in range(4)))
        self.down2 = DownBottleneck(w2, w3, 0.1, norm)
        self.stage2 = _stage(w3, 0.1, norm)
        self.stage3 = _stage(w3, 0.1, norm)

    def forward(self, x: torch.Tensor):
        x = self.initial(x)  # (B, w1, H/2, W/2)
        x, idx1 = self.down1(x)  # (B, w2, H/4, W/4)
        x = self.stage1(x)
        x, idx2 = self.down2(x)  # (B, w3, H/8, W/8)
        x = self.stage3(self.stage2(x))
        return x, idx1, idx2


class ENetDecoder(nn.Module):
    def __init__(self, widths: tuple[int, int, int], out_channels: int, norm: str) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.up1 = UpBottleneck(w3, w2, norm)
        self.stage4 = nn.Sequential(*(Bottleneck(w2, "regular", 0.1, norm) for _ in range(2)))
        self.up2 = UpBottleneck(w2, w1, norm)
        self.stage5 = Bottleneck(w1, "regular", 0.1, norm)
        self.head = nn.ConvTranspose2d(w1, out_channels, 3, stride=2, padding=1, output_padding=1)

    def forward(self, feats) -> torch.Tensor:
        x, idx1, idx2 = feats
        x = self.stage4(self.up1(x, idx2))
        x = self.stage5(self.up2(x, idx1))
        return self.head(x)


class ENet(nn.Module):
    """ENet backbone; ``widths`` = channels at 1/2, 1/4, 1/8 resolution (16, 64, 128)."""

    size_divisor = 8

    def __init__(
        self, in_channels: int, widths: tuple[int, int, int] = (16, 64, 128), norm: str = "batch"
    ) -> None:
        super().__init__()
        self.widths = tuple(widths)
        self.norm = norm
        self.encoder = ENetEncoder(in_channels, self.widths, norm)

    def make_decoder(self, out_channels: int) -> nn.Module:
        return ENetDecoder(self.widths, out_channels, self.norm)

    def receptive_field(self) -> int:
        rf = ReceptiveField().conv(3, stride=2)
        rf.conv(2, stride=2).conv(3)  # down1 (ext branch)
        for _ in range(4):
            rf.conv(3)
        rf.conv(2, stride=2).conv(3)  # down2
        for _ in range(2):
            for k, d in [(3, 1), (3, 2), (5, 1), (3, 4), (3, 1), (3, 8), (5, 1), (3, 16)]:
                rf.conv(k, dilation=d)
        rf.up(2, k=3).conv(3).conv(3)
        rf.up(2, k=3).conv(3)
        rf.up(2, k=3)
        return int(round(rf.size))

"""HRNetV2 backbone (Wang et al. 2019, "Deep High-Resolution Representation Learning for Visual
Recognition"), small and from scratch.

Stem: two 3x3 stride-2 convs (stride 4). Stage 1: ``stage1_blocks`` basic blocks at stride 4
(``widths[0]`` channels). Before each later stage a transition adds one branch at half the
resolution of the lowest one (a 3x3 stride-2 conv): 4 branches at strides 4, 8, 16, 32 by
default. Each stage is ``modules[s]`` high-resolution modules: ``blocks`` basic blocks per
branch, then a multi-resolution fusion (:class:`HRFusion`): branch i receives the sum over all
branches j of branch j resampled to branch i (itself; a 1x1 conv + nearest upsampling from lower
resolutions; i - j 3x3 stride-2 convs from higher ones), then ReLU. Each decoder is the HRNetV2
representation head: all branches upsampled bilinearly to stride 4 and concatenated, a 1x1
conv -> norm -> ReLU, a 1x1 ``head``, and bilinear upsampling by 4.

Input sizes must be multiples of 4 * 2^(branches - 1) (32; padded by :class:`EmbeddingNet`).
"""

from __future__ import annotations

import torch
from torch import nn

from instembed.models.resnet_blocks import (
    BasicBlock,
    Window,
    conv_norm_act,
    union,
    upsample_bilinear,
)


def _downsampler(cin: int, cout: int, steps: int, norm: str) -> nn.Sequential:
    """``steps`` 3x3 stride-2 convs: the first steps - 1 keep ``cin`` (norm + ReLU), the last
    maps to ``cout`` (norm, no ReLU: the ReLU follows the fusion sum)."""
    layers = [conv_norm_act(cin, cin, 3, norm, stride=2) for _ in range(steps - 1)]
    layers.append(conv_norm_act(cin, cout, 3, norm, stride=2, act=False))
    return nn.Sequential(*layers)


class HRFusion(nn.Module):
    """Multi-resolution fusion: ``out[i] = relu(sum_j resample_ij(x[j]))``; ``layers[i][j]`` maps
    branch j (widths[j], stride 2^j) to branch i (widths[i], stride 2^i)."""

    def __init__(self, widths: tuple[int, ...], norm: str) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for i, wi in enumerate(widths):
            row = nn.ModuleList()
            for j, wj in enumerate(widths):
                if j == i:
                    row.append(nn.Identity())
                elif j > i:
                    row.append(
                        nn.Sequential(
                            conv_norm_act(wj, wi, 1, norm, act=False),
                            nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"),
                        )
                    )
                else:
                    row.append(_downsampler(wj, wi, i - j, norm))
            self.layers.append(row)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.relu(sum(f(x) for f, x in zip(row, xs))) for row in self.layers]


class HRModule(nn.Module):
    """``blocks`` basic blocks on every branch, then :class:`HRFusion`."""

    def __init__(self, widths: tuple[int, ...], blocks: int, norm: str) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(*(BasicBlock(w, w, norm=norm) for _ in range(blocks))) for w in widths
        )
        self.fusion = HRFusion(widths, norm)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.fusion([b(x) for b, x in zip(self.branches, xs)])


class HRNetEncoder(nn.Module):
    """Stem, stage 1, then (transition, stage) per added branch; returns the branch list."""

    def __init__(
        self,
        in_channels: int,
        widths: tuple[int, ...],
        modules: tuple[int, ...],
        blocks: int,
        stem_width: int,
        stage1_blocks: int,
        norm: str,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            conv_norm_act(in_channels, stem_width, 3, norm, stride=2),
            conv_norm_act(stem_width, stem_width, 3, norm, stride=2),
        )
        self.stage1 = nn.Sequential(
            *(
                BasicBlock(stem_width if k == 0 else widths[0], widths[0], norm=norm)
                for k in range(stage1_blocks)
            )
        )
        self.transitions = nn.ModuleList()
        self.stages = nn.ModuleList()
        for s in range(1, len(widths)):
            # the new branch s comes from branch s - 1 by a stride-2 conv
            self.transitions.append(conv_norm_act(widths[s - 1], widths[s], 3, norm, stride=2))
            self.stages.append(
                nn.Sequential(
                    *(HRModule(widths[: s + 1], blocks, norm) for _ in range(modules[s - 1]))
                )
            )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        xs = [self.stage1(self.stem(x))]
        for transition, stage in zip(self.transitions, self.stages):
            xs = stage(xs + [transition(xs[-1])])
        return xs  # branch i: (B, widths[i], H / 2^(i+2), W / 2^(i+2))


class HRNetV2Head(nn.Module):
    """Upsample all branches to branch 0, concatenate, 1x1 conv -> norm -> ReLU, 1x1 ``head``,
    bilinear upsampling by 4 to the input resolution."""

    def __init__(self, widths: tuple[int, ...], out_channels: int, norm: str) -> None:
        super().__init__()
        c = sum(widths)
        self.mix = conv_norm_act(c, c, 1, norm)
        self.head = nn.Conv2d(c, out_channels, 1)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        size = xs[0].shape[-2:]
        y = torch.cat([xs[0]] + [upsample_bilinear(x, size) for x in xs[1:]], dim=1)
        y = self.head(self.mix(y))
        return upsample_bilinear(y, tuple(4 * s for s in size))


class HRNet(nn.Module):
    """HRNetV2 backbone.

    ``widths``: channels of the branches at strides 4, 8, 16, ... (one per branch, 2 or more;
    HRNet-W18: 18, 36, 72, 144); ``modules``: HR modules in each stage after the first
    (len(widths) - 1 entries; HRNet-W18-Small: 1, 1, 1); ``blocks``: basic blocks per branch
    in a module; ``stem_width``; ``stage1_blocks``; ``norm``.
    """

    def __init__(
        self,
        in_channels: int,
        widths: tuple[int, ...] = (16, 32, 64, 128),
        modules: tuple[int, ...] = (1, 1, 1),
        blocks: int = 2,
        stem_width: int = 32,
        stage1_blocks: int = 2,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if len(widths) < 2 or len(modules) != len(widths) - 1:
            raise ValueError(
                f"hrnet needs >= 2 widths and len(widths) - 1 module counts, got {widths}, {modules}"
            )
        if min(widths) < 1 or min(modules) < 1 or blocks < 1 or stage1_blocks < 1:
            raise ValueError(f"hrnet widths, modules, blocks must be >= 1: {widths}, {modules}")
        self.widths = tuple(int(w) for w in widths)
        self.modules_per_stage = tuple(int(m) for m in modules)
        self.blocks = int(blocks)
        self.stage1_blocks = int(stage1_blocks)
        self.norm = norm
        self.encoder = HRNetEncoder(
            in_channels,
            self.widths,
            self.modules_per_stage,
            self.blocks,
            int(stem_width),
            self.stage1_blocks,
            norm,
        )

    @property
    def size_divisor(self) -> int:
        return 4 * 2 ** (len(self.widths) - 1)

    def make_decoder(self, out_channels: int) -> nn.Module:
        return HRNetV2Head(self.widths, out_channels, self.norm)

    def receptive_field(self) -> int:
        """Input window over all branch-to-branch routes: each branch's window is tracked and a
        fusion joins, per output branch, the windows of its resampled inputs; an upper bound over
        the output positions (see :class:`Window`)."""
        win = Window().conv(3, stride=2).conv(3, stride=2)
        for _ in range(self.stage1_blocks):
            BasicBlock.rf(win)
        wins = [win]
        for n_mod in self.modules_per_stage:
            wins = wins + [wins[-1].copy().conv(3, stride=2)]
            for _ in range(n_mod):
                for w in wins:
                    for _ in range(self.blocks):
                        BasicBlock.rf(w)
                fused = []
                for i in range(len(wins)):
                    paths = []
                    for j, w in enumerate(wins):
                        p = w.copy()
                        if j > i:  # 1x1 conv, nearest upsampling
                            p.conv(1).nearest(2 ** (j - i))
                        for _ in range(i - j):
                            p.conv(3, stride=2)
                        paths.append(p)
                    fused.append(union(*paths))
                wins = fused
        head = union(*(w.copy().bilinear(2**i) for i, w in enumerate(wins)))
        return head.conv(1).conv(1).bilinear(4).size

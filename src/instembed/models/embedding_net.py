"""``EmbeddingNet``: a backbone encoder shared by one decoder per head group, returning ``Outputs``.

Heads (name -> channels) and their output activation:

==================  ==============  =====================================================
head                channels        activation / meaning
==================  ==============  =====================================================
embedding           E               linear; ``Psi = Phi + u`` on dims 0, 1 if ``semiconv``
seed                1               sigmoid, seed / seediness in [0, 1]
sigma               S (1 or E)      ``exp``: bandwidth > 0, in embedding units
center              1               linear (Panoptic-DeepLab heatmap, regressed with MSE)
offset              2               linear, (dy, dx) in pixels to the instance centre
semantic            K               logits
class_embedding     K * E           linear, returned as (B, K, E, H, W); E = embedding dim
==================  ==============  =====================================================

Any input size works: the input is padded (reflection) at the bottom/right to a multiple of
``size_divisor`` and the outputs are cropped back. ``receptive_field`` is the theoretical
receptive field in input pixels (an upper bound of the effective one) for tiling overlaps.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from instembed.models.blocks import crop_to, pad_to_multiple
from instembed.models.semiconv import semiconv
from instembed.structures import DEFAULT_COORD_SCALE, DENSE_FIELDS, Outputs, pixel_coordinates

HEAD_NAMES = DENSE_FIELDS
DEFAULT_GROUPS = (
    ("embedding", "sigma", "offset", "class_embedding"),
    ("seed", "center", "semantic"),
)


def parse_heads(heads: dict) -> tuple[dict[str, int], tuple[int, int] | None]:
    """Validate ``heads`` and return (name -> channels, (K, E) of class_embedding or None)."""
    if not isinstance(heads, dict) or not heads:
        raise ValueError(f"heads must be a non-empty dict name -> channels, got {heads!r}")
    unknown = set(heads) - set(HEAD_NAMES)
    if unknown:
        raise ValueError(f"unknown head names {sorted(unknown)}; valid: {list(HEAD_NAMES)}")
    channels: dict[str, int] = {}
    class_shape = None
    for name, c in heads.items():
        if name == "class_embedding":
            if isinstance(c, (tuple, list)):
                k, e = (int(v) for v in c)
            else:
                e = int(heads.get("embedding", 0))
                if e <= 0 or int(c) % e:
                    raise ValueError(
                        "heads['class_embedding'] must be (K, E) or K * E with "
                        f"heads['embedding'] = E dividing it, got {c!r} with embedding {e}"
                    )
                k = int(c) // e
            class_shape = (k, e)
            c = k * e
        c = int(c)
        if c < 1:
            raise ValueError(f"heads[{name!r}] must be >= 1 channel, got {c}")
        if name in ("seed", "center") and c != 1:
            raise ValueError(f"heads[{name!r}] must have 1 channel, got {c}")
        if name == "offset" and c != 2:
            raise ValueError(f"heads['offset'] must have 2 channels (dy, dx), got {c}")
        channels[name] = c
    return channels, class_shape


class EmbeddingNet(nn.Module):
    """Backbone encoder + one decoder per head group; ``forward(x, coords_origin, targets) -> Outputs``."""

    def __init__(
        self,
        backbone: nn.Module,
        in_channels: int,
        heads: dict,
        semiconv: bool = False,
        coord_scale: float = DEFAULT_COORD_SCALE,
        coordconv: bool = False,
        head_groups: list | tuple | None = None,
        sigma_init: float = 0.5,
    ) -> None:
        super().__init__()
        self.heads, self.class_shape = parse_heads(heads)
        self.in_channels = in_channels
        self.semiconv = bool(semiconv)
        self.coord_scale = float(coord_scale)
        self.coordconv = bool(coordconv)
        if self.semiconv:
            if self.heads.get("embedding", 2) < 2:
                raise ValueError(
                    f"semiconv needs embedding dims >= 2, got {self.heads['embedding']}"
                )
            if self.class_shape is not None and self.class_shape[1] < 2:
                raise ValueError(
                    f"semiconv needs class_embedding dims E >= 2, got (K, E) = {self.class_shape}"
                )
        self.groups = self._resolve_groups(head_groups)
        self.backbone = backbone
        self.decoders = nn.ModuleList(
            backbone.make_decoder(sum(self.heads[n] for n in g)) for g in self.groups
        )
        if "sigma" in self.heads:  # exp(bias) = sigma_init at start
            for g, dec in zip(self.groups, self.decoders):
                if "sigma" in g:
                    start = sum(self.heads[n] for n in g[: g.index("sigma")])
                    with torch.no_grad():
                        dec.head.bias[start : start + self.heads["sigma"]] = math.log(sigma_init)

    def _resolve_groups(self, head_groups) -> list[tuple[str, ...]]:
        names = list(self.heads)
        if head_groups is None or head_groups == "single":
            return [tuple(names)]
        if head_groups == "auto":
            groups = [tuple(n for n in g if n in self.heads) for g in DEFAULT_GROUPS]
            return [g for g in groups if g]
        groups = [tuple(g) for g in head_groups]
        flat = [n for g in groups for n in g]
        if sorted(flat) != sorted(names):
            raise ValueError(
                f"head_groups {head_groups!r} must list every head exactly once; heads: {names}"
            )
        return groups

    @property
    def size_divisor(self) -> int:
        return int(self.backbone.size_divisor)

    @property
    def receptive_field(self) -> int:
        """Theoretical receptive field (pixels, side of the square window) of one output pixel."""
        return int(self.backbone.receptive_field())

    def forward(
        self,
        x: torch.Tensor,
        coords_origin: torch.Tensor | None = None,
        targets: list[dict] | None = None,
    ) -> Outputs:
        """x (B, C, H, W) float; coords_origin (B, 2) (y0, x0) of each crop, or None.

        ``targets`` (the batch's per-image targets) is accepted for the common model call and
        not used: a dense network's outputs do not depend on the ground truth.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"model input must be (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}"
            )
        b = x.shape[0]
        if coords_origin is not None:
            coords_origin = torch.as_tensor(coords_origin, device=x.device)
        xp, size = pad_to_multiple(x, self.size_divisor)
        if self.coordconv:
            u = pixel_coordinates(
                b, tuple(xp.shape[-2:]), coords_origin, self.coord_scale, x.device, x.dtype
            )
            xp = torch.cat([xp, u], dim=1)
        feats = self.backbone.encoder(xp)
        raw: dict[str, torch.Tensor] = {}
        for g, dec in zip(self.groups, self.decoders):
            y = crop_to(dec(feats), size)
            for name, t in zip(g, torch.split(y, [self.heads[n] for n in g], dim=1)):
                raw[name] = t
        out: dict[str, torch.Tensor] = {}
        for name, t in raw.items():
            if name == "seed":
                t = torch.sigmoid(t)
            elif name == "sigma":
                t = torch.exp(t)
            elif name == "class_embedding":
                t = t.reshape(b, *self.class_shape, *t.shape[-2:])
            if self.semiconv and name in ("embedding", "class_embedding"):
                t = semiconv(t, coords_origin, self.coord_scale)
            out[name] = t
        return Outputs(**out)

    def extra_repr(self) -> str:
        return (
            f"heads={self.heads}, groups={self.groups}, semiconv={self.semiconv}, "
            f"coord_scale={self.coord_scale}, coordconv={self.coordconv}"
        )

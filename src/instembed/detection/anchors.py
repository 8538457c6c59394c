"""Anchors for a region proposal network over FPN levels, with the semantics of torchvision's
``models.detection.anchor_utils.AnchorGenerator`` (Ren et al. 2015; Lin et al. 2017).

Per level, the *cell anchors* are zero-centred boxes, one per (aspect ratio, size) pair in that
order (ratio-major): for size ``s`` and ratio ``r = height / width``, ``w = s / sqrt(r)``,
``h = s * sqrt(r)`` and the box ``round((-w / 2, -h / 2, w / 2, h / 2))`` (``torch.round``: half to
even). They are shifted to every feature-map position ``(x, y) = (j * stride_w, i * stride_h)``
-- the top-left corner of cell (i, j), as torchvision, not its centre -- with
``stride = image_size // feature_size`` per axis. Anchors are ordered by level, then position
(row-major), then cell anchor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["AnchorGenerator", "ImageList", "shifted_anchors"]


def shifted_anchors(base: Tensor, gh: int, gw: int, sh: int, sw: int) -> Tensor:
    """(gh * gw * A, 4) anchors: the (A, 4) cell anchors ``base`` shifted to every position of
    a ``(gh, gw)`` feature map with strides ``(sh, sw)`` (row-major; TorchScript compiles it)."""
    shifts_x = torch.arange(gw, dtype=torch.int64, device=base.device) * sw
    shifts_y = torch.arange(gh, dtype=torch.int64, device=base.device) * sh
    sy, sx = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    sx, sy = sx.reshape(-1), sy.reshape(-1)
    shifts = torch.stack((sx, sy, sx, sy), dim=1).to(base.dtype)
    return (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)


class ImageList:
    """A padded batch of images and the size of each before padding (torchvision's
    ``models.detection.image_list.ImageList``).

    Args:
        tensors: (B, C, H, W) padded images.
        image_sizes: B ``(height, width)`` pairs.
    """

    def __init__(self, tensors: Tensor, image_sizes: Sequence[tuple[int, int]]) -> None:
        self.tensors = tensors
        self.image_sizes = [(int(h), int(w)) for h, w in image_sizes]

    def to(self, device: torch.device | str) -> ImageList:
        return ImageList(self.tensors.to(device), self.image_sizes)

    def __len__(self) -> int:
        return len(self.image_sizes)


class AnchorGenerator(nn.Module):
    """Anchors for the feature maps of one or more levels (see the module docstring).

    Args:
        sizes: per level, a tuple of anchor sizes (sqrt of the area) in image pixels; a flat
            tuple means one size per level. Default: the FPN setting, 32 .. 512 on five levels
            (torchvision's class default is one level with (128, 256, 512)).
        aspect_ratios: per level, a tuple of height / width ratios; a flat tuple is used for
            every level.
    """

    def __init__(
        self,
        sizes: Sequence[Sequence[float]] | Sequence[float] = ((32,), (64,), (128,), (256,), (512,)),
        aspect_ratios: Sequence[Sequence[float]] | Sequence[float] = (0.5, 1.0, 2.0),
    ) -> None:
        super().__init__()
        if not isinstance(sizes[0], (list, tuple)):
            sizes = tuple((s,) for s in sizes)
        if not isinstance(aspect_ratios[0], (list, tuple)):
            aspect_ratios = (tuple(aspect_ratios),) * len(sizes)
        if len(sizes) != len(aspect_ratios):
            raise ValueError(
                f"{len(sizes)} levels of anchor sizes but {len(aspect_ratios)} of aspect ratios"
            )
        self.sizes = tuple(tuple(s) for s in sizes)
        self.aspect_ratios = tuple(tuple(a) for a in aspect_ratios)
        self.cell_anchors = [
            self.generate_anchors(s, a) for s, a in zip(self.sizes, self.aspect_ratios)
        ]

    @staticmethod
    def generate_anchors(
        scales: Sequence[float],
        aspect_ratios: Sequence[float],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """(len(aspect_ratios) * len(scales), 4) zero-centred, rounded cell anchors."""
        scales_t = torch.as_tensor(scales, dtype=dtype, device=device)
        ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales_t[None, :]).reshape(-1)
        hs = (h_ratios[:, None] * scales_t[None, :]).reshape(-1)
        return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()

    def num_anchors_per_location(self) -> list[int]:
        """Anchors per feature-map position, per level."""
        return [len(s) * len(a) for s, a in zip(self.sizes, self.aspect_ratios)]

    def grid_anchors(
        self,
        grid_sizes: Sequence[Sequence[int]],
        strides: Sequence[Sequence[int]],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> list[Tensor]:
        """Per level, the (gh * gw * A, 4) anchors of a ``(gh, gw)`` feature map with
        ``(stride_h, stride_w)``."""
        if not (len(grid_sizes) == len(strides) == len(self.cell_anchors)):
            raise ValueError(
                f"{len(grid_sizes)} feature maps and {len(strides)} strides for an anchor "
                f"generator of {len(self.cell_anchors)} levels (sizes and aspect ratios are "
                "given per feature map)"
            )
        out = []
        for (gh, gw), (sh, sw), base in zip(grid_sizes, strides, self.cell_anchors):
            base = base.to(dtype=dtype, device=device)
            out.append(shifted_anchors(base, int(gh), int(gw), int(sh), int(sw)))
        return out

    def forward(
        self, image_list: ImageList | Tensor, feature_maps: Sequence[Tensor]
    ) -> list[Tensor]:
        """Per image, its anchors over all levels concatenated, (sum_l gh_l gw_l A_l, 4).

        Args:
            image_list: an :class:`ImageList` (or anything with ``.tensors`` and
                ``.image_sizes``) or the (B, C, H, W) batch itself.
            feature_maps: per level, a (B, C_l, gh_l, gw_l) map; dtype and device of the
                anchors follow the first.
        """
        images = image_list.tensors if hasattr(image_list, "tensors") else image_list
        batch = len(image_list.image_sizes) if hasattr(image_list, "image_sizes") else None
        batch = int(images.shape[0]) if batch is None else batch
        height, width = int(images.shape[-2]), int(images.shape[-1])
        grid_sizes = [(int(f.shape[-2]), int(f.shape[-1])) for f in feature_maps]
        strides = [(height // gh, width // gw) for gh, gw in grid_sizes]
        first = feature_maps[0]
        levels = self.grid_anchors(grid_sizes, strides, first.dtype, first.device)
        return [torch.cat(levels, dim=0) for _ in range(batch)]  # one tensor per image

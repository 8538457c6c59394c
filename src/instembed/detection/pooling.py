"""RoIAlign (He et al. 2017, Mask R-CNN, Sec. 3) with the signature and semantics of
``torchvision.ops.roi_align``, in plain PyTorch.

Every RoI is cut into ``output_size`` bins; each bin's value is the average of a regular grid of
``sampling_ratio x sampling_ratio`` bilinear samples of the feature map (``sampling_ratio <= 0``:
``ceil(roi_size / output_size)`` per axis, per RoI), at real-valued positions -- no quantisation.

Sample values follow torchvision's kernel exactly: a sample at feature coordinates ``(y, x)``
(pixel centres at integers) is 0 when ``y < -1``, ``y > H``, ``x < -1`` or ``x > W``; otherwise
the coordinates are clamped to ``[0, H - 1] x [0, W - 1]`` and interpolated bilinearly. The
average divides by the number of samples, the zero ones included.

The samples are taken with :func:`torch.nn.functional.grid_sample` at the clamped coordinates
(zero ones moved outside the map, where its zero padding gives 0), one call per image and per
sampling-grid size (chunked to bound memory), so the op runs on any device, is differentiable
w.r.t. the features (not the boxes, as torchvision) and has no loop over RoIs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RoIAlign", "roi_align", "roi_align_rois"]

_MAX_ELEMENTS = 1 << 26  # sampled values held at a time (per grid_sample call)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    if len(size) == 1:
        return int(size[0]), int(size[0])
    return int(size[0]), int(size[1])


def convert_boxes_to_roi_format(
    boxes: Tensor | Sequence[Tensor], dtype: torch.dtype | None = None, device=None
) -> Tensor:
    """(K, 5) ``(batch index, x1, y1, x2, y2)`` from a (K, 5) tensor or a list of per-image
    (K_i, 4) tensors (image i's boxes get batch index i)."""
    if isinstance(boxes, Tensor):
        if boxes.ndim != 2 or boxes.shape[1] != 5:
            raise ValueError(
                f"boxes must be a (K, 5) tensor or a list of (K_i, 4) tensors, got a tensor of "
                f"shape {tuple(boxes.shape)}"
            )
        return boxes.to(dtype=dtype, device=device)
    parts = []
    for i, b in enumerate(boxes):
        if b.ndim != 2 or b.shape[1] != 4:
            raise ValueError(f"boxes[{i}] must be (K_i, 4), got shape {tuple(b.shape)}")
        b = b.to(dtype=dtype, device=device)
        parts.append(torch.cat([torch.full_like(b[:, :1], i), b], dim=1))
    if not parts:
        return torch.zeros(0, 5, dtype=dtype, device=device)
    return torch.cat(parts, dim=0)


def _sample_group(
    feat: Tensor,
    x1: Tensor,
    y1: Tensor,
    bw: Tensor,
    bh: Tensor,
    out_hw: tuple[int, int],
    grid: tuple[int, int],
) -> Tensor:
    """(L, C, oh, ow) RoIAlign of L RoIs of one (1, C, H, W) feature map, all with a sampling
    grid of ``grid = (gh, gw)`` points per bin."""
    oh, ow = out_hw
    gh, gw = grid
    c, h, w = int(feat.shape[1]), int(feat.shape[2]), int(feat.shape[3])
    dtype, device = feat.dtype, feat.device
    ph = torch.arange(oh, dtype=dtype, device=device)
    pw = torch.arange(ow, dtype=dtype, device=device)
    iy = torch.arange(gh, dtype=dtype, device=device) + 0.5
    ix = torch.arange(gw, dtype=dtype, device=device) + 0.5
    # sample positions, torchvision's arithmetic: start + p * bin + (i + .5) * bin / grid
    ys = y1[:, None, None] + ph[None, :, None] * bh[:, None, None] + iy * (bh / gh)[:, None, None]
    xs = x1[:, None, None] + pw[None, :, None] * bw[:, None, None] + ix * (bw / gw)[:, None, None]
    # torchvision's rule: a sample outside [-1, H] x [-1, W] is 0, else clamped to the map.
    # Clamped here, the invalid ones moved far outside, so grid_sample's zero padding does both
    ys = torch.where((ys >= -1) & (ys <= h), ys.clamp(0, h - 1), -10.0)
    xs = torch.where((xs >= -1) & (xs <= w), xs.clamp(0, w - 1), -10.0)
    # align_corners=False: pixel coordinate p <-> normalised (2 p + 1) / size - 1
    ny = (2 * ys + 1) / h - 1  # (L, oh, gh)
    nx = (2 * xs + 1) / w - 1  # (L, ow, gw)
    n_roi = int(ys.shape[0])
    shape = (n_roi, oh, ow, gh, gw)  # the samples of a bin last: a contiguous reduction
    g = torch.stack(
        (nx[:, None, :, None, :].expand(shape), ny[:, :, None, :, None].expand(shape)), dim=-1
    )
    vals = F.grid_sample(
        feat,
        g.reshape(1, n_roi * oh * ow, gh * gw, 2),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )[0]  # (C, L*oh*ow, gh*gw)
    pooled = vals[..., 0] if gh * gw == 1 else vals.sum(-1) / (gh * gw)
    return pooled.view(c, n_roi, oh, ow).permute(1, 0, 2, 3)


def roi_align(
    input: Tensor,
    boxes: Tensor | Sequence[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoIAlign pooling (``torchvision.ops.roi_align``).

    Args:
        input: (N, C, H, W) features.
        boxes: (K, 5) ``(batch index, x1, y1, x2, y2)`` or a list of N per-image (K_i, 4)
            ``(x1, y1, x2, y2)`` tensors, in image coordinates.
        output_size: ``(oh, ow)`` bins per RoI (an int: square).
        spatial_scale: image-to-feature scale (1 / stride): a box coordinate ``x`` is the feature
            coordinate ``x * spatial_scale``.
        sampling_ratio: samples per bin along each axis; ``<= 0``: adaptive,
            ``ceil(roi_height / oh)`` by ``ceil(roi_width / ow)``.
        aligned: subtract half a pixel after scaling (``x * spatial_scale - 0.5``), so that box
            edges fall on pixel edges; ``False`` (legacy Mask R-CNN) instead forces RoI widths
            and heights to at least 1.

    Returns:
        (K, C, oh, ow), differentiable w.r.t. ``input``.
    """
    if input.ndim != 4:
        raise ValueError(f"input must be (N, C, H, W), got shape {tuple(input.shape)}")
    oh, ow = _pair(output_size)
    rois = convert_boxes_to_roi_format(boxes, input.dtype, input.device)
    return roi_align_rois(
        input, rois, oh, ow, float(spatial_scale), int(sampling_ratio), aligned, _MAX_ELEMENTS
    )


def roi_align_rois(
    input: Tensor,
    rois: Tensor,
    oh: int,
    ow: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    max_elements: int = 1 << 26,
) -> Tensor:
    """:func:`roi_align` of (K, 5) ``rois`` into ``oh x ow`` bins (TorchScript compiles it);
    ``max_elements`` bounds the values sampled per ``grid_sample`` call."""
    c = int(input.shape[1])
    rois = rois.detach()
    k = int(rois.shape[0])
    if k == 0:
        return input.new_zeros(0, c, oh, ow)
    offset = 0.5 if aligned else 0.0
    bidx = rois[:, 0].long()
    x1 = rois[:, 1] * spatial_scale - offset
    y1 = rois[:, 2] * spatial_scale - offset
    x2 = rois[:, 3] * spatial_scale - offset
    y2 = rois[:, 4] * spatial_scale - offset
    rw, rh = x2 - x1, y2 - y1
    if not aligned:
        rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)
    bw, bh = rw / ow, rh / oh
    if sampling_ratio > 0:
        gh = torch.full_like(bidx, int(sampling_ratio))
        gw = gh
    else:  # per-RoI grids; a RoI of size <= 0 (aligned) gets no sample and pools to 0
        gh = torch.ceil(bh).clamp(min=0).long()
        gw = torch.ceil(bw).clamp(min=0).long()
    n_gh, n_gw = int(gh.max()) + 1, int(gw.max()) + 1
    key = (bidx * n_gh + gh) * n_gw + gw  # one group per image and sampling grid
    outs: list[Tensor] = []
    where: list[Tensor] = []
    feat = input[:1]
    feat_b = -1
    keys: list[int] = torch.unique(key).tolist()
    for kv in keys:  # sorted: image by image
        sel = (key == kv).nonzero().squeeze(1)
        b = kv // (n_gh * n_gw)
        rest = kv % (n_gh * n_gw)
        g_h, g_w = rest // n_gw, rest % n_gw
        if g_h == 0 or g_w == 0:
            outs.append(input.new_zeros(int(sel.numel()), c, oh, ow))
            where.append(sel)
            continue
        if b != feat_b:  # grid_sample on the CPU is ~4x faster on channels-last features
            feat, feat_b = input[b : b + 1], b
            if feat.device.type == "cpu":
                feat = feat.contiguous(memory_format=torch.channels_last)
        per_roi = (c + 3) * oh * ow * g_h * g_w  # samples and grid
        step = max(1, max_elements // per_roi)
        for s in range(0, int(sel.numel()), step):
            part = sel[s : s + step]
            outs.append(
                _sample_group(
                    feat,
                    x1[part],
                    y1[part],
                    bw[part],
                    bh[part],
                    (oh, ow),
                    (g_h, g_w),
                )
            )
            where.append(part)
    order = torch.cat(where)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(k, device=order.device)
    return torch.cat(outs, dim=0)[inverse]


class RoIAlign(nn.Module):
    """:func:`roi_align` as a module (``torchvision.ops.RoIAlign``)."""

    def __init__(
        self,
        output_size: int | tuple[int, int],
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool = False,
    ) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Tensor | Sequence[Tensor]) -> Tensor:
        return roi_align(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )

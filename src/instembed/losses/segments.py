"""Instances of a batch of label images as flat segments, for scatter / index_add reductions.

No padded one-hot tensors: every selected pixel gets a segment id ``0..S-1`` unique over the
batch, from which per-instance sums, means and counts come by ``index_add``. Ids are assigned
in sorted (image, class, label) order, so the reductions do not depend on which integers the
label image uses (permuting instance ids permutes segments, nothing else).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from instembed.structures import IGNORE_INDEX


@dataclass
class Segments:
    """Flat view of the instances of a batch. P selected pixels, S segments, G groups.

    ``pixel``        (P,) index of each selected pixel into the flattened (B*H*W) batch
    ``seg``          (P,) segment id of each selected pixel
    ``counts``       (S,) pixels per segment (float)
    ``seg_image``    (S,) image index of each segment
    ``seg_label``    (S,) label id of each segment (0 only for a background segment)
    ``seg_class``    (S,) semantic class of each segment (0 without classes)
    ``seg_group``    (S,) group id: one group per image, or per (image, class) in per-class mode
    ``group_image``  (G,) image index of each group
    ``group_class``  (G,) class of each group
    """

    pixel: torch.Tensor
    seg: torch.Tensor
    counts: torch.Tensor
    seg_image: torch.Tensor
    seg_label: torch.Tensor
    seg_class: torch.Tensor
    seg_group: torch.Tensor
    group_image: torch.Tensor
    group_class: torch.Tensor
    num_images: int

    @property
    def num_segments(self) -> int:
        return int(self.counts.numel())

    @property
    def num_groups(self) -> int:
        return int(self.group_image.numel())

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """(P, D) per-pixel values -> (S, D) per-segment means."""
        return segment_sum(x, self.seg, self.num_segments) / self.counts.to(x.dtype).unsqueeze(1)


def segment_sum(x: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Sum rows of ``x`` (P, ...) into ``n`` bins by ``index`` (P,)."""
    out = torch.zeros((n, *x.shape[1:]), dtype=x.dtype, device=x.device)
    return out.index_add(0, index, x)


def check_labels(labels: torch.Tensor, name: str = "labels") -> torch.Tensor:
    if labels.ndim != 3:
        raise ValueError(f"{name} must be a (B, H, W) label image batch, got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"{name} must have an integer dtype, got {labels.dtype}")
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"{name} has negative ids (min {int(labels.min())}); 0 is background")
    return labels.long()


def check_spatial(t: torch.Tensor, labels: torch.Tensor, name: str, ndim: int = 4) -> None:
    if t.ndim != ndim or t.shape[0] != labels.shape[0] or t.shape[-2:] != labels.shape[-2:]:
        raise ValueError(
            f"{name} must be {'(B, C, H, W)' if ndim == 4 else f'{ndim}-d'} matching labels "
            f"{tuple(labels.shape)}, got {tuple(t.shape)}"
        )


def _compact(key: torch.Tensor, key_space: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted unique values of ``key`` (N,) int64 in [0, key_space) and the inverse index.

    A bincount over the key space (linear time) when it is small, else ``torch.unique``.
    """
    if key_space <= max(4 * key.numel(), 1 << 20):
        present = torch.bincount(key, minlength=key_space) > 0
        remap = torch.cumsum(present, 0) - 1
        return present.nonzero().squeeze(1), remap[key]
    return torch.unique(key, return_inverse=True)


def find_segments(
    labels: torch.Tensor,
    ignore: torch.Tensor | None = None,
    *,
    include_background: bool = False,
    semantic: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Segments:
    """Segments of ``labels`` (B, H, W) int, 0 = background.

    ``ignore`` (B, H, W) bool drops pixels. ``include_background`` makes each image's label-0
    pixels one segment. ``semantic`` (B, H, W) int: per-class mode, an instance is a
    (class, label) pair, groups are (image, class), pixels of class ``ignore_index`` dropped.
    """
    labels = check_labels(labels)
    b = labels.shape[0]
    flat = labels.reshape(-1)
    valid = torch.ones_like(flat, dtype=torch.bool)
    if ignore is not None:
        if ignore.shape != labels.shape:
            raise ValueError(f"ignore shape {tuple(ignore.shape)} != labels {tuple(labels.shape)}")
        valid &= ~ignore.reshape(-1).bool()
    if not include_background:
        valid &= flat > 0
    image = torch.arange(b, device=flat.device).repeat_interleave(flat.numel() // max(b, 1))
    if semantic is not None:
        if semantic.shape != labels.shape:
            raise ValueError(
                f"semantic shape {tuple(semantic.shape)} != labels {tuple(labels.shape)}"
            )
        cls = semantic.reshape(-1).long()
        valid &= cls != ignore_index
        num_classes = int(cls[valid].max()) + 1 if valid.any() else 1
    else:
        cls = torch.zeros_like(flat)
        num_classes = 1
    pixel = valid.nonzero().squeeze(1)
    nl = int(flat.max()) + 1 if flat.numel() else 1
    key = (image[pixel] * num_classes + cls[pixel]) * nl + flat[pixel]
    ukey, seg = _compact(key, b * num_classes * nl)
    counts = torch.bincount(seg, minlength=ukey.numel()).float()
    seg_label = ukey % nl
    gkey = ukey // nl
    ugroup, seg_group = _compact(gkey, b * num_classes)
    return Segments(
        pixel=pixel,
        seg=seg,
        counts=counts,
        seg_image=gkey // num_classes,
        seg_label=seg_label,
        seg_class=gkey % num_classes,
        seg_group=seg_group,
        group_image=ugroup // num_classes,
        group_class=ugroup % num_classes,
        num_images=b,
    )


def pixels_of(embedding: torch.Tensor, segs: Segments, pixel: torch.Tensor | None = None):
    """(P, E) rows of ``embedding`` (B, E, H, W) at the selected pixels.

    A per-class embedding (B, K, E, H, W) gives each pixel the slice of its segment's class.
    """
    pixel = segs.pixel if pixel is None else pixel
    if embedding.ndim == 4:
        b, e = embedding.shape[:2]
        flat = embedding.permute(0, 2, 3, 1).reshape(-1, e)
        return flat[pixel]
    b, k, e = embedding.shape[:3]
    flat = embedding.permute(0, 3, 4, 1, 2).reshape(-1, k, e)
    cls = segs.seg_class[segs.seg]
    if cls.numel() and int(cls.max()) >= k:
        raise ValueError(f"class id {int(cls.max())} >= K = {k} of the per-class embedding")
    return flat[pixel, cls]


def reduce_groups(per_group: torch.Tensor, segs: Segments) -> torch.Tensor:
    """(G,) group values -> scalar: mean over each image's groups, then mean over the B images.

    An image without any group contributes 0 and still counts in the batch mean.
    """
    b = segs.num_images
    dev, dt = per_group.device, per_group.dtype
    ng = torch.zeros(b, device=dev, dtype=dt).index_add(
        0, segs.group_image, torch.ones_like(per_group)
    )
    tot = torch.zeros(b, device=dev, dtype=dt).index_add(0, segs.group_image, per_group)
    per_image = tot / ng.clamp(min=1)
    return per_image.sum() / max(b, 1)

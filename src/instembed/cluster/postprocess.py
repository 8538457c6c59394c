"""Post-processing of label images: minimum size, hole filling, sequential relabelling, scores.

Label images are (H, W) int64 tensors, 0 = background, positive ids = instances.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

SCORE_MODES = ("seed", "foreground", "product", "constant")


def relabel_sequential(
    labels: Tensor, min_size: int = 0, max_id: int | None = None
) -> tuple[Tensor, Tensor]:
    """Renumber the instances 1..N in increasing order of their old ids, optionally dropping the
    instances with fewer than ``min_size`` pixels first (same as :func:`remove_small_instances`
    then relabelling, in one pass).

    Ids up to a few times the pixel count are relabelled through a lookup table built from one
    ``bincount`` (linear time); larger ids fall back to ``torch.unique`` (a sort).

    Args:
        labels: (H, W) int, 0 = background.
        min_size: instances with fewer pixels become background (<= 1: none removed).
        max_id: the largest id when the caller knows it (labels in [0, max_id]; saves a pass);
            checked, a larger id falls back to the general path.

    Returns:
        new labels (H, W) int64 and old_ids (N,) (old id of new id i+1). When the int64 input is
        already sequential (ids 1..N all present and kept) it is returned as is, not copied.
    """
    flat = labels.reshape(-1).to(torch.long)
    if flat.numel() == 0:
        return labels.to(torch.long), torch.zeros(0, dtype=torch.long, device=labels.device)
    if max_id is not None and 0 <= max_id <= max(1 << 16, 4 * flat.numel()):
        counts = torch.bincount(flat, minlength=max_id + 1)
        if counts.numel() == max_id + 1:
            return _relabel_counts(flat, counts, min_size, labels.shape)
    lo, hi = torch.aminmax(flat)
    lo_i, hi_i = int(lo.item()), int(hi.item())
    if lo_i < 0:
        raise ValueError(f"labels must be >= 0 (0 = background), found {lo_i}")
    if hi_i > max(1 << 16, 4 * flat.numel()):
        return _relabel_unique(flat, min_size, labels.shape)
    return _relabel_counts(flat, torch.bincount(flat, minlength=hi_i + 1), min_size, labels.shape)


def _relabel_counts(
    flat: Tensor, counts: Tensor, min_size: int, shape: list[int]
) -> tuple[Tensor, Tensor]:
    # counts: (max id + 1,) pixels per id
    keep = counts >= max(min_size, 1)
    keep[0] = False
    old_ids = keep.nonzero().squeeze(1)
    if old_ids.numel() == counts.numel() - 1:  # ids 1..max all present and kept: sequential
        return flat.reshape(shape), old_ids
    lut = torch.zeros(counts.numel(), dtype=torch.long, device=flat.device)
    lut[old_ids] = torch.arange(1, old_ids.numel() + 1, dtype=torch.long, device=flat.device)
    return lut.index_select(0, flat).reshape(shape), old_ids


def _relabel_unique(flat: Tensor, min_size: int, shape: list[int]) -> tuple[Tensor, Tensor]:
    # ids far above the pixel count: sort instead of a lookup table indexed by id
    ids, inverse, counts = torch.unique(flat, return_inverse=True, return_counts=True)
    keep = (ids > 0) & (counts >= max(min_size, 1))
    new_id = torch.cumsum(keep.to(torch.long), 0) * keep
    return new_id.index_select(0, inverse).reshape(shape), ids[keep]


def remove_small_instances(labels: Tensor, min_size: int) -> Tensor:
    """Set instances with fewer than ``min_size`` pixels to background (ids are kept).

    Args:
        labels: (H, W) int, 0 = background.
    """
    if min_size <= 1 or labels.numel() == 0:
        return labels
    flat = labels.reshape(-1).to(torch.long)
    if int(flat.max().item()) > max(1 << 16, 4 * flat.numel()):
        ids, inverse, counts = torch.unique(flat, return_inverse=True, return_counts=True)
        small = (counts < min_size) & (ids > 0)
        return torch.where(small.index_select(0, inverse).reshape(labels.shape), 0, labels)
    counts = torch.bincount(flat, minlength=1)
    small = counts < min_size
    small[0] = False
    return torch.where(small[labels], torch.zeros_like(labels), labels)


def piece_ids(labels: Tensor) -> Tensor:
    """The 8-connected pieces of each instance of a label image: (H, W) int64, 0 on the
    background, else the raster index + 1 of the first pixel (in raster order) of the pixel's
    piece. Two pixels share an id iff they have the same label and an 8-connected path of that
    label joins them.

    Scriptable, torch only, on the foreground pixels: the pairs of same-label neighbours are the
    edges of a graph whose components are found by min-label hooking with full pointer jumping
    (Shiloach & Vishkin 1982): each pixel points to a pixel of its piece with a smaller index;
    every edge hooks the target of one end onto the target of the other (the smaller wins), then
    every pointer jumps to its target's target until none moves; repeated until no edge joins two
    targets.
    """
    h, w = labels.shape[0], labels.shape[1]
    lab = labels.to(torch.long)
    flat = lab.reshape(-1)
    out = torch.zeros(h * w, dtype=torch.long, device=labels.device)
    pix = (flat > 0).nonzero().squeeze(1)  # (M,) raster indices of the foreground
    m = pix.numel()
    if m == 0:
        return out.reshape(h, w)
    ordinal = torch.full((h * w,), -1, dtype=torch.long, device=labels.device)
    ordinal[pix] = torch.arange(m, dtype=torch.long, device=labels.device)
    ordinal = ordinal.reshape(h, w)
    us: list[Tensor] = []
    vs: list[Tensor] = []
    # 4 of the 8 neighbours (right, down, down-right, down-left): each pair once
    for dy, dx in [(0, 1), (1, 0), (1, 1), (1, -1)]:
        x0, x1 = max(0, -dx), w - max(0, dx)
        a, b = ordinal[0 : h - dy, x0:x1], ordinal[dy:h, x0 + dx : x1 + dx]
        ok = (a >= 0) & (lab[0 : h - dy, x0:x1] == lab[dy:h, x0 + dx : x1 + dx])
        us.append(a[ok])
        vs.append(b[ok])
    u, v = torch.cat(us), torch.cat(vs)
    parent = torch.arange(m, dtype=torch.long, device=labels.device)
    changed = True
    while changed:
        pu, pv = parent.index_select(0, u), parent.index_select(0, v)
        before = parent.clone()
        parent = parent.scatter_reduce(0, pu, pv, "amin", include_self=True)
        parent = parent.scatter_reduce(0, pv, pu, "amin", include_self=True)
        jumping = True
        while jumping:
            nxt = parent.index_select(0, parent)
            jumping = not torch.equal(nxt, parent)
            parent = nxt
        changed = not torch.equal(parent, before)
    out[pix] = pix.index_select(0, parent) + 1
    return out.reshape(h, w)


def main_pieces(labels: Tensor) -> Tensor:
    """Each instance of a label image reduced to its pixels in its main piece of foreground:
    the 8-connected component of the foreground (all instances together) that holds most of
    its pixels; its pixels elsewhere become background (ids are kept, an instance is never
    emptied). Pieces of one instance joined through other instances' pixels (an object
    crossed or occluded by another) stay together. Of two main pieces of equal size, the one
    whose first pixel comes first in raster order stays. Scriptable.

    Args:
        labels: (H, W) int, 0 = background.
    """
    if labels.numel() == 0:
        return labels
    lab = labels.to(torch.long)
    flat = lab.reshape(-1)
    comp = piece_ids((lab > 0).to(torch.long)).reshape(-1)
    n = comp.numel()
    _, inverse, counts = torch.unique(
        flat * (n + 1) + comp, sorted=True, return_inverse=True, return_counts=True
    )
    size = counts.index_select(0, inverse)  # pixels of the instance in the pixel's component
    key = size * (n + 1) + (n + 1 - comp)  # the largest share first, ties: the earlier piece
    best = torch.zeros(int(flat.max().item()) + 1, dtype=torch.long, device=labels.device)
    best = best.scatter_reduce(0, flat, key, "amax", include_self=True)
    keep = (key == best.index_select(0, flat)) & (flat > 0)
    return torch.where(keep, flat, torch.zeros_like(flat)).reshape(labels.shape).to(labels.dtype)


def fill_holes(labels: Tensor) -> Tensor:
    """Fill background regions enclosed by a single instance with that instance.

    A hole is a 4-connected background component that does not touch the image border and whose
    4-neighbours all belong to one instance.

    Args:
        labels: (H, W) int, 0 = background.
    """
    from scipy import ndimage

    lab = labels.detach().cpu().numpy()
    bg, n = ndimage.label(lab == 0)
    if n == 0:
        return labels
    touching = np.zeros(n + 1, dtype=bool)
    touching[np.unique(np.concatenate([bg[0], bg[-1], bg[:, 0], bg[:, -1]]))] = True
    # (background component, neighbouring instance) pairs along the 4 directions
    pairs = []
    for a, b in (
        (bg[1:], lab[:-1]),
        (bg[:-1], lab[1:]),
        (bg[:, 1:], lab[:, :-1]),
        (bg[:, :-1], lab[:, 1:]),
    ):
        sel = (a > 0) & (b > 0)
        pairs.append(np.stack([a[sel], b[sel]], 1))
    pairs = np.unique(np.concatenate(pairs), axis=0)
    if pairs.shape[0] == 0:
        return labels
    n_neigh = np.bincount(pairs[:, 0], minlength=n + 1)
    fill = np.zeros(n + 1, dtype=lab.dtype)
    fill[pairs[:, 0]] = pairs[:, 1]
    ok = (n_neigh == 1) & ~touching
    ok[0] = False
    fill[~ok] = 0
    out = np.where(bg > 0, fill[bg], lab)
    return torch.as_tensor(out, dtype=labels.dtype, device=labels.device)


def instance_scores(
    labels: Tensor,
    n: int,
    mode: str = "seed",
    seed_scores: Tensor | None = None,
    foreground_prob: Tensor | None = None,
) -> Tensor:
    """One score per instance, used to rank detections (COCO AP).

    Modes: ``"seed"`` the seed confidence of the instance (``seed_scores``), ``"foreground"`` the
    mean foreground probability over its pixels, ``"product"`` their product, ``"constant"`` 1.
    A mode whose input is missing falls back to the other input, then to 1.

    Args:
        labels: (H, W) int64, ids 1..n.
        n: number of instances.
        seed_scores: (n,) or None.
        foreground_prob: (H, W) in [0, 1] or None.

    Returns:
        (n,) float32.
    """
    # SCORE_MODES, spelt out: TorchScript reads no global tuple
    if mode not in ("seed", "foreground", "product", "constant"):
        raise ValueError(
            f"score mode must be one of ('seed', 'foreground', 'product', 'constant'), got '{mode}'"
        )
    ones = torch.ones(n, dtype=torch.float32, device=labels.device)
    fg_mean: Tensor | None = None
    need_fg = mode in ("foreground", "product") or (mode == "seed" and seed_scores is None)
    if foreground_prob is not None and need_fg:
        flat = labels.reshape(-1)
        sums = torch.zeros(n + 1, dtype=torch.float64, device=labels.device)
        sums.index_add_(0, flat, foreground_prob.reshape(-1).to(torch.float64))
        counts = torch.bincount(flat, minlength=n + 1).clamp(min=1)
        fg_mean = (sums / counts)[1 : n + 1].to(torch.float32)
    seed: Tensor | None = None
    if seed_scores is not None:
        seed = seed_scores.to(torch.float32).reshape(-1)[:n]
    if mode == "constant":
        return ones
    if mode == "seed":
        return seed if seed is not None else (fg_mean if fg_mean is not None else ones)
    if mode == "foreground":
        return fg_mean if fg_mean is not None else (seed if seed is not None else ones)
    a = seed if seed is not None else ones
    b = fg_mean if fg_mean is not None else ones
    return a * b


def finish_partition(
    labels: Tensor,
    centers: Tensor,
    seed_scores: Tensor | None,
    min_size: int,
    score_mode: str,
    foreground_prob: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The post-processing of a dense method's partition, shared by :func:`cluster_embeddings`
    and the TorchScript exporters (scriptable; ``fill_holes`` is applied before it, eagerly):
    instances under ``min_size`` pixels removed and ids made sequential in one pass (ids are at
    most the number of centres), centres and seed scores taken along, one score per instance
    (``score_mode``).

    Returns:
        labels (H, W) int64 ids 1..N, scores (N,) float32, centers (N, D).
    """
    labels, old = relabel_sequential(labels, min_size, centers.shape[0])
    n = old.numel()
    idx = (old - 1).clamp(min=0)
    centers = centers.index_select(0, idx) if centers.shape[0] > 0 else centers[:0]
    if seed_scores is not None:
        if seed_scores.numel() > 0:
            seed_scores = seed_scores.index_select(0, idx)
    scores = instance_scores(labels, n, score_mode, seed_scores, foreground_prob)
    return labels, scores, centers

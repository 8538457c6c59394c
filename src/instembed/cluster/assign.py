"""Nearest-centre assignment of many pixels to few centres, fast and memory-bounded.

Every grouping method ends the same way: each foreground pixel goes to its nearest centre
(an instance centre in embedding space, or a predicted object centre in the image plane). A dense
(pixels x centres) table costs N*K memory and time; :func:`assign_pixels` avoids most of it:

1. the pixels of a coarse grid (every ``stride``-th row and column) are assigned exactly, by
   brute force in chunks (N/stride^2 x K);
2. every other pixel takes the label of the grid pixel at the top-left of its block as a
   *guess* g and computes its distance r to that one centre only;
3. the guess is provably the nearest centre when r is below half the distance from c_g to the
   closest other centre (triangle inequality; with per-centre scales the bound is adapted, see
   :func:`guaranteed_radius`); the few pixels that fail the test (object borders, outliers) are
   assigned by brute force.

The result is the exact argmin (up to float rounding of near ties). Temporary memory is bounded
by ``chunk_elements``, never by pixels x centres. Points are held as (D, N) (one contiguous row
per dimension) so that every step is a vectorised pass over N values. All functions compile with
``torch.jit.script`` and follow the device of their inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor


def foreground_points(embedding: Tensor, foreground: Tensor) -> tuple[Tensor, Tensor]:
    """Gather the embeddings of the foreground pixels.

    Args:
        embedding: (E, H, W) float.
        foreground: (H, W) bool.

    Returns:
        points (E, N) (one row per dimension) and flat_index (N,) int64, the raster index
        y*W + x of each point, increasing.
    """
    e = embedding.shape[0]
    flat_index = foreground.reshape(-1).nonzero().squeeze(1)
    points = embedding.reshape(e, -1).index_select(1, flat_index)
    return points, flat_index


def expand_scale(scale: Tensor | None, centers: Tensor) -> Tensor:
    """Per-centre metric weights as a (K, 1) or (K, D) tensor (ones when ``scale`` is None).

    Args:
        scale: None, (K,), (K, 1) or (K, D).
        centers: (K, D).
    """
    k = centers.shape[0]
    if scale is None:
        return torch.ones(k, 1, dtype=centers.dtype, device=centers.device)
    if scale.dim() == 1:
        scale = scale.unsqueeze(1)
    if scale.shape[0] != k or (scale.shape[1] != 1 and scale.shape[1] != centers.shape[1]):
        raise ValueError(
            f"scale must have shape (K,), (K, 1) or (K, D) with K, D = {k}, {centers.shape[1]}; "
            f"got {list(scale.shape)}"
        )
    return scale.to(centers.dtype)


def scaled_sq_distance(points: Tensor, centers: Tensor, index: Tensor, scale: Tensor) -> Tensor:
    """Squared scaled distance of each point to its assigned centre, without any (N x K) table.

    Args:
        points: (D, N); centers: (K, D); index: (N,) int64; scale: (K, 1) or (K, D).

    Returns:
        (N,) ``sum_j scale[index, j] * (points[j] - centers[index, j])^2``.
    """
    d = points.shape[0]
    acc = torch.zeros(points.shape[1], dtype=points.dtype, device=points.device)
    per_dim = scale.shape[1] > 1
    for j in range(d):
        diff = points[j] - centers[:, j].index_select(0, index)
        if per_dim:
            acc.addcmul_(diff * scale[:, j].index_select(0, index), diff)
        else:
            acc.addcmul_(diff, diff)
    if not per_dim:
        acc = acc * scale[:, 0].index_select(0, index)
    return acc


def _brute(points: Tensor, centers: Tensor, sc: Tensor, chunk_elements: int) -> Tensor:
    # points (D, N) -> index (N,)
    d, n = points.shape
    k = centers.shape[0]
    index = torch.empty(n, dtype=torch.long, device=points.device)
    if n == 0 or k == 1:
        return index.zero_()
    # shift the origin to the centres' mean: distances are unchanged, rounding error smaller
    origin = centers.mean(0)
    c = centers - origin.unsqueeze(0)
    if sc.shape[1] == 1:
        s = sc[:, 0]
        same = bool((s == s[0]).all().item())
        if same:
            # argmin_k |x - c_k|^2 = argmin_k (|c_k|^2 - 2 c_k.x)
            weight = -2.0 * c
            bias = (c * c).sum(1)
        else:
            # q2 = s_k |x|^2 - 2 s_k c_k.x + s_k |c_k|^2
            weight = torch.cat([-2.0 * s.unsqueeze(1) * c, s.unsqueeze(1)], 1)  # (K, D+1)
            bias = s * (c * c).sum(1)
    else:
        same = False
        weight = torch.cat([-2.0 * sc * c, sc], 1)  # (K, 2D)
        bias = (sc * c * c).sum(1)
    step = max(1, chunk_elements // k)
    for start in range(0, n, step):
        x = points[:, start : start + step] - origin.unsqueeze(1)
        if same:
            feats = x
        elif sc.shape[1] == 1:
            feats = torch.cat([x, (x * x).sum(0, keepdim=True)], 0)
        else:
            feats = torch.cat([x, x * x], 0)
        score = torch.addmm(bias.unsqueeze(1), weight, feats)  # (K, chunk)
        index[start : start + step] = score.min(0).indices
    return index


def nearest_center(
    points: Tensor, centers: Tensor, scale: Tensor | None = None, chunk_elements: int = 1 << 21
) -> tuple[Tensor, Tensor]:
    """Nearest centre of each point by a chunked matrix product (no pixel structure needed).

    ``q2_k(x) = sum_j scale[k, j] (x_j - c_kj)^2``; the chosen distance is recomputed exactly.

    Args:
        points: (N, D) float; centers: (K, D), K >= 1; scale: None, (K,), (K, 1) or (K, D).
        chunk_elements: at most this many entries of the (K x chunk) score table at a time.

    Returns:
        index (N,) int64 in [0, K) and q2 (N,).
    """
    if centers.dim() != 2 or points.dim() != 2 or centers.shape[1] != points.shape[1]:
        raise ValueError(
            f"points (N, D) and centers (K, D) must share D; got {list(points.shape)} and "
            f"{list(centers.shape)}"
        )
    if centers.shape[0] == 0:
        raise ValueError("nearest_center needs at least one centre, got K = 0")
    centers = centers.to(points.dtype)
    sc = expand_scale(scale, centers)
    pts = points.t()
    index = _brute(pts, centers, sc, chunk_elements)
    return index, scaled_sq_distance(pts, centers, index, sc)


def guaranteed_radius(centers: Tensor, scale: Tensor | None = None) -> Tensor:
    """Per centre g, a Euclidean radius R_g such that every x with |x - c_g| <= R_g has c_g as
    its nearest centre in the scaled metric.

    With a = sqrt(max_j s_gj) and b_k = sqrt(min_j s_kj): q_g(x) <= a r and
    q_k(x) >= b_k (|c_g - c_k| - r) (triangle inequality), so c_g wins when
    r <= b_k |c_g - c_k| / (a + b_k) for every k != g. Without scales: half the distance to the
    closest other centre.

    Args:
        centers: (K, D); scale: None, (K,), (K, 1) or (K, D).

    Returns:
        (K,) radii (inf when K = 1).
    """
    k = centers.shape[0]
    sc = expand_scale(scale, centers)
    a = sc.max(1).values.sqrt()
    b = sc.min(1).values.sqrt()
    diff = centers.unsqueeze(1) - centers.unsqueeze(0)
    dist = (diff * diff).sum(2).sqrt()  # (K, K)
    bound = b.unsqueeze(0) * dist / (a.unsqueeze(1) + b.unsqueeze(0)).clamp(min=1e-30)
    eye = torch.eye(k, dtype=torch.bool, device=centers.device)
    bound = bound.masked_fill(eye, float("inf"))
    # a little slack against the rounding of the distances computed later
    return bound.min(1).values * (1.0 - 1e-4)


def _block_distance(
    emb: Tensor, cen: Tensor, sc_rows: Tensor | None, rows: int, group: int
) -> Tensor:
    """Squared (scaled) distance of each pixel of ``emb`` (D, rows*group, W) to the centre of its
    block row ``cen`` (D, rows, W), broadcast over the ``group`` image rows of each block row."""
    d, _, w = emb.shape
    acc = torch.zeros(rows, group, w, dtype=emb.dtype, device=emb.device)
    for j in range(d):
        diff = emb[j].reshape(rows, group, w) - cen[j].reshape(rows, 1, w)
        if sc_rows is None:
            acc.addcmul_(diff, diff)
        else:
            acc.addcmul_(diff * sc_rows[j].reshape(rows, 1, w), diff)
    return acc.reshape(rows * group, w)


def assign_pixels(
    embedding: Tensor,
    foreground: Tensor,
    centers: Tensor,
    scale: Tensor | None = None,
    stride: int = 4,
    chunk_elements: int = 1 << 21,
) -> tuple[Tensor, Tensor]:
    """Nearest centre of every foreground pixel (see the module docstring for the method).

    Args:
        embedding: (D, H, W) float, the point of each pixel.
        foreground: (H, W) bool.
        centers: (K, D), K >= 1.
        scale: None, (K,), (K, 1) or (K, D) per-centre metric weights.
        stride: grid step for the guesses (1 = brute force everywhere).
        chunk_elements: memory bound of temporary tables.

    Returns:
        index (H, W) int64, the nearest centre in [0, K) (-1 outside the foreground), and
        q2 (H, W), the squared scaled distance to it (0 outside the foreground).
    """
    d, h, w = embedding.shape
    if centers.dim() != 2 or centers.shape[1] != d or centers.shape[0] == 0:
        raise ValueError(f"centers must be (K >= 1, {d}), got {list(centers.shape)}")
    if foreground.shape != (h, w):
        raise ValueError(f"foreground must be ({h}, {w}), got {list(foreground.shape)}")
    centers = centers.to(embedding.dtype)
    sc = expand_scale(scale, centers)
    k = centers.shape[0]
    index = torch.full((h, w), -1, dtype=torch.long, device=embedding.device)
    q2 = torch.zeros((h, w), dtype=embedding.dtype, device=embedding.device)
    if k == 1 or stride <= 1 or h < 2 * stride or w < 2 * stride:
        points, flat = foreground_points(embedding, foreground)
        idx = _brute(points, centers, sc, chunk_elements)
        index.view(-1)[flat] = idx
        q2.view(-1)[flat] = scaled_sq_distance(points, centers, idx, sc)
        return index, q2
    # 1. exact labels on the coarse grid (-1 = background)
    gfg = foreground[::stride, ::stride]
    gh, gw = gfg.shape[0], gfg.shape[1]
    gpts, gflat = foreground_points(embedding[:, ::stride, ::stride], gfg)
    glab = torch.full((gh * gw,), -1, dtype=torch.long, device=embedding.device)
    glab[gflat] = _brute(gpts, centers, sc, chunk_elements)
    # 2. guess of every pixel: the label of the grid pixel at the top-left of its block; one
    #    centre per (block row, column), broadcast over the block's image rows
    guess_rows = glab.view(gh, gw).repeat_interleave(stride, dim=1)[:, :w]  # (gh, W)
    has_guess_rows = guess_rows >= 0
    guess_rows = guess_rows.clamp(min=0)
    flat_guess = guess_rows.reshape(-1)
    cen_rows = centers.t().contiguous().index_select(1, flat_guess).reshape(d, gh, w)
    unit = bool((sc == 1).all().item())
    per_dim = sc.shape[1] > 1
    sc_rows: Tensor | None = None
    if per_dim:
        sc_rows = sc.t().contiguous().index_select(1, flat_guess).reshape(d, gh, w)
    radius2 = guaranteed_radius(centers, sc).square().index_select(0, flat_guess)
    radius2 = radius2.reshape(gh, w)
    iso_rows = sc[:, 0].contiguous().index_select(0, flat_guess).reshape(gh, w)
    full = h // stride
    parts: list[tuple[int, int, int]] = [(0, full, stride)]
    if full < gh:
        parts.append((full, gh, h - full * stride))
    for b0, b1, group in parts:
        r0 = b0 * stride
        r1 = r0 + (b1 - b0) * group
        emb = embedding[:, r0:r1]
        rows = b1 - b0
        r2 = _block_distance(emb, cen_rows[:, b0:b1], None, rows, group)
        ok = foreground[r0:r1] & (
            r2.reshape(rows, group, w) <= radius2[b0:b1].reshape(rows, 1, w)
        ).reshape(rows * group, w)
        ok &= has_guess_rows[b0:b1].reshape(rows, 1, w).expand(rows, group, w).reshape(-1, w)
        g = guess_rows[b0:b1].reshape(rows, 1, w).expand(rows, group, w).reshape(-1, w)
        index[r0:r1] = torch.where(ok, g, index[r0:r1])
        if unit:
            qq = r2
        elif per_dim:
            srow = sc_rows[:, b0:b1] if sc_rows is not None else None
            qq = _block_distance(emb, cen_rows[:, b0:b1], srow, rows, group)
        else:
            qq = (r2.reshape(rows, group, w) * iso_rows[b0:b1].reshape(rows, 1, w)).reshape(-1, w)
        q2[r0:r1] = torch.where(ok, qq, q2[r0:r1])
    # 3. brute force for the foreground pixels whose guess is not certified
    bad = foreground & (index < 0)
    bpts, bflat = foreground_points(embedding, bad)
    if bflat.numel() > 0:
        bidx = _brute(bpts, centers, sc, chunk_elements)
        index.view(-1)[bflat] = bidx
        q2.view(-1)[bflat] = scaled_sq_distance(bpts, centers, bidx, sc)
    return index, q2

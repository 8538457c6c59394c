"""Nearest-centre assignment of many pixels to few centres, fast and memory-bounded.

Every grouping method ends the same way: each foreground pixel goes to its nearest centre
(an instance centre in embedding space, or a predicted object centre in the image plane). A dense
(pixels x centres) table costs N*K memory and time; :func:`assign_pixels` avoids most of it:

1. the pixels of a coarse grid (every ``stride``-th row and column) are assigned exactly; the
   grid itself is assigned the same way from a coarser grid, down to a few thousand pixels that
   are assigned by brute force in chunks (a pyramid of grids);
2. every other pixel takes the label of the grid pixel at the top-left of its block as a
   *guess* g and computes its distance r to that one centre only (in chunks of block rows, one
   dimension at a time, so the temporaries stay in cache);
3. the guess is provably the nearest centre when r is below half the distance from c_g to the
   closest other centre (triangle inequality; with per-centre scales the bound is adapted, see
   :func:`guaranteed_radius`);
4. the pixels that fail (object borders, outliers, centres with a close neighbour) try the other
   three corners of their block, then the few centres nearest to the best corner's centre,
   certified when no other centre can be nearer; what is still left is assigned by brute force.

:func:`assign_labels` writes the label image directly (nearest centre + 1, 0 for background and,
optionally, for pixels beyond a kernel threshold ``max_q2``) without a full-size distance map.

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


def _euclid_sq(points: Tensor, centers_t: Tensor, index: Tensor) -> Tensor:
    """(N,) squared Euclidean distance of points (D, N) to centres (D, K) chosen by index (N,)."""
    diff = points - centers_t.index_select(1, index)
    return diff.mul_(diff).sum(0)


def _refine(
    embedding: Tensor,
    foreground: Tensor,
    glab: Tensor,
    centers: Tensor,
    sc: Tensor,
    radius2: Tensor,
    stride: int,
    need_q2: bool,
    base: int,
    max_q2: float,
    chunk_pixels: int,
    chunk_elements: int,
) -> tuple[Tensor, Tensor]:
    """Exact nearest centre of every foreground pixel of ``embedding`` (D, H, W), given the exact
    labels ``glab`` (gh, gw) (-1 = background) of its grid ``[::stride, ::stride]``.

    1. every pixel tries the label of the grid pixel at the top-left of its block, certified by
       the guaranteed radius; computed in chunks of block rows of about ``chunk_pixels`` pixels
       (cache-sized temporaries);
    2. the pixels that fail try the other three corners of their block (on the compacted list
       of failed pixels, one candidate each);
    3. then the few centres nearest to the best corner centre, certified by the triangle
       inequality;
    4. the rest are compared with every centre (:func:`_brute`).

    Returns out (H, W) int64: nearest centre + ``base``, ``base - 1`` outside the foreground and
    where the scaled q2 is not below ``max_q2``; and, when ``need_q2``, q2 (H, W) the squared
    scaled distance to the chosen centre (0 outside the foreground; else an empty tensor).
    """
    d, h, w = embedding.shape
    gh, gw = glab.shape[0], glab.shape[1]
    dev = embedding.device
    centers_t = centers.t().contiguous()  # (D, K)
    unit = bool((sc == 1).all().item())
    per_dim = sc.shape[1] > 1
    sc_t = sc.t().contiguous()  # (S, K)
    cut = max_q2 < float("inf")
    want_q = need_q2 or cut
    guess_rows = glab.repeat_interleave(stride, dim=1)[:, :w]  # (gh, W)
    has_guess = guess_rows >= 0
    g_rows = guess_rows.clamp(min=0)
    out_rows = g_rows + base
    # a background guess never certifies: radius^2 = -1 < any r^2
    rad_rows = torch.where(
        has_guess,
        radius2.index_select(0, g_rows.reshape(-1)).reshape(gh, w),
        torch.full((gh, w), -1.0, dtype=embedding.dtype, device=dev),
    )
    out = torch.empty((h, w), dtype=torch.long, device=dev)
    q2 = torch.zeros((h, w) if need_q2 else (0, 0), dtype=embedding.dtype, device=dev)
    empty = torch.full((1, 1, 1), base - 1, dtype=torch.long, device=dev)
    full = h // stride
    step = max(1, chunk_pixels // (stride * w))
    parts: list[tuple[int, int, int]] = []
    for b0 in range(0, full, step):
        parts.append((b0, min(full, b0 + step), stride))
    if full < gh:
        parts.append((full, gh, h - full * stride))
    # centre of every guess, one gather for the whole level (D x gh x W, 1/stride of the image)
    cen_rows = centers_t.index_select(1, g_rows.reshape(-1)).reshape(d, gh, 1, w)
    bad = torch.empty((h, w), dtype=torch.bool, device=dev)
    diff = torch.empty(0, dtype=embedding.dtype, device=dev)
    for b0, b1, group in parts:
        nb = b1 - b0
        r0 = b0 * stride
        r1 = r0 + nb * group
        cen = cen_rows[:, b0:b1]
        emb = embedding[:, r0:r1].reshape(d, nb, group, w)
        # one dimension at a time: the (nb, group, W) temporaries stay in cache
        r2 = torch.zeros((nb, group, w), dtype=embedding.dtype, device=dev)
        if diff.shape != r2.shape:
            diff = torch.empty_like(r2)
        qq = r2
        if want_q and per_dim:
            qq = torch.zeros((nb, group, w), dtype=embedding.dtype, device=dev)
        for j in range(d):
            torch.sub(emb[j], cen[j], out=diff)
            r2.addcmul_(diff, diff)
            if want_q and per_dim:
                gf = g_rows[b0:b1].reshape(-1)
                qq.addcmul_(diff * sc_t[j].index_select(0, gf).reshape(nb, 1, w), diff)
        if want_q and not unit and not per_dim:
            gf = g_rows[b0:b1].reshape(-1)
            qq = r2 * sc_t[0].index_select(0, gf).reshape(nb, 1, w)
        fg = foreground[r0:r1].reshape(nb, group, w)
        ok = (r2 <= rad_rows[b0:b1].reshape(nb, 1, w)).logical_and_(fg)
        keep = ok & (qq < max_q2) if cut else ok
        torch.where(
            keep, out_rows[b0:b1].reshape(nb, 1, w), empty, out=out[r0:r1].view(nb, group, w)
        )
        if need_q2:
            torch.mul(qq, ok, out=q2[r0:r1].view(nb, group, w))
        torch.bitwise_xor(ok, fg, out=bad[r0:r1].view(nb, group, w))
    # 2. failed foreground pixels: the other corners of their block; the nearest tried centre
    #    (gb, at Euclidean distance^2 rb) is kept for step 3
    flat = bad.reshape(-1).nonzero().squeeze(1)
    pts = embedding.reshape(d, -1).index_select(1, flat)
    ys = torch.div(flat, w, rounding_mode="floor")
    by = torch.div(ys, stride, rounding_mode="floor")
    bx = torch.div(flat - ys * w, stride, rounding_mode="floor")
    gb = torch.zeros_like(flat)
    rb = torch.full(flat.shape, float("inf"), dtype=embedding.dtype, device=dev)
    gflat = glab.reshape(-1)
    out_flat = out.view(-1)
    for dy, dx in [(0, 0), (1, 0), (0, 1), (1, 1)]:
        if flat.numel() == 0:
            break
        cand = gflat.index_select(0, (by + dy).clamp(max=gh - 1) * gw + (bx + dx).clamp(max=gw - 1))
        has = cand >= 0
        cand = cand.clamp(min=0)
        r2c = torch.where(has, _euclid_sq(pts, centers_t, cand), rb)
        better = r2c < rb
        gb = torch.where(better, cand, gb)
        rb = torch.where(better, r2c, rb)
        if dy == 0 and dx == 0:
            continue  # the guess of step 1, known to fail
        ok = has & (r2c <= radius2.index_select(0, cand))
        sel = ok.nonzero().squeeze(1)
        if sel.numel() > 0:
            hit = flat.index_select(0, sel)
            hit_k = cand.index_select(0, sel)
            q_hit = rb  # placeholder, replaced below when the scaled distance is needed
            if want_q:
                q_hit = scaled_sq_distance(pts.index_select(1, sel), centers, hit_k, sc)
            _store(out_flat, q2, hit, hit_k, q_hit, base, need_q2, cut, max_q2)
            rest = (~ok).nonzero().squeeze(1)
            flat = flat.index_select(0, rest)
            pts = pts.index_select(1, rest)
            by = by.index_select(0, rest)
            bx = bx.index_select(0, rest)
            gb = gb.index_select(0, rest)
            rb = rb.index_select(0, rest)
    # 3. the M centres nearest to the best tried centre g; certified when no other centre can be
    #    nearer (q_k(x) >= b_min (|c_k - c_g| - r) with r = |x - c_g|, see guaranteed_radius)
    if flat.numel() > 0 and centers.shape[0] > 2:
        nbr, far = _neighbour_table(centers, 4)
        b_min = sc.min().clamp(min=0.0).sqrt()
        best_k = gb
        best_q = scaled_sq_distance(pts, centers, gb, sc)
        for m in range(nbr.shape[1]):
            cand = nbr[:, m].index_select(0, gb)
            qc = scaled_sq_distance(pts, centers, cand, sc)
            better = (qc < best_q) | ((qc == best_q) & (cand < best_k))
            best_k = torch.where(better, cand, best_k)
            best_q = torch.where(better, qc, best_q)
        slack = (far.index_select(0, gb) - rb.sqrt()).clamp(min=0.0) * b_min
        ok = best_q * (1.0 + 1e-4) < slack * slack
        sel = ok.nonzero().squeeze(1)
        if sel.numel() > 0:
            hit = flat.index_select(0, sel)
            _store(
                out_flat,
                q2,
                hit,
                best_k.index_select(0, sel),
                best_q.index_select(0, sel),
                base,
                need_q2,
                cut,
                max_q2,
            )
            rest = (~ok).nonzero().squeeze(1)
            flat = flat.index_select(0, rest)
            pts = pts.index_select(1, rest)
    # 4. brute force for the rest
    if flat.numel() > 0:
        bidx = _brute(pts, centers, sc, chunk_elements)
        qb = scaled_sq_distance(pts, centers, bidx, sc)
        _store(out_flat, q2, flat, bidx, qb, base, need_q2, cut, max_q2)
    return out, q2


def _store(
    out_flat: Tensor,
    q2: Tensor,
    where: Tensor,
    index: Tensor,
    q: Tensor,
    base: int,
    need_q2: bool,
    cut: bool,
    max_q2: float,
) -> None:
    value = index + base
    if cut:
        value = value.masked_fill(~(q < max_q2), base - 1)
    out_flat[where] = value
    if need_q2:
        q2.view(-1)[where] = q


def _neighbour_table(centers: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """For each centre its ``m`` nearest other centres (K, m) (fewer when K - 1 < m) and the
    Euclidean distance to the next one (K,) (inf when there is none)."""
    k = centers.shape[0]
    m = min(m, k - 1)
    diff = centers.unsqueeze(1) - centers.unsqueeze(0)
    dist = (diff * diff).sum(2).sqrt()
    dist = dist.masked_fill(torch.eye(k, dtype=torch.bool, device=centers.device), float("inf"))
    order = dist.argsort(1)
    nbr = order[:, :m]
    if m + 1 <= k - 1:
        far = dist.gather(1, order[:, m : m + 1]).squeeze(1)
    else:
        far = torch.full((k,), float("inf"), dtype=centers.dtype, device=centers.device)
    return nbr, far


def _assign(
    embedding: Tensor,
    foreground: Tensor,
    centers: Tensor,
    scale: Tensor | None,
    stride: int,
    chunk_elements: int,
    need_q2: bool,
    base: int,
    max_q2: float,
) -> tuple[Tensor, Tensor]:
    d, h, w = embedding.shape
    if centers.dim() != 2 or centers.shape[1] != d or centers.shape[0] == 0:
        raise ValueError(f"centers must be (K >= 1, {d}), got {list(centers.shape)}")
    if foreground.shape != (h, w):
        raise ValueError(f"foreground must be ({h}, {w}), got {list(foreground.shape)}")
    foreground = foreground.to(torch.bool)
    # a partition, not differentiable: no autograd graph (and the in-place passes need none)
    embedding = embedding.detach()
    centers = centers.detach().to(embedding.dtype)
    sc = expand_scale(None if scale is None else scale.detach(), centers)
    k = centers.shape[0]
    cut = max_q2 < float("inf")
    if k == 1 or stride <= 1 or h < 2 * stride or w < 2 * stride:
        out = torch.full((h, w), base - 1, dtype=torch.long, device=embedding.device)
        q2 = torch.zeros(
            (h, w) if need_q2 else (0, 0), dtype=embedding.dtype, device=embedding.device
        )
        points, flat = foreground_points(embedding, foreground)
        idx = _brute(points, centers, sc, chunk_elements)
        q = scaled_sq_distance(points, centers, idx, sc)
        _store(out.view(-1), q2, flat, idx, q, base, need_q2, cut, max_q2)
        return out, q2
    # a pyramid of grids (every stride^l-th row and column) down to a few thousand pixels: the
    # coarsest is assigned by brute force, each finer one from the labels of the next coarser
    # (integer powers by multiplication: TorchScript's int ** int is a float)
    levels = 1
    s_top = stride
    while (
        h >= 2 * s_top * stride and w >= 2 * s_top * stride and (h // s_top) * (w // s_top) > 4096
    ):
        levels += 1
        s_top *= stride
    gfg = foreground[::s_top, ::s_top]
    gh, gw = gfg.shape[0], gfg.shape[1]
    gpts, gflat = foreground_points(embedding[:, ::s_top, ::s_top], gfg)
    glab = torch.full((gh * gw,), -1, dtype=torch.long, device=embedding.device)
    glab[gflat] = _brute(gpts, centers, sc, chunk_elements)
    glab = glab.reshape(gh, gw)
    radius2 = guaranteed_radius(centers, sc).square()
    q2 = torch.zeros(0, dtype=embedding.dtype, device=embedding.device)
    s = s_top
    inf = float("inf")
    # pixels per chunk of the certification pass: the per-dimension temporaries stay in cache;
    # compiled, each elementwise op also stays below PyTorch's parallel grain size (32768), as
    # TorchScript cannot limit the intra-op threads (see instembed.cluster.threads); eager calls
    # of the clusterers run on one thread and take larger chunks (fewer operations to launch)
    chunk_pixels = 1 << 14 if torch.jit.is_scripting() else 1 << 16
    for lev in range(levels - 1, -1, -1):
        s = s // stride
        last = lev == 0
        glab, q2 = _refine(
            embedding[:, ::s, ::s],
            foreground[::s, ::s],
            glab,
            centers,
            sc,
            radius2,
            stride,
            need_q2 and last,
            base if last else 0,
            max_q2 if last else inf,
            chunk_pixels,
            chunk_elements,
        )
    return glab, q2


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
        q2 (H, W), the squared scaled distance to it (0 outside the foreground; no gradient).
    """
    return _assign(
        embedding, foreground, centers, scale, stride, chunk_elements, True, 0, float("inf")
    )


def assign_labels(
    embedding: Tensor,
    foreground: Tensor,
    centers: Tensor,
    scale: Tensor | None = None,
    stride: int = 4,
    max_q2: float = float("inf"),
    chunk_elements: int = 1 << 21,
) -> Tensor:
    """Label image of the nearest centres: what :func:`assign_pixels` computes, written directly
    as labels (no full-size distance map, no extra passes).

    Args:
        embedding: (D, H, W) float; foreground: (H, W) bool; centers: (K, D), K >= 1;
        scale: None, (K,), (K, 1) or (K, D).
        stride: grid step for the guesses (1 = brute force everywhere).
        max_q2: pixels whose squared scaled distance to their nearest centre is not below this
            become background (the kernel threshold of seeded clustering; inf: none).
        chunk_elements: memory bound of temporary tables.

    Returns:
        (H, W) int64: k + 1 for nearest centre k, 0 outside the foreground or beyond ``max_q2``.
    """
    out, _ = _assign(
        embedding, foreground, centers, scale, stride, chunk_elements, False, 1, max_q2
    )
    return out

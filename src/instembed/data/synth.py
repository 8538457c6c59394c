"""Synthetic scenes with exact instance and semantic ground truth.

One entry point, :func:`make_samples`, builds ``n`` :class:`~instembed.data.sample.Sample` of a
named kind. Every scene is drawn from its labels (labels first, then the image is rendered from
them), so the ground truth is exact by construction. Sample ``i`` uses its own generator
``numpy.random.default_rng([seed, i])``: the same ``(kind, size, seed, kw)`` gives the same
sample ``i`` whatever ``n`` is.

Kinds (see each ``_make_*`` docstring for its parameters):

==================  ==================  ============================================  ========
kind                instances           semantic                                      overlaps
==================  ==================  ============================================  ========
``dot_grid``        label image         0 background, 1 dot                           none
``touching_cells``  label image         0 background, 1 cell                          none
``leaf_rosettes``   label image         0 soil, 1 plant                               occlusion
``worms``           (N, H, W) stack     0 background, 1 worm                          yes
``street``          label image         :data:`STREET_CLASSES` (stuff + things)       occlusion
==================  ==================  ============================================  ========

``dot_grid`` is the "coloring dilemma" scene of Novotny et al., *Semi-convolutional operators for
instance segmentation*, ECCV 2018 (Fig. 3): identical dots on a regular grid, which a purely
convolutional (translation-equivariant) embedding cannot tell apart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from scipy import ndimage as ndi

from instembed.data.sample import Sample

log = logging.getLogger(__name__)

#: class names of the ``street`` kind, index = class id
STREET_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "sky",
    "car",
    "person",
    "sign",
)
STREET_STUFF: tuple[int, ...] = (0, 1, 2, 3)
STREET_THINGS: tuple[int, ...] = (4, 5, 6)


def make_samples(
    kind: str, n: int, size: tuple[int, int] = (64, 64), seed: int = 0, **kw
) -> list[Sample]:
    """Generate ``n`` synthetic Samples of ``kind`` with images of ``size = (H, W)``.

    ``kw`` are the kind's parameters (see ``_make_<kind>``); an unknown one raises ``TypeError``.
    Returns a list of validated Samples; ``sample.meta`` holds ``kind``, ``seed``, ``index`` and
    the kind's own facts (dot centres, class names, ...).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown synthetic kind {kind!r}; expected one of {sorted(KINDS)}")
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    h, w = _check_size(size)
    make = KINDS[kind]
    out = []
    for i in range(int(n)):
        rng = np.random.default_rng([int(seed), i])
        s = make(rng, h, w, **kw)
        s.meta.update(kind=kind, seed=int(seed), index=i)
        s.path = f"synth:{kind}:{seed}:{i}"
        out.append(s.validate())
    return out


def _check_size(size) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (H, W), got {size!r}") from None
    if h < 8 or w < 8:
        raise ValueError(f"size must be at least (8, 8), got {(h, w)}")
    return h, w


def _range(value, name: str) -> tuple[float, float]:
    """A scalar or a (lo, hi) pair, returned as (lo, hi)."""
    if np.isscalar(value):
        return float(value), float(value)
    lo, hi = value
    if hi < lo:
        raise ValueError(f"{name} range must be (lo, hi) with lo <= hi, got {value!r}")
    return float(lo), float(hi)


def _int_count(rng: np.random.Generator, value, name: str) -> int:
    lo, hi = _range(value, name)
    if lo < 0 or lo != int(lo) or hi != int(hi):
        raise ValueError(f"{name} must be a non-negative int or (lo, hi) ints, got {value!r}")
    return int(rng.integers(int(lo), int(hi) + 1))


def disc_offsets(radius: float) -> np.ndarray:
    """(K, 2) integer offsets ``(dy, dx)`` with ``dy**2 + dx**2 <= radius**2`` (a digital disc)."""
    r = int(np.floor(radius))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    keep = dy**2 + dx**2 <= radius**2
    return np.stack([dy[keep], dx[keep]], 1)


# --------------------------------------------------------------------------------------------
# dot grid (coloring dilemma)
# --------------------------------------------------------------------------------------------


def _make_dot_grid(
    rng: np.random.Generator,
    h: int,
    w: int,
    *,
    radius: float = 4.0,
    spacing: int | tuple[int, int] = 14,
    offset: str | tuple[int, int] | None = "random",
    jitter: int = 0,
    noise: float = 0.0,
    foreground: float = 1.0,
    background: float = 0.0,
) -> Sample:
    """Identical dots on a regular grid (Novotny et al. 2018, Fig. 3).

    Dot centres sit on integer pixels at ``offset + (i * sy, j * sx)`` (plus an optional integer
    ``jitter`` per dot, uniform in ``[-jitter, jitter]``), so every dot has exactly the same pixel
    shape: the digital disc ``dy**2 + dx**2 <= radius**2`` (its area is
    ``len(disc_offsets(radius))``). Only dots that lie entirely inside the image are drawn.

    ``offset``: ``"random"`` (default) draws the grid origin uniformly in ``[0, spacing)`` per
    image, ``None`` centres the grid, or give ``(oy, ox)``. ``noise`` adds Gaussian noise of that
    standard deviation to the image (labels unchanged). The image has 1 channel.
    """
    sy, sx = (spacing, spacing) if np.isscalar(spacing) else tuple(spacing)
    sy, sx, jitter = int(sy), int(sx), int(jitter)
    r = float(radius)
    if r < 0.5:
        raise ValueError(f"dot_grid radius must be >= 0.5, got {radius}")
    reach = int(np.floor(r)) + jitter
    if min(sy, sx) < 2 * reach + 2:
        raise ValueError(
            f"dot_grid spacing {(sy, sx)} too small for radius {r} and jitter {jitter}: "
            f"dots would touch (need spacing >= {2 * reach + 2})"
        )
    if offset == "random":
        oy, ox = int(rng.integers(0, sy)), int(rng.integers(0, sx))
    elif offset is None:
        ny, nx = (h - 1 - 2 * reach) // sy + 1, (w - 1 - 2 * reach) // sx + 1
        oy = reach + (h - 1 - 2 * reach - (ny - 1) * sy) // 2
        ox = reach + (w - 1 - 2 * reach - (nx - 1) * sx) // 2
    else:
        oy, ox = (int(v) for v in offset)
    disc = disc_offsets(r)
    rr = int(np.floor(r))
    labels = np.zeros((h, w), np.int32)
    centres = []
    for cy in range(oy % sy, h, sy):
        for cx in range(ox % sx, w, sx):
            y, x = cy, cx
            if jitter:
                y += int(rng.integers(-jitter, jitter + 1))
                x += int(rng.integers(-jitter, jitter + 1))
            if y - rr < 0 or x - rr < 0 or y + rr >= h or x + rr >= w:
                continue
            centres.append((y, x))
            labels[y + disc[:, 0], x + disc[:, 1]] = len(centres)
    image = np.where(labels > 0, foreground, background).astype(np.float32)
    if noise > 0:
        image += rng.normal(0.0, noise, image.shape).astype(np.float32)
    n = len(centres)
    return Sample(
        image=image[None],
        instances=labels,
        semantic=(labels > 0).astype(np.int64),
        classes=np.ones(n, np.int64),
        meta={
            "centers": np.asarray(centres, np.int64).reshape(n, 2),
            "radius": r,
            "spacing": (sy, sx),
            "offset": (oy % sy, ox % sx),
            "dot_area": len(disc),
            "class_names": ("background", "dot"),
        },
    )


# --------------------------------------------------------------------------------------------
# touching cells
# --------------------------------------------------------------------------------------------


def _place_points(
    rng: np.random.Generator,
    n: int,
    h: int,
    w: int,
    margin: float,
    min_dist: float,
    max_dist: float | None = None,
) -> np.ndarray:
    """``n`` points inside the margin, pairwise at least ``min_dist`` apart (dart throwing).

    With ``max_dist`` the points grow as one colony: each new point lies at most ``max_dist``
    from a point placed before it.
    """
    pts: list[tuple[float, float]] = []
    tries = 0
    while len(pts) < n:
        tries += 1
        if tries > 300 * max(n, 1):
            raise ValueError(
                f"could not place {n} objects at least {min_dist:.1f} px apart in a {h}x{w} "
                "image; ask for fewer objects, smaller ones, or a larger size"
            )
        if max_dist is None or not pts:
            lo = (margin, margin) if max_dist is None else (0.3 * h, 0.3 * w)
            hi = (h - 1 - margin, w - 1 - margin) if max_dist is None else (0.7 * h, 0.7 * w)
            p = (rng.uniform(lo[0], hi[0]), rng.uniform(lo[1], hi[1]))
        else:
            q = pts[int(rng.integers(0, len(pts)))]
            d, a = rng.uniform(min_dist, max_dist), rng.uniform(0, 2 * np.pi)
            p = (q[0] + d * np.sin(a), q[1] + d * np.cos(a))
            if not (margin <= p[0] <= h - 1 - margin and margin <= p[1] <= w - 1 - margin):
                continue
        if all((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2 >= min_dist**2 for q in pts):
            pts.append(p)
    return np.asarray(pts, np.float64).reshape(n, 2)


def _make_touching_cells(
    rng: np.random.Generator,
    h: int,
    w: int,
    *,
    n_cells: int | tuple[int, int] = (6, 12),
    radius: float | tuple[float, float] = (6.0, 9.0),
    border_contrast: float = 0.25,
    texture: float = 0.3,
    noise: float = 0.04,
    blur: float = 0.7,
) -> Sample:
    """Convex blobs packed so that neighbours share borders, each with its own texture.

    Cell ``k`` is the set of pixels closer to its seed than to any other seed (its Voronoi cell)
    that also lie inside an ellipse of semi-axes drawn from ``radius`` around the seed. Seeds grow
    as one colony, each new seed ``1.2``-``1.6 * radius_lo`` from an earlier one and at least
    ``1.2 * radius_lo`` from all; every ellipse reaches past the half-way line (``radius_lo`` >
    ``0.8 * radius_lo``), so such neighbours touch along shared borders. Both sets are convex, so every cell is one connected region, and the number
    of instances is exactly the ``n_cells`` drawn. ``border_contrast`` darkens pixels on a border
    between two cells, ``texture`` sets the amplitude of a per-cell sinusoidal texture.
    """
    n = _int_count(rng, n_cells, "n_cells")
    r_lo, r_hi = _range(radius, "radius")
    if r_lo < 2:
        raise ValueError(f"touching_cells radius must be >= 2, got {radius!r}")
    seeds = _place_points(rng, n, h, w, margin=2.0, min_dist=1.2 * r_lo, max_dist=1.6 * r_lo)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    labels = np.zeros((h, w), np.int32)
    if n:
        d2 = (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2
        nearest = d2.argmin(0)
        for k in range(n):
            a, b = rng.uniform(r_lo, r_hi, 2)
            t = rng.uniform(0, np.pi)
            dy, dx = yy - seeds[k, 0], xx - seeds[k, 1]
            u = dy * np.cos(t) + dx * np.sin(t)
            v = -dy * np.sin(t) + dx * np.cos(t)
            inside = (u / a) ** 2 + (v / b) ** 2 <= 1.0
            labels[inside & (nearest == k)] = k + 1
            # the seed pixel itself always belongs to its cell (keeps tiny cells non-empty)
            labels[int(round(seeds[k, 0])), int(round(seeds[k, 1]))] = k + 1
    labels = _keep_largest_component(labels)
    image = np.full((h, w), 0.08, np.float64)
    for k in range(1, n + 1):
        m = labels == k
        base = rng.uniform(0.45, 1.0)
        f = rng.uniform(0.15, 0.6)
        t = rng.uniform(0, np.pi)
        ph = rng.uniform(0, 2 * np.pi)
        amp = texture * rng.uniform(0.3, 1.0)
        tex = amp * np.sin(f * (yy[m] * np.cos(t) + xx[m] * np.sin(t)) + ph)
        image[m] = base * (1.0 + tex)
    if border_contrast > 0 and n:
        image[_shared_border(labels)] *= 1.0 - border_contrast
    if blur > 0:
        image = ndi.gaussian_filter(image, blur)
    if noise > 0:
        image = image + rng.normal(0, noise, image.shape)
    return Sample(
        image=image.astype(np.float32)[None],
        instances=labels,
        semantic=(labels > 0).astype(np.int64),
        classes=np.ones(n, np.int64),
        meta={"seeds": seeds, "class_names": ("background", "cell")},
    )


def _shared_border(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: foreground pixels 4-adjacent to a pixel of a different foreground id."""
    out = np.zeros(labels.shape, bool)
    for a, b in (
        (labels[1:, :], labels[:-1, :]),
        (labels[:, 1:], labels[:, :-1]),
    ):
        diff = (a != b) & (a > 0) & (b > 0)
        if a.shape[0] != labels.shape[0]:
            out[1:, :] |= diff
            out[:-1, :] |= diff
        else:
            out[:, 1:] |= diff
            out[:, :-1] |= diff
    return out


def _keep_largest_component(labels: np.ndarray) -> np.ndarray:
    """Give each id only its largest 4-connected piece; the other pieces join the neighbouring
    id they share the longest border with (or the background when they touch none)."""
    out = labels.copy()
    objects = ndi.find_objects(labels)
    for k, sl in enumerate(objects, start=1):
        if sl is None:
            continue
        m = labels[sl] == k
        comp, nc = ndi.label(m)
        if nc <= 1:
            continue
        sizes = np.bincount(comp.ravel())[1:]
        keep = int(sizes.argmax()) + 1
        for c in range(1, nc + 1):
            if c == keep:
                continue
            piece = np.zeros(labels.shape, bool)
            piece[sl] = comp == c
            ring = ndi.binary_dilation(piece) & ~piece
            neighbours = out[ring]
            neighbours = neighbours[neighbours != k]
            fg = neighbours[neighbours > 0]
            out[piece] = np.bincount(fg).argmax() if fg.size else 0
    return out


# --------------------------------------------------------------------------------------------
# worms (overlapping thin tubes -> mask stack)
# --------------------------------------------------------------------------------------------


def _worm_path(
    rng: np.random.Generator,
    length: float,
    curvature: float,
    through: np.ndarray,
    heading: float,
) -> np.ndarray:
    """(P, 2) points every 0.5 px along a smooth random curve whose midpoint is ``through``."""
    steps = max(int(length / 0.5), 2)
    half = steps // 2
    # heading changes by a smoothed random walk: smooth turns, never kinks
    turn = ndi.gaussian_filter1d(rng.normal(0, curvature, steps), sigma=8, mode="nearest")
    ang = heading + np.cumsum(turn) - np.cumsum(turn)[half]
    d = 0.5 * np.stack([np.sin(ang), np.cos(ang)], 1)
    pts = np.cumsum(d, 0)
    return pts - pts[half] + through


def _make_worms(
    rng: np.random.Generator,
    h: int,
    w: int,
    *,
    n_worms: int | tuple[int, int] = (3, 6),
    length: float | tuple[float, float] = (0.45, 0.8),
    width: float | tuple[float, float] = (1.5, 2.5),
    curvature: float = 0.08,
    cross: float = 0.6,
    noise: float = 0.03,
    blur: float = 0.6,
) -> Sample:
    """Thin curved tubes that cross each other, stored as an ``(N, H, W)`` bool mask stack.

    Worm ``k`` is every pixel within ``width`` (a radius, px) of a smooth random centre line of
    ``length * min(H, W)`` px. Worm 1 always crosses worm 0 (its centre line passes through a
    point of worm 0 at 45-135 degrees to it), each later worm crosses an earlier one with
    probability ``cross``: overlaps are part of this kind. The image is bright-field-like: background 0.85, each worm multiplies the light by
    its own transmission in [0.35, 0.6], so crossings are darker. Every worm stays inside the
    image (curves leaving it are redrawn), so each mask is one connected tube.
    """
    n = _int_count(rng, n_worms, "n_worms")
    l_lo, l_hi = _range(length, "length")
    w_lo, w_hi = _range(width, "width")
    masks = np.zeros((n, h, w), bool)
    paths: list[np.ndarray] = []
    for k in range(n):
        rad = rng.uniform(w_lo, w_hi)
        for _attempt in range(200):
            L = rng.uniform(l_lo, l_hi) * min(h, w)
            if k >= 1 and (k == 1 or rng.random() < cross):
                prev = paths[int(rng.integers(0, k))]
                j = int(rng.integers(len(prev) // 4, 3 * len(prev) // 4 + 1))
                through = prev[j]
                # cross at 45-135 degrees to the other worm, not along it
                t = prev[min(j + 1, len(prev) - 1)] - prev[max(j - 1, 0)]
                heading = np.arctan2(t[0], t[1]) + rng.choice([-1, 1]) * rng.uniform(
                    np.pi / 4, 3 * np.pi / 4
                )
            else:
                through = rng.uniform([0.2 * h, 0.2 * w], [0.8 * h, 0.8 * w])
                heading = rng.uniform(0, 2 * np.pi)
            path = _worm_path(rng, L, curvature, through, heading)
            m = rad + 1.0
            if (path.min(0) >= m).all() and (path.max(0) <= np.array([h - 1, w - 1]) - m).all():
                break
        else:
            raise ValueError(
                f"could not fit worm {k} (length {l_lo}-{l_hi} x {min(h, w)} px) inside a "
                f"{h}x{w} image; use shorter worms or a larger size"
            )
        paths.append(path)
        line = np.zeros((h, w), bool)
        idx = np.rint(path).astype(int)
        line[idx[:, 0], idx[:, 1]] = True
        masks[k] = ndi.distance_transform_edt(~line) <= rad
    trans = rng.uniform(0.35, 0.6, n)
    image = np.full((h, w), 0.85)
    for k in range(n):
        image[masks[k]] *= trans[k]
    if blur > 0:
        image = ndi.gaussian_filter(image, blur)
    if noise > 0:
        image = image + rng.normal(0, noise, image.shape)
    union = masks.any(0) if n else np.zeros((h, w), bool)
    return Sample(
        image=image.astype(np.float32)[None],
        instances=masks,
        semantic=union.astype(np.int64),
        classes=np.ones(n, np.int64),
        meta={"paths": paths, "class_names": ("background", "worm")},
    )


# --------------------------------------------------------------------------------------------
# leaf rosettes (CVPPP-like)
# --------------------------------------------------------------------------------------------


def _leaf_mask(yy, xx, cy, cx, angle, r0, length, half_width) -> np.ndarray:
    """Pixels of a pointed leaf from radius ``r0`` to ``r0 + length`` along ``angle``."""
    dy, dx = yy - cy, xx - cx
    u = dy * np.sin(angle) + dx * np.cos(angle) - r0
    v = -dy * np.cos(angle) + dx * np.sin(angle)
    t = np.clip(u / length, 0.0, 1.0)
    profile = half_width * np.sin(np.pi * t) ** 0.7
    return (u >= 0) & (u <= length) & (np.abs(v) <= profile)


def _make_leaf_rosettes(
    rng: np.random.Generator,
    h: int,
    w: int,
    *,
    n_leaves: int | tuple[int, int] = (5, 10),
    length: float | tuple[float, float] = (0.22, 0.42),
    width: float | tuple[float, float] = (0.28, 0.42),
    min_area: int = 15,
    noise: float = 0.03,
) -> Sample:
    """A CVPPP-like plant: elongated leaves around a centre, overlapping in depth.

    Leaves point outwards at evenly spread angles (with jitter); ``length`` is a fraction of
    ``min(H, W)``, ``width`` the leaf's width over its length. Larger (older) leaves lie below
    smaller (younger) ones, as in a rosette, so the label image records the visible part of
    each leaf. A leaf cut in two by an occluding leaf keeps its larger part; the smaller part
    goes to the leaf that covers it. Plants where a leaf would be hidden (visible area below
    ``min_area``) are redrawn, so the instance count is exactly the ``n_leaves`` drawn. The
    image is RGB: green leaves with a darker midrib and occlusion shadows on brown soil.
    """
    n = _int_count(rng, n_leaves, "n_leaves")
    l_lo, l_hi = _range(length, "length")
    w_lo, w_hi = _range(width, "width")
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    s = min(h, w)
    for _attempt in range(100):
        cy = h / 2 + rng.uniform(-0.05, 0.05) * h
        cx = w / 2 + rng.uniform(-0.05, 0.05) * w
        theta0 = rng.uniform(0, 2 * np.pi)
        angles = theta0 + 2 * np.pi * np.arange(n) / max(n, 1) + rng.normal(0, 0.25, n)
        lengths = rng.uniform(l_lo, l_hi, n) * s
        widths = rng.uniform(w_lo, w_hi, n) * lengths / 2
        order = np.argsort(-lengths)  # biggest first = lowest in depth
        labels = np.zeros((h, w), np.int32)
        for rank, k in enumerate(order, start=1):
            m = _leaf_mask(yy, xx, cy, cx, angles[k], 0.03 * s, lengths[k], widths[k])
            labels[m] = rank
        labels = _keep_largest_component(labels)
        areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        if (areas >= min_area).all():
            break
    else:
        raise ValueError(
            f"could not draw {n} visible leaves of >= {min_area} px in a {h}x{w} image; "
            "use fewer leaves, a smaller min_area, or a larger size"
        )
    # render: soil, leaves, midribs, shadows cast by the leaf above
    soil = np.array([0.42, 0.3, 0.2])
    image = soil[:, None, None] * (1 + 0.15 * rng.standard_normal((3, h, w)))
    for rank, k in enumerate(order, start=1):
        m = labels == rank
        g = rng.uniform(0.45, 0.85)
        col = np.array([0.25 * g, g, 0.2 * g])
        dy, dx = yy[m] - cy, xx[m] - cx
        v = -dy * np.cos(angles[k]) + dx * np.sin(angles[k])
        shade = 1.0 - 0.35 * np.exp(-(v**2) / 1.5)  # midrib
        image[:, m] = col[:, None] * shade[None]
    edges = _shared_border(labels)
    image[:, edges] *= 0.6
    image += rng.normal(0, noise, image.shape)
    return Sample(
        image=np.clip(image, 0, 1).astype(np.float32),
        instances=labels,
        semantic=(labels > 0).astype(np.int64),
        classes=np.ones(n, np.int64),
        meta={"center": (cy, cx), "class_names": ("background", "plant")},
    )


# --------------------------------------------------------------------------------------------
# street-like panoptic scene
# --------------------------------------------------------------------------------------------

_STREET_COLOURS = np.array(
    [
        [0.35, 0.35, 0.38],  # road
        [0.62, 0.58, 0.55],  # sidewalk
        [0.55, 0.4, 0.32],  # building
        [0.55, 0.75, 0.95],  # sky
        [0.8, 0.1, 0.1],  # car (varied per instance)
        [0.9, 0.75, 0.2],  # person
        [0.95, 0.95, 0.1],  # sign
    ]
)


def _make_street(
    rng: np.random.Generator,
    h: int,
    w: int,
    *,
    n_cars: int | tuple[int, int] = (1, 4),
    n_people: int | tuple[int, int] = (1, 3),
    n_signs: int | tuple[int, int] = (0, 2),
    min_area: int = 12,
    noise: float = 0.03,
) -> Sample:
    """A multi-class street-like scene: stuff regions plus thing instances (panoptic).

    Stuff classes (semantic only): road, sidewalk, building, sky. Thing classes (instances with a
    class each): car (rounded box on the road), person (body + head on the sidewalk or road),
    sign (disc on a pole). Class ids index :data:`STREET_CLASSES`. Things further away (higher in
    the image) are drawn first so nearer ones occlude them; a thing left with fewer than
    ``min_area`` visible pixels redraws the scene, so instance counts are exact. ``semantic`` has
    a class everywhere (no void pixels); ``classes[k]`` is the class of instance ``k + 1``.
    """
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    for _attempt in range(100):
        horizon = int(rng.uniform(0.32, 0.45) * h)
        kerb = horizon + max(int(0.12 * h), 2)
        semantic = np.zeros((h, w), np.int64)  # road
        semantic[horizon:kerb] = 1  # sidewalk
        # skyline: blocks of random height
        x = 0
        while x < w:
            bw = int(rng.uniform(0.1, 0.3) * w) + 1
            top = int(rng.uniform(0.05, 0.9) * horizon)
            semantic[:top, x : x + bw] = 3
            semantic[top:horizon, x : x + bw] = 2
            x += bw
        things: list[tuple[float, int, np.ndarray]] = []  # (bottom y, class, mask)
        for _ in range(_int_count(rng, n_cars, "n_cars")):
            bottom = rng.uniform(kerb + 0.1 * (h - kerb), h - 1)
            scale = 0.3 + 0.7 * (bottom - horizon) / (h - horizon)
            ch, cw = 0.18 * h * scale, 0.3 * w * scale
            cx = rng.uniform(0, w)
            top = bottom - ch
            body = (np.abs(xx - cx) <= cw / 2) & (yy >= top + 0.35 * ch) & (yy <= bottom)
            cabin = (np.abs(xx - cx) <= cw / 3) & (yy >= top) & (yy < top + 0.35 * ch)
            things.append((bottom, 4, body | cabin))
        for _ in range(_int_count(rng, n_people, "n_people")):
            bottom = rng.uniform(horizon + 2, h - 1)
            scale = 0.3 + 0.7 * (bottom - horizon) / (h - horizon)
            ph, pw = 0.3 * h * scale, 0.045 * w * scale + 1
            cx = rng.uniform(0, w)
            body = ((xx - cx) / pw) ** 2 + ((yy - (bottom - 0.4 * ph)) / (0.4 * ph)) ** 2 <= 1
            hr = 0.1 * ph + 0.5
            head = (xx - cx) ** 2 + (yy - (bottom - 0.8 * ph - hr)) ** 2 <= hr**2
            things.append((bottom, 5, body | head))
        for _ in range(_int_count(rng, n_signs, "n_signs")):
            bottom = rng.uniform(horizon + 1, kerb)
            r = rng.uniform(0.03, 0.06) * min(h, w) + 1
            cx = rng.uniform(0, w)
            cy = bottom - 0.25 * h
            disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
            pole = (np.abs(xx - cx) <= 0.6) & (yy > cy) & (yy <= bottom)
            things.append((bottom, 6, disc | pole))
        things.sort(key=lambda t: t[0])
        labels = np.zeros((h, w), np.int32)
        for k, (_b, _c, m) in enumerate(things, start=1):
            labels[m] = k
        labels = _keep_largest_component(labels)
        areas = np.bincount(labels.ravel(), minlength=len(things) + 1)[1:]
        if (areas >= min_area).all():
            break
    else:
        raise ValueError(
            f"could not draw the requested things with >= {min_area} visible px each in a "
            f"{h}x{w} image; ask for fewer things or a larger size"
        )
    classes = np.array([c for _b, c, _m in things], np.int64)
    for k, c in enumerate(classes, start=1):
        semantic[labels == k] = c
    image = _STREET_COLOURS[semantic].transpose(2, 0, 1).copy()
    for k, c in enumerate(classes, start=1):
        if c == 4:
            image[:, labels == k] = rng.uniform(0.1, 0.9, 3)[:, None]
    image[:, _shared_border(labels)] *= 0.5
    image *= 1 + 0.08 * rng.standard_normal((1, h, w))
    image += rng.normal(0, noise, image.shape)
    return Sample(
        image=np.clip(image, 0, 1).astype(np.float32),
        instances=labels,
        semantic=semantic,
        classes=classes,
        meta={
            "class_names": STREET_CLASSES,
            "thing_classes": STREET_THINGS,
            "stuff_classes": STREET_STUFF,
        },
    )


#: kind name -> generator ``f(rng, H, W, **kw) -> Sample``
KINDS: dict[str, Callable[..., Sample]] = {
    "dot_grid": _make_dot_grid,
    "touching_cells": _make_touching_cells,
    "leaf_rosettes": _make_leaf_rosettes,
    "worms": _make_worms,
    "street": _make_street,
}

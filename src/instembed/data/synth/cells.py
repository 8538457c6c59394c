"""``touching_cells``: convex blobs packed so that neighbours share borders."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from instembed.data.sample import Sample
from instembed.data.synth.common import (
    _int_count,
    _keep_largest_component,
    _range,
    _shared_border,
)


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

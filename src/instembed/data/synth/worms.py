"""``worms``: overlapping thin curved tubes, stored as an ``(N, H, W)`` mask stack."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from instembed.data.sample import Sample
from instembed.data.synth.common import _int_count, _range


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

"""``leaf_rosettes``: CVPPP-like plants of elongated leaves overlapping in depth."""

from __future__ import annotations

import numpy as np

from instembed.data.sample import Sample
from instembed.data.synth.common import (
    _int_count,
    _keep_largest_component,
    _range,
    _shared_border,
)


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

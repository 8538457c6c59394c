"""Helpers shared by the synthetic scene kinds: parameter validators and label-image tools."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


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

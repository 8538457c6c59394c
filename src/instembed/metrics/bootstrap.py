"""Paired bootstrap of a difference in mean per-image scores.

Two models scored on the same images give two per-image score vectors ``a`` and ``b`` (e.g.
AP_dsb@0.5 of each val image). Their difference ``mean(a) - mean(b)`` depends on which images
the val split happened to hold; the paired bootstrap (Efron & Tibshirani 1993, ch. 13) resamples
the images with replacement, keeping each image's pair together, and reads the spread of the
resampled differences: a percentile confidence interval and the fraction of resamples in
which ``a`` does not beat ``b``. On a val split of 10-35 images one image with one object moves
a mean by 1/n, and the interval says whether a gain is more than that.

:func:`scipy.stats.bootstrap` with ``paired=True, method="percentile"`` computes the same
interval (the tests compare the two).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedDiff:
    """``diff = mean(a) - mean(b)``; ``low`` / ``high`` its percentile confidence interval at
    ``level``; ``p_not_better``: the fraction of resamples with ``mean(a) - mean(b) <= 0``."""

    diff: float
    low: float
    high: float
    p_not_better: float
    level: float
    n_images: int
    n_boot: int

    def as_dict(self) -> dict:
        return {
            "diff": self.diff,
            "ci": [self.low, self.high],
            "level": self.level,
            "p_not_better": self.p_not_better,
            "n_images": self.n_images,
            "n_boot": self.n_boot,
        }


def paired_bootstrap(
    a, b, n_boot: int = 10000, level: float = 0.95, seed: int = 0, chunk: int = 1000
) -> PairedDiff:
    """Paired bootstrap of ``mean(a) - mean(b)`` over images (see the module docstring).

    ``a`` and ``b``: per-image scores of the same images, in the same order (finite numbers).
    ``n_boot`` resamples of the image indices (``numpy.random.default_rng(seed)``), drawn
    ``chunk`` at a time. ValueError for vectors of different lengths, fewer than 2 images,
    non-finite scores, ``n_boot`` < 1 or ``level`` outside (0, 1)."""
    x = np.asarray(a, np.float64).ravel()
    y = np.asarray(b, np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"a and b must score the same images, got {x.size} and {y.size} scores")
    if x.size < 2:
        raise ValueError(f"need at least 2 images to bootstrap, got {x.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("the per-image scores must be finite numbers")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    d = x - y
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, int(n_boot), chunk):
        k = min(chunk, int(n_boot) - start)
        idx = rng.integers(0, d.size, size=(k, d.size))
        means.append(d[idx].mean(1))
    boot = np.concatenate(means)
    tail = (1 - level) / 2
    low, high = np.quantile(boot, [tail, 1 - tail])
    return PairedDiff(
        diff=float(d.mean()),
        low=float(low),
        high=float(high),
        p_not_better=float((boot <= 0).mean()),
        level=float(level),
        n_images=int(d.size),
        n_boot=int(n_boot),
    )

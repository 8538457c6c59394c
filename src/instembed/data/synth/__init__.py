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

Each kind lives in its own module (:mod:`~instembed.data.synth.dots`,
:mod:`~instembed.data.synth.cells`, :mod:`~instembed.data.synth.leaves`,
:mod:`~instembed.data.synth.worms`, :mod:`~instembed.data.synth.street`); helpers shared by
several kinds are in :mod:`~instembed.data.synth.common`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from instembed.data.sample import Sample
from instembed.data.synth.cells import _make_touching_cells
from instembed.data.synth.common import disc_offsets
from instembed.data.synth.dots import _make_dot_grid
from instembed.data.synth.leaves import _make_leaf_rosettes
from instembed.data.synth.street import STREET_CLASSES, STREET_STUFF, STREET_THINGS, _make_street
from instembed.data.synth.worms import _make_worms

__all__ = [
    "KINDS",
    "STREET_CLASSES",
    "STREET_STUFF",
    "STREET_THINGS",
    "disc_offsets",
    "make_samples",
]

log = logging.getLogger(__name__)


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


#: kind name -> generator ``f(rng, H, W, **kw) -> Sample``
KINDS: dict[str, Callable[..., Sample]] = {
    "dot_grid": _make_dot_grid,
    "touching_cells": _make_touching_cells,
    "leaf_rosettes": _make_leaf_rosettes,
    "worms": _make_worms,
    "street": _make_street,
}

"""Raw pixels -> the ``(C, H, W)`` float32 image of a :class:`~instembed.data.sample.Sample`:
channel layout (:func:`to_chw`) and intensity normalisation (:data:`NORMALIZATIONS`,
:func:`normalize_image`). Used by :func:`instembed.data.io.load_image` and the readers.

``min_range`` (the reader option ``data.reader_params.min_range``, raw intensity units, default 0
= off) is a floor on the denominator of the percentile normalisations: ``(x - lo) /
max(hi - lo, min_range)``. An image whose percentile range is above the floor is normalised
exactly as without it; an empty field (camera noise only, a small range) is no longer
stretched to 0..1 but stays near 0 (its noise spans about ``range / min_range``).
:func:`model_normalization` reads a model's ``(mode, min_range)`` from its reader options: every
place that normalises with the model's setting (predict, :func:`instembed.segment`, the
block-wise path, the bioimage.io package, napari) takes it from there.

``"percentile_unsaturated"`` guards the high percentile against a saturation plateau: when the
99.8th percentile of a channel equals its maximum M (more than 0.2 % of the pixels at M, e.g. a
bright artifact clipped at the camera's 4095) while some pixels lie below M, it is taken from
the pixels below M instead. Otherwise the plateau would set the scale, and the objects would
come out several times dimmer than in images without one. Below the plateau the mode equals
``"percentile"`` bit for bit; the saturated pixels end up above 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from instembed.data.errors import ImageReadError


def to_chw(arr: np.ndarray, *, drop_alpha: bool = True, path: str | None = None) -> np.ndarray:
    """Raw pixels -> ``(C, H, W)``. ``(H, W, C)`` with C <= 4 is moved to channels-first; a
    4th (alpha) channel is dropped when ``drop_alpha``. Keeps the dtype."""
    where = f"{path}: " if path else ""
    if arr.ndim == 2:
        out = arr[None]
    elif arr.ndim == 3:
        if arr.shape[-1] <= 4 and arr.shape[0] > 4:
            out = np.moveaxis(arr, -1, 0)
        elif arr.shape[0] <= 4:
            out = arr
        else:
            raise ImageReadError(
                f"{where}cannot tell the channel axis of an image of shape {arr.shape} "
                "(expected (H, W), (H, W, C) or (C, H, W) with C <= 4)"
            )
        if drop_alpha and out.shape[0] == 4:
            out = out[:3]
    else:
        raise ImageReadError(f"{where}expected a 2-D image, got an array of shape {arr.shape}")
    return out


def percentile_normalize(
    image: np.ndarray,
    low: float = 1.0,
    high: float = 99.8,
    *,
    per_channel: bool = True,
    eps: float = 1e-6,
    min_range: float = 0.0,
    unsaturated: bool = False,
) -> np.ndarray:
    """Map the ``low``/``high`` percentiles of ``image`` (C, H, W) to 0/1 (float32, not clipped).

    The usual normalisation for 12/16-bit microscopy (as in CSBDeep/StarDist, whose defaults
    1 / 99.8 are kept). A constant image maps to 0.

    ``min_range`` (raw intensity units, >= 0) floors the denominator, per channel:
    ``(x - lo) / max(hi - lo, min_range, eps)``. With 0 (the default), or for a channel whose
    ``hi - lo`` is above it, the result is bit for bit the one without the floor.

    ``unsaturated``: a ``high`` percentile equal to the channel's maximum M is replaced by the
    ``high`` percentile of the pixels below M, when there are any (:func:`unsaturated_high`;
    the ``"percentile_unsaturated"`` mode). A channel whose ``high`` percentile is below M is
    normalised exactly as without it.
    """
    floor = max(float(eps), check_min_range(min_range))
    image = np.asarray(image)
    x = image.astype(np.float32)
    if image.dtype in (np.uint8, np.uint16) and image.size:
        # exact numpy 'linear' percentiles from a histogram: O(pixels), no sort
        chans = (
            image.reshape(image.shape[0], -1)
            if per_channel and image.ndim == 3
            else [image.ravel()]
        )
        lo = np.empty((len(chans), 1, 1), np.float64)
        hi = np.empty_like(lo)
        for c, v in enumerate(chans):
            lo[c], hi[c] = hist_percentiles(np.bincount(v), low, high, unsaturated)
        if not (per_channel and image.ndim == 3):
            lo, hi = lo[0], hi[0]
    else:
        per = per_channel and x.ndim == 3
        axes = tuple(range(1, x.ndim)) if per else None
        lo, hi = np.percentile(x, [low, high], axis=axes, keepdims=True)
        if unsaturated and x.size:
            rows = x.reshape(x.shape[0], -1) if per else x.reshape(1, -1)
            his = hi.reshape(-1).copy()
            for c, v in enumerate(rows):
                his[c] = unsaturated_high(v, his[c], high)
            hi = his.reshape(hi.shape)
    return ((x - lo) / np.maximum(hi - lo, floor)).astype(np.float32)


def _cum_percentile(cum: np.ndarray, q: float) -> float:
    """numpy.percentile (method 'linear') of the pixels counted by the cumulative histogram
    ``cum`` (``cum[v]``: the number of pixels <= v)."""
    n = int(cum[-1])
    pos = q / 100.0 * (n - 1)
    k = int(np.floor(pos))
    a = int(np.searchsorted(cum, k, side="right"))  # value at sorted index k
    b = int(np.searchsorted(cum, min(k + 1, n - 1), side="right"))
    return a + (pos - k) * (b - a)


def hist_percentiles(
    counts: np.ndarray, low: float, high: float, unsaturated: bool = False
) -> tuple[float, float]:
    """``numpy.percentile(values, [low, high])`` (method 'linear'), exact, from the histogram
    of small non-negative integers (``counts[v]``: how many pixels have the value v; trailing
    empty bins allowed). ``unsaturated``: the rule of :func:`unsaturated_high`, with M the
    highest non-empty bin."""
    cum = np.cumsum(counts)
    lo, hi = _cum_percentile(cum, low), _cum_percentile(cum, high)
    if unsaturated:
        top = int(np.flatnonzero(counts)[-1])  # M
        if hi == top and top > 0 and cum[top - 1] > 0:  # some pixels below M
            hi = _cum_percentile(cum[:top], high)
    return lo, hi


def unsaturated_high(values: np.ndarray, hi: float, high: float) -> float:
    """``hi`` (the ``high`` percentile of the 1-D ``values``) unless it equals their maximum M
    while some values lie below M: then the ``high`` percentile of the values below M, a
    saturation plateau (a streak clipped at the camera maximum) taken out of the scale."""
    top = values.max()
    if hi == top and values.min() < top:
        return float(np.percentile(values[values < top], [high])[0])  # [high]: float64 lerp
    return hi


def range_normalize(image: np.ndarray) -> np.ndarray:
    """Integer images divided by their dtype's maximum (uint8 / 255, ...); floats unchanged."""
    if np.issubdtype(image.dtype, np.integer):
        return (image.astype(np.float32) / np.iinfo(image.dtype).max).astype(np.float32)
    if image.dtype == bool:
        return image.astype(np.float32)
    return image.astype(np.float32)


NORMALIZATIONS = ("percentile", "percentile_darkbg", "percentile_unsaturated", "range", "none")


def dark_background(image: np.ndarray, level: float = 0.5) -> np.ndarray:
    """Invert a ``[0, 1]``-normalised ``(C, H, W)`` image (``1 - x``) when its background is
    bright, i.e. when the median of the channel mean is above ``level``; otherwise unchanged.

    Bright-field and H&E nuclei are dark on a bright background, fluorescent nuclei bright on
    a dark one; after this every image shows bright objects on a dark background (the usual
    pre-processing of the DSB2018 solutions, Caicedo et al. 2019)."""
    gray = image.mean(0) if image.ndim == 3 else image
    if gray.size and float(np.median(gray)) > level:
        return (1.0 - image).astype(np.float32)
    return image


def normalize_image(
    image: np.ndarray, mode: str = "percentile", min_range: float = 0.0
) -> np.ndarray:
    """Normalise a ``(C, H, W)`` image: ``"percentile"`` (1 / 99.8 -> 0 / 1),
    ``"percentile_darkbg"`` (the same, then inverted when the background is bright, see
    :func:`dark_background`), ``"percentile_unsaturated"`` (the 99.8th percentile taken below
    a saturation plateau, see :func:`percentile_normalize`), ``"range"`` (divide by the dtype
    maximum) or ``"none"`` (cast to float32).

    ``min_range``: the floor on the percentile range (raw intensity units, see
    :func:`percentile_normalize`) of the percentile modes -- for ``"percentile_darkbg"`` the
    bright-background test looks at the floored image; ``"range"`` and ``"none"`` ignore it.
    ValueError naming ``min_range`` when it is not a finite number >= 0."""
    min_range = check_min_range(min_range)
    if mode == "percentile":
        return percentile_normalize(image, min_range=min_range)
    if mode == "percentile_darkbg":
        return dark_background(percentile_normalize(image, min_range=min_range))
    if mode == "percentile_unsaturated":
        return percentile_normalize(image, min_range=min_range, unsaturated=True)
    if mode == "range":
        return range_normalize(image)
    if mode == "none":
        return np.asarray(image, np.float32)
    raise ValueError(f"unknown normalisation {mode!r}; expected one of {NORMALIZATIONS}")


def check_min_range(value, where: str = "min_range") -> float:
    """``value`` as a float floor on the percentile range: ``None`` -> 0.0 (off); a finite real
    number >= 0 (int, float, NumPy scalar; not bool) -> itself; anything else raises
    ValueError naming ``where`` and the value."""
    if value is None:
        return 0.0
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )
    if not ok or not math.isfinite(float(value)) or float(value) < 0:
        raise ValueError(
            f"{where}: expected a finite number >= 0 (the floor on the percentile range, in raw "
            f"intensity units; 0 = off), got {value!r}"
        )
    return float(value)


def model_normalization(
    reader_params: Mapping | None, where: str = "data.reader_params"
) -> tuple[str, float]:
    """``(mode, min_range)`` of a model's reader options (``cfg.data.reader_params``): the
    normalisation its training reader applied -- ``normalize`` (default ``"percentile"``) and
    ``min_range`` (default 0), checked. What predict, :func:`instembed.segment`, the block-wise
    path and the bioimage.io export apply for the model's own normalisation."""
    params = reader_params or {}
    mode = str(params.get("normalize", "percentile"))
    return mode, check_min_range(params.get("min_range"), f"{where}.min_range")

"""Object sizes: how large the objects of an image are, the size range a model was trained on,
and the resizing that brings an image's objects back into that range.

The size of an object is its **equivalent diameter** ``sqrt(4 A / pi)`` (``A``: its area in
pixels), the measure Cellpose calls the diameter. The size of an image is the median over its
objects. A training set is summarised by three numbers, ``[low, median, high]``: the 5th, 50th
and 95th percentiles of its per-image sizes (images without objects left out). A model keeps
them in its config (``data.object_diameter``), measured by the trainer on the training set.

Prediction with ``scale="auto"`` (:func:`auto_search`) segments the image once and measures the
size of what it found. When that size lies above the training range *and* is more than
``ratio`` (1.25) times the training median (:func:`auto_scale`), it segments the image again,
shrunk by ``median / measured``, measures again in the shrunk image, and repeats while the
objects still come out too large (at most :data:`AUTO_PASSES` segmentations, at most 4x
smaller in all). Objects much larger than anything in training are otherwise split into
pieces, and those pieces measure smaller than the objects: on BBBC039 val images enlarged 2x,
nuclei of 57 px came out as fragments of 37-40 px (1.3-1.4x the training median of 28.5), so
one step shrinks by about 0.72 and a second step is needed to reach 0.5. Objects inside the
range are left alone, so a model trained on one size is not resized for the small spread of
its own data. Of all the passes, the result kept is the one whose objects, measured in its
own resized image, are closest to the training median (:func:`closer_to_median`); the scale-1
result unless a resized one is strictly closer. Auto never enlarges: small measured sizes
come as often from noise fragments as from small objects (on an empty BBBC039 field, 7 noise
fragments of 7 px sent the image to 4x and gave 9641 objects); give ``diameter`` or ``scale``
for objects smaller than the model's.
When the model carries a size model (:mod:`instembed.engine.size_model`: the object size
predicted from the look of the image, not from what the model found), its prediction sets the
factor of the first pass (:func:`start_scale`; this one may enlarge); when the objects found there
do not come out within 1.25x of the training median, the two signals disagree and the search
starts over at scale 1, as without a size model.
``diameter=D`` (the user's estimate of the objects' size) resizes by ``median / D`` directly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: percentiles of the per-image sizes kept as ``[low, median, high]``
PERCENTILES = (5.0, 50.0, 95.0)
#: auto scale: resize only when the measured size is more than this times the median
AUTO_RATIO = 1.25
#: auto scale: at most this many segmentations of one image (scale 1 and the resized ones)
AUTO_PASSES = 3
#: auto / diameter scale: clipped to this range
SCALE_LIMITS = (0.25, 4.0)


def equivalent_diameters(instances: np.ndarray) -> np.ndarray:
    """Equivalent diameter ``sqrt(4 A / pi)`` of each object of a label image ``(H, W)`` (ids
    ``1..``; absent ids skipped) or a mask stack ``(N, H, W)`` (empty masks skipped)."""
    inst = np.asarray(instances)
    if inst.ndim == 3:
        areas = inst.reshape(inst.shape[0], -1).astype(bool).sum(1)
    elif inst.ndim == 2:
        if inst.size and inst.min() < 0:
            raise ValueError(f"label image must have ids >= 0, got minimum {inst.min()}")
        areas = np.bincount(inst.ravel().astype(np.int64))[1:]
    else:
        raise ValueError(
            f"expected a label image (H, W) or a mask stack (N, H, W), got {inst.shape}"
        )
    areas = areas[areas > 0]
    return 2.0 * np.sqrt(areas / math.pi)


def image_diameter(instances: np.ndarray) -> float:
    """Median equivalent diameter of the objects of one image; NaN when it has none."""
    d = equivalent_diameters(instances)
    return float(np.median(d)) if d.size else float("nan")


def training_sizes(samples: Iterable) -> list[float] | None:
    """``[low, median, high]`` (5th / 50th / 95th percentile) of the per-image median object
    diameters of ``samples`` (Samples: their ``instances``); None when no sample has an object."""
    per_image = [image_diameter(s.instances) for s in samples]
    per_image = [d for d in per_image if math.isfinite(d)]
    if not per_image:
        return None
    return [round(float(v), 2) for v in np.percentile(per_image, PERCENTILES)]


def check_sizes(value, key: str = "data.object_diameter") -> list[float] | None:
    """``value`` as ``[low, median, high]`` floats; ValueError unless None or three finite
    numbers with ``0 < low <= median <= high``."""
    if value is None:
        return None
    try:
        vals = [] if isinstance(value, (str, bytes)) else [float(v) for v in value]
    except (TypeError, ValueError):
        vals = []
    if (
        len(vals) != 3
        or not all(math.isfinite(v) for v in vals)
        or not 0 < vals[0] <= vals[1] <= vals[2]
    ):
        raise ValueError(
            f"{key}: expected [low, median, high] object diameters in pixels with "
            f"0 < low <= median <= high, got {value!r}"
        )
    return vals


def _clip(scale: float) -> float:
    return float(min(max(scale, SCALE_LIMITS[0]), SCALE_LIMITS[1]))


def auto_scale(measured: float, sizes: Sequence[float] | None, ratio: float = AUTO_RATIO) -> float:
    """Resize factor for an image whose objects measured ``measured`` pixels (median
    equivalent diameter at scale 1), given the training ``sizes`` ``[low, median, high]``.

    ``median / measured`` (at least 1/4) when ``measured`` is above ``high`` and more than
    ``ratio`` times the median; else 1 (also when the size or the training range is unknown:
    auto only ever shrinks)."""
    if sizes is None or not math.isfinite(measured) or measured <= 0:
        return 1.0
    _, median, high = check_sizes(sizes)
    if measured <= high or measured <= ratio * median:
        return 1.0
    return _clip(median / measured)


def start_scale(
    predicted: float, sizes: Sequence[float] | None, ratio: float = AUTO_RATIO
) -> float:
    """Factor of the first pass of ``scale="auto"`` from a size model's ``predicted`` diameter
    (:mod:`instembed.engine.size_model`): ``median / predicted`` (clipped to
    :data:`SCALE_LIMITS`) when ``predicted`` is above the training range and more than
    ``ratio`` times the median, or below the range and less than the median / ``ratio``; else 1.
    Unlike the measured size, a predicted size may enlarge: it comes from the look of the whole
    image, not from fragments."""
    shrink = auto_scale(predicted, sizes, ratio)  # the rule of the measured size, above
    if shrink != 1.0:
        return shrink
    if sizes is None or not math.isfinite(predicted) or predicted <= 0:
        return 1.0
    low, median, _ = check_sizes(sizes)
    return _clip(median / predicted) if predicted < min(low, median / ratio) else 1.0


def closer_to_median(resized: float, measured: float, sizes: Sequence[float]) -> bool:
    """Whether objects measuring ``resized`` pixels in the resized image are closer (in log
    ratio) to the training median of ``sizes`` than the ``measured`` pixels of the result it
    competes with (the one found at scale 1, or the best resized one so far); False when
    ``resized`` is NaN (nothing found after resizing)."""
    if not math.isfinite(resized) or resized <= 0:
        return False
    median = check_sizes(sizes)[1]
    return abs(math.log(resized / median)) < abs(math.log(measured / median))


def auto_search(
    segment: Callable[[float], tuple[Any, float]],
    sizes: Sequence[float] | None,
    passes: int = AUTO_PASSES,
    ratio: float = AUTO_RATIO,
    start: float = 1.0,
) -> tuple[Any, float, list[tuple[float, float]]]:
    """The search of ``scale="auto"``: ``(result, factor, trail)``.

    ``segment(factor)`` segments the image resized by ``factor`` and returns ``(result,
    size)``, ``size`` the median object diameter measured *in the resized image* (NaN when
    nothing was found). The first pass is at factor ``start`` (1, or :func:`start_scale` of a
    size model's prediction); when ``start`` is not 1 and the objects found there do not lie
    within ``ratio`` of the median (:func:`agrees`), the two size signals disagree and the
    search starts over at factor 1 (that pass not counted in ``passes``). Then, while the last
    size calls for shrinking (:func:`auto_scale` of it is below 1) and fewer than ``passes``
    segmentations were done, the factor is multiplied by that step (the product clipped to
    :data:`SCALE_LIMITS`; the search stops when clipping leaves it unchanged). ``result`` and ``factor`` are those of the pass
    whose size is closest to the training median (a later pass only when strictly closer);
    ``trail`` lists ``(factor, size)`` of every pass in order."""
    if passes < 1:
        raise ValueError(f"passes: expected at least 1 segmentation, got {passes}")
    factor = _clip(float(start))
    result, size = segment(factor)
    trail = [(factor, float(size))]
    if factor != 1.0 and not agrees(float(size), sizes, ratio):
        # the predicted size and the objects found at it disagree: start over at scale 1
        result, size = segment(1.0)
        factor = 1.0
        trail.append((factor, float(size)))
        passes += 1
    best, best_factor, best_size = result, factor, float(size)
    while len(trail) < passes:
        step = auto_scale(trail[-1][1], sizes, ratio)
        nxt = _clip(factor * step)
        if step == 1.0 or nxt == factor:
            break
        factor = nxt
        result, size = segment(factor)
        trail.append((factor, float(size)))
        if closer_to_median(float(size), best_size, sizes):
            best, best_factor, best_size = result, factor, float(size)
    return best, best_factor, trail


def agrees(size: float, sizes: Sequence[float] | None, ratio: float = AUTO_RATIO) -> bool:
    """Whether objects measuring ``size`` pixels lie within ``ratio`` of the training median
    (both ways): the check of a pass started where a size model said."""
    if sizes is None or not math.isfinite(size) or size <= 0:
        return False
    median = check_sizes(sizes)[1]
    return median / ratio <= size <= median * ratio


def diameter_scale(diameter: float, sizes: Sequence[float] | None, key: str = "diameter") -> float:
    """Resize factor that brings objects of ``diameter`` pixels to the training median:
    ``median / diameter`` clipped to :data:`SCALE_LIMITS`. ValueError when the model has no
    recorded sizes or ``diameter`` is not a number > 0."""
    try:
        d = float(diameter)
    except (TypeError, ValueError):
        d = float("nan")
    if not math.isfinite(d) or d <= 0:
        raise ValueError(f"{key}: expected an object diameter in pixels > 0, got {diameter!r}")
    if sizes is None:
        raise ValueError(
            f"{key}: this model has no recorded training object size (data.object_diameter); "
            "give a scale instead, or retrain it with this version"
        )
    scale = check_sizes(sizes)[1] / d
    clipped = _clip(scale)
    if clipped != scale:
        log.warning(
            "%s %.4g px: the resize factor %.3g is outside %s and is clipped",
            key,
            d,
            scale,
            list(SCALE_LIMITS),
        )
    return clipped

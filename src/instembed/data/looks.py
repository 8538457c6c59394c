"""The *look* of a microscopy image: fluorescence, H&E-like (stained, colour) or bright-field.

DSB2018 (Caicedo et al. 2019) mixes three looks in unequal numbers (in the staged subset:
127 fluorescence, 30 H&E-like, 16 bright-field images); a model trained on a uniform draw of
images sees the rare looks seldom. :func:`image_look` names the look of one image so that the
engine can draw training images with configured per-look frequencies
(``data.look_weights``, :class:`instembed.engine.sampling.StepSampler`).

Rule (on the raw pixels, any range; gray images have R = G = B):

1. On a regular subsample of at most about 65k pixels: ``gray`` = mean over channels, ``lo`` =
   its 1st percentile, ``hi`` = its maximum, ``r = hi - lo`` (the maximum, not a high
   percentile: in a sparse fluorescence image the nuclei may cover less than 0.5 % of it).
2. **he** (colour) when the median over pixels of the chroma ``max_c - min_c`` exceeds
   ``CHROMA * r`` (``CHROMA`` = 0.03): stained tissue is coloured; fluorescence and bright-field
   images stored as RGB are gray (chroma 0).
3. otherwise **brightfield** when the median of ``(gray - lo) / r`` exceeds ``BRIGHT`` (0.5):
   a light background covering most of the image; else **fluorescence** (dark background,
   bright objects).

On the staged DSB2018 subset (``../shared/data/dsb2018``, 173 images) the rule gives 127
fluorescence, 30 he and 16 brightfield, the look of every image as listed in the data set's
SOURCE.md, with wide margins: the chroma medians of the colour images are >= 0.063 r (gray
images: 0), the normalised gray medians <= 0.15 (fluorescence) and >= 0.82 (bright-field).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)

LOOKS = ("fluorescence", "he", "brightfield")
CHROMA = 0.03
BRIGHT = 0.5


def image_look(image: np.ndarray, channels_last: bool | None = None) -> str:
    """The look (:data:`LOOKS`) of an image ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` (rule in the
    module doc). ``channels_last`` says which 3-D layout it is (default: channels last when the
    last dim is 3 or 4, as files are stored); a 4th (alpha) channel is dropped."""
    a = np.asarray(image, np.float64)
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 3:
        if channels_last is None:
            channels_last = a.shape[-1] in (3, 4) and a.shape[0] not in (1, 3, 4)
        if channels_last:
            a = np.moveaxis(a, -1, 0)
    else:
        raise ValueError(f"image must be (H, W), (H, W, C) or (C, H, W), got shape {a.shape}")
    if a.shape[0] == 4:
        a = a[:3]
    step = max(1, int((a.shape[1] * a.shape[2] / 65536) ** 0.5))  # <= ~64k pixels suffice
    a = a[:, ::step, ::step]
    gray = a.mean(0)
    lo, hi = float(np.percentile(gray, 1.0)), float(gray.max())
    r = max(float(hi - lo), 1e-12)
    if a.shape[0] > 1 and float(np.median(a.max(0) - a.min(0))) > CHROMA * r:
        return "he"
    return "brightfield" if (float(np.median(gray)) - lo) / r > BRIGHT else "fluorescence"


def sample_look(sample) -> str:
    """Look of a :class:`~instembed.data.sample.Sample`: from its source file (``sample.path``,
    raw pixels, so colour survives a reader that averages to gray) when readable, else from
    ``sample.image`` (C, H, W)."""
    path = getattr(sample, "path", None)
    if path:
        from instembed.data.io import ImageReadError, read_image, to_chw

        try:
            return image_look(to_chw(read_image(path), path=str(path)), channels_last=False)
        except (ImageReadError, ValueError) as err:
            log.debug("look of %s from the sample's image (%s)", path, err)
    return image_look(sample.image, channels_last=False)


def sample_looks(samples: Sequence) -> list[str]:
    """The look of every sample of a sequence (reads each sample once); logs the counts."""
    looks = [sample_look(samples[i]) for i in range(len(samples))]
    counts = {k: looks.count(k) for k in LOOKS}
    log.info("image looks of %d training images: %s", len(looks), counts)
    return looks


def check_look_weights(weights, where: str = "data.look_weights") -> dict[str, float]:
    """Validated ``{look: weight}`` (known looks, finite weights >= 0, some > 0)."""
    if not isinstance(weights, dict) or not weights:
        raise ValueError(f"{where}: expected a mapping {{look: weight}}, got {weights!r}")
    out = {}
    for k, v in weights.items():
        if k not in LOOKS:
            raise ValueError(f"{where}: unknown look {k!r}; expected some of {LOOKS}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
            raise ValueError(f"{where}.{k}: expected a finite number >= 0, got {v!r}")
        out[k] = float(v)
    if sum(out.values()) <= 0:
        raise ValueError(f"{where}: all weights are 0, got {weights!r}")
    return out

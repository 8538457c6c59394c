"""Joint augmentations of a :class:`Sample`: image, instances, semantic and ignore together.

Every transform is a callable ``t(sample, rng=None) -> Sample`` (numpy in, numpy out;
``rng`` a ``numpy.random.Generator``, a fresh unseeded one when ``None``). Rules kept by all:

* labels (instances, semantic, ignore) are only ever **nearest-resampled** or indexed, so a
  label image after a transform holds a subset of the ids it held before, never a new or
  interpolated value; mask stacks keep their length ``N`` (masks may become empty).
* instance ids are **not renumbered** inside a transform (so ``classes[k - 1]`` still describes
  id ``k``); :func:`relabel` (called by :class:`Compose` unless ``relabel=False`` and by
  :class:`~instembed.data.dataset.InstanceDataset`) renumbers to ``1..N`` and subsets
  ``classes`` at the end.
* **Pixel coordinates** for semi-convolutional embeddings (Novotny et al. 2018) are tracked in
  ``sample.meta``: ``"coords_origin"`` ``(y0, x0)`` and ``"frame_shape"`` ``(Hf, Wf)``. The
  invariant: pixel ``(i, j)`` of the returned image is pixel ``(y0 + i, x0 + j)`` of the full
  frame, where the full frame is the original image put through the same flips, rotations and
  scalings. Flips and 90° rotations act on the whole frame, so ``crop -> flip`` gives exactly
  the same pixels *and the same coords_origin* as ``flip -> crop`` at the mirrored position
  (checked in the tests). Consequence for semi-conv training: coordinates are those of the
  augmented image, i.e. a flipped image is a new image in its own (flipped) frame; embeddings
  ``Φ + u`` are consistent within each training image and between overlapping crops of it.
  Scaling multiplies ``coords_origin`` and ``frame_shape`` by the scale (rounded); elastic
  deformation and intensity changes leave them unchanged. At inference, test-time flips must be
  undone on the embedding *and* the coordinate channels (done in the engine's TTA).
* **Object centres** (``sample.meta["centres"]``, ``(N, 2)`` ``(y, x)`` in frame coordinates,
  set by :func:`instembed.data.centres.with_centres` on the whole image) move with the frame:
  crops and padding leave them unchanged, flips map ``X -> Wf - 1 - X``, a quarter turn maps
  ``(Y, X) -> (Wf - 1 - X, Y)``, scaling maps each local coordinate ``a -> (a + 0.5) s - 0.5``
  (the pixel-centre convention of the resampling), an elastic deformation moves a centre ``c``
  to the output point ``p`` with ``p + d(p) = c`` (fixed-point iteration on the smooth field
  ``d``); :func:`relabel` keeps the rows of the kept instances.

Suggested order: ``RandomScale -> RandomCrop -> RandomFlip -> RandomRot90 -> ElasticDeform ->
IntensityJitter / ColorJitter``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
from scipy import ndimage as ndi

from instembed.data.sample import Sample
from instembed.structures import IGNORE_INDEX

log = logging.getLogger(__name__)


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    return rng if rng is not None else np.random.default_rng()


def frame(sample: Sample) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(coords_origin, frame_shape)`` of a sample (defaults: ``(0, 0)`` and its own shape)."""
    y0, x0 = sample.meta.get("coords_origin", (0, 0))
    hf, wf = sample.meta.get("frame_shape", sample.shape)
    return (int(y0), int(x0)), (int(hf), int(wf))


def _with_frame(sample: Sample, origin, frame_shape) -> dict:
    meta = dict(sample.meta)
    meta["coords_origin"] = (int(origin[0]), int(origin[1]))
    meta["frame_shape"] = (int(frame_shape[0]), int(frame_shape[1]))
    return meta


def _move_centres(meta: dict, f: Callable[[np.ndarray], np.ndarray]) -> dict:
    """Apply ``f`` to ``meta["centres"]`` (frame coordinates, float) when present; in place."""
    c = meta.get("centres")
    if c is not None:
        meta["centres"] = f(np.array(c, np.float64))
    return meta


def _map_spatial(sample: Sample, f: Callable[[np.ndarray, bool], np.ndarray], meta: dict) -> Sample:
    """Apply ``f(array, is_label)`` to every (…, H, W) array of the sample."""
    return replace(
        sample,
        image=np.ascontiguousarray(f(sample.image, False)),
        instances=np.ascontiguousarray(f(sample.instances, True)),
        semantic=None
        if sample.semantic is None
        else np.ascontiguousarray(f(sample.semantic, True)),
        ignore=None if sample.ignore is None else np.ascontiguousarray(f(sample.ignore, True)),
        meta=meta,
    )


class Compose:
    """Apply ``transforms`` in order; :func:`relabel` the result unless ``relabel=False``."""

    def __init__(self, transforms: Sequence[Callable], relabel: bool = True) -> None:
        self.transforms = list(transforms)
        self.relabel = relabel

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = _rng(rng)
        for t in self.transforms:
            sample = t(sample, rng)
        return relabel(sample) if self.relabel else sample

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def relabel(sample: Sample) -> Sample:
    """Renumber instances to ``1..N`` in order of their old ids (stacks: drop empty masks) and
    keep ``classes`` in step. Returns a validated Sample."""
    inst = sample.instances
    classes = sample.classes
    centres = sample.meta.get("centres")
    if sample.is_stack:
        rows = inst.reshape(len(inst), -1).any(1)
        new = inst[rows]
    else:
        ids = np.unique(inst)
        ids = ids[ids > 0]
        lut = np.zeros(int(inst.max(initial=0)) + 1, np.int32)
        lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
        new = lut[inst]
        rows = ids - 1
    if classes is not None:
        classes = np.asarray(classes)[rows]
    meta = sample.meta
    if centres is not None:
        meta = dict(meta)
        meta["centres"] = np.asarray(centres)[rows]
    return replace(sample, instances=new, classes=classes, meta=meta).validate()


class RandomCrop:
    """Crop ``size = (h, w)`` at a random position; pad (bottom/right) when the image is smaller.

    Padding: image 0, instances 0, semantic ``IGNORE_INDEX``, ignore ``True``. With
    ``min_instances > 0`` up to ``tries`` positions are drawn and the first one holding at least
    ``min_instances`` instances of ``>= min_pixels`` pixels is kept; failing that, a crop centred
    on a random instance pixel, then the best position seen. ``coords_origin`` moves by the
    crop offset.
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        min_instances: int = 0,
        min_pixels: int = 1,
        tries: int = 10,
    ) -> None:
        self.size = (int(size), int(size)) if np.isscalar(size) else tuple(int(v) for v in size)
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"RandomCrop size must be (h, w) >= 1, got {size!r}")
        self.min_instances, self.min_pixels, self.tries = min_instances, min_pixels, tries

    def _count(self, sample: Sample, y0: int, x0: int) -> int:
        h, w = self.size
        inst = sample.instances[..., y0 : y0 + h, x0 : x0 + w]
        if sample.is_stack:
            return int((inst.reshape(len(inst), -1).sum(1) >= self.min_pixels).sum())
        counts = np.bincount(inst.ravel())[1:]
        return int((counts >= self.min_pixels).sum())

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = _rng(rng)
        sample = pad_to(sample, self.size)
        h, w = self.size
        H, W = sample.shape
        y0, x0 = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
        if self.min_instances > 0:
            best, best_n = (y0, x0), self._count(sample, y0, x0)
            for _ in range(self.tries - 1):
                if best_n >= self.min_instances:
                    break
                y, x = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
                n = self._count(sample, y, x)
                if n > best_n:
                    best, best_n = (y, x), n
            if best_n < self.min_instances:
                fg = np.argwhere(
                    sample.instances.any(0) if sample.is_stack else sample.instances > 0
                )
                if len(fg):
                    cy, cx = fg[int(rng.integers(0, len(fg)))]
                    y = int(np.clip(cy - h // 2, 0, H - h))
                    x = int(np.clip(cx - w // 2, 0, W - w))
                    if self._count(sample, y, x) > best_n:
                        best = (y, x)
            y0, x0 = best
        (oy, ox), fs = frame(sample)
        meta = _with_frame(sample, (oy + y0, ox + x0), fs)
        return _map_spatial(sample, lambda a, _l: a[..., y0 : y0 + h, x0 : x0 + w], meta)

    def __repr__(self) -> str:
        return f"RandomCrop({self.size}, min_instances={self.min_instances})"


def pad_to(sample: Sample, size: tuple[int, int]) -> Sample:
    """Pad bottom/right up to ``size`` (no-op when already large enough); origin unchanged."""
    H, W = sample.shape
    ph, pw = max(size[0] - H, 0), max(size[1] - W, 0)
    if not ph and not pw:
        return sample

    def pad(a: np.ndarray, value) -> np.ndarray:
        widths = [(0, 0)] * (a.ndim - 2) + [(0, ph), (0, pw)]
        return np.pad(a, widths, constant_values=value)

    ignore = sample.ignore if sample.ignore is not None else np.zeros((H, W), bool)
    return replace(
        sample,
        image=pad(sample.image, 0),
        instances=pad(sample.instances, 0),
        semantic=None if sample.semantic is None else pad(sample.semantic, IGNORE_INDEX),
        ignore=pad(ignore, True),
    )


class RandomFlip:
    """Flip left-right with probability ``p_horizontal`` and up-down with ``p_vertical``.

    ``coords_origin`` is mirrored in the frame: ``x0 -> Wf - x0 - w`` (and ``y0`` likewise).
    """

    def __init__(self, p_horizontal: float = 0.5, p_vertical: float = 0.5) -> None:
        self.ph, self.pv = p_horizontal, p_vertical

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = _rng(rng)
        flip_h, flip_v = rng.random() < self.ph, rng.random() < self.pv
        return flip(sample, horizontal=flip_h, vertical=flip_v)


def flip(sample: Sample, horizontal: bool = False, vertical: bool = False) -> Sample:
    """Deterministic flip (see :class:`RandomFlip`)."""
    if not horizontal and not vertical:
        return sample
    (y0, x0), (hf, wf) = frame(sample)
    h, w = sample.shape
    if horizontal:
        x0 = wf - x0 - w
    if vertical:
        y0 = hf - y0 - h
    axes = tuple(a for a, on in ((-2, vertical), (-1, horizontal)) if on)

    def mirror(c: np.ndarray) -> np.ndarray:
        if horizontal:
            c[:, 1] = wf - 1 - c[:, 1]
        if vertical:
            c[:, 0] = hf - 1 - c[:, 0]
        return c

    meta = _move_centres(_with_frame(sample, (y0, x0), (hf, wf)), mirror)
    return _map_spatial(sample, lambda a, _l: np.flip(a, axes), meta)


class RandomRot90:
    """Rotate by ``k * 90°`` counter-clockwise (``numpy.rot90``), ``k`` uniform in ``ks``.

    One quarter turn maps frame pixel ``(Y, X)`` to ``(Wf - 1 - X, Y)``, so a crop at
    ``(y0, x0)`` of size ``(h, w)`` moves to ``(Wf - x0 - w, y0)`` in a ``(Wf, Hf)`` frame.
    """

    def __init__(self, ks: Sequence[int] = (0, 1, 2, 3)) -> None:
        self.ks = tuple(int(k) % 4 for k in ks)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = _rng(rng)
        return rot90(sample, self.ks[int(rng.integers(0, len(self.ks)))])


def rot90(sample: Sample, k: int) -> Sample:
    """Deterministic rotation by ``k`` quarter turns (see :class:`RandomRot90`)."""
    k = int(k) % 4
    if k == 0:
        return sample
    (y0, x0), (hf, wf) = frame(sample)
    h, w = sample.shape
    centres = sample.meta.get("centres")
    centres = None if centres is None else np.array(centres, np.float64)
    for _ in range(k):
        if centres is not None:  # frame (Y, X) -> (Wf - 1 - X, Y)
            centres = np.stack([wf - 1 - centres[:, 1], centres[:, 0]], 1)
        y0, x0, hf, wf, h, w = wf - x0 - w, y0, wf, hf, w, h
    meta = _with_frame(sample, (y0, x0), (hf, wf))
    if centres is not None:
        meta["centres"] = centres
    return _map_spatial(sample, lambda a, _l: np.rot90(a, k, axes=(-2, -1)), meta)


class RandomScale:
    """Resize by a factor drawn log-uniformly from ``scale = (lo, hi)`` (same for both axes).

    Image: linear interpolation (``order=1``); labels: nearest neighbour (``order=0``), so ids are
    never mixed. Small instances may vanish when shrinking. ``coords_origin`` and
    ``frame_shape`` are multiplied by the factor and rounded.
    """

    def __init__(self, scale: tuple[float, float] = (0.75, 1.33), p: float = 1.0) -> None:
        lo, hi = scale
        if not 0 < lo <= hi:
            raise ValueError(f"RandomScale scale must be 0 < lo <= hi, got {scale!r}")
        self.scale, self.p = (float(lo), float(hi)), p

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = _rng(rng)
        if rng.random() >= self.p:
            return sample
        s = float(np.exp(rng.uniform(np.log(self.scale[0]), np.log(self.scale[1]))))
        return rescale(sample, s)


def rescale(sample: Sample, factor: float) -> Sample:
    """Deterministic resize to ``round(H * factor), round(W * factor)`` (see :class:`RandomScale`)."""
    H, W = sample.shape
    nh, nw = max(int(round(H * factor)), 1), max(int(round(W * factor)), 1)
    if (nh, nw) == (H, W):
        return sample
    # sample positions: centres of the new pixels, in old pixel units (pixel-centre convention)
    ys = (np.arange(nh) + 0.5) * (H / nh) - 0.5
    xs = (np.arange(nw) + 0.5) * (W / nw) - 0.5

    def resample(a: np.ndarray, is_label: bool) -> np.ndarray:
        if is_label:
            iy = np.clip(np.floor(ys + 0.5).astype(int), 0, H - 1)
            ix = np.clip(np.floor(xs + 0.5).astype(int), 0, W - 1)
            return a[..., iy[:, None], ix[None, :]]
        return _linear_resample(a, ys, xs).astype(a.dtype)

    (y0, x0), (hf, wf) = frame(sample)
    sy, sx = nh / H, nw / W
    ny0, nx0 = round(y0 * sy), round(x0 * sx)
    meta = _with_frame(sample, (ny0, nx0), (round(hf * sy), round(wf * sx)))

    def scale(c: np.ndarray) -> np.ndarray:  # local a -> (a + 0.5) s - 0.5, as the resampling
        c[:, 0] = ny0 + (c[:, 0] - y0 + 0.5) * sy - 0.5
        c[:, 1] = nx0 + (c[:, 1] - x0 + 0.5) * sx - 0.5
        return c

    _move_centres(meta, scale)
    return _map_spatial(sample, resample, meta)


def _linear_resample(a: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Separable linear interpolation of ``a (..., H, W)`` at rows ``ys`` and columns ``xs``
    (positions clamped to the image, as ``map_coordinates(order=1, mode="nearest")``)."""
    H, W = a.shape[-2:]

    def weights(pos, n):
        pos = np.clip(pos, 0, n - 1)
        i0 = np.floor(pos).astype(int)
        i1 = np.minimum(i0 + 1, n - 1)
        return i0, i1, (pos - i0).astype(np.float32)

    y0, y1, wy = weights(ys, H)
    x0, x1, wx = weights(xs, W)
    a = a.astype(np.float32, copy=False)
    rows = a[..., y0, :] * (1 - wy)[:, None] + a[..., y1, :] * wy[:, None]
    return rows[..., x0] * (1 - wx) + rows[..., x1] * wx


class ElasticDeform:
    """Smooth random displacement field (Simard et al. 2003), applied with probability ``p``.

    Displacements are white noise smoothed by a Gaussian of ``sigma`` px and scaled so that
    their largest component (over both axes and all pixels) is ``alpha`` px. Image: linear interpolation; labels: nearest.
    Pixels pulled from outside the image get 0 (semantic: ``IGNORE_INDEX``, ignore: True).
    """

    def __init__(self, alpha: float = 6.0, sigma: float = 8.0, p: float = 0.5) -> None:
        self.alpha, self.sigma, self.p = float(alpha), float(sigma), p

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = _rng(rng)
        if rng.random() >= self.p:
            return sample
        H, W = sample.shape
        d = np.stack([ndi.gaussian_filter(rng.uniform(-1, 1, (H, W)), self.sigma) for _ in "yx"])
        d *= self.alpha / max(np.abs(d).max(), 1e-12)
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
        cy, cx = yy + d[0], xx + d[1]
        outside = (cy < -0.5) | (cy > H - 0.5) | (cx < -0.5) | (cx > W - 0.5)
        iy = np.clip(np.floor(cy + 0.5).astype(int), 0, H - 1)
        ix = np.clip(np.floor(cx + 0.5).astype(int), 0, W - 1)

        def warp(a: np.ndarray, is_label: bool) -> np.ndarray:
            if is_label:
                return a[..., iy, ix]
            flat = a.reshape(-1, H, W)
            out = np.stack(
                [ndi.map_coordinates(c, [cy, cx], order=1, mode="nearest") for c in flat]
            )
            return out.reshape(a.shape).astype(a.dtype)

        (oy, ox), _ = frame(sample)

        def follow(c: np.ndarray) -> np.ndarray:  # output p with p + d(p) = c (input point)
            ok = np.isfinite(c).all(1)
            target = c[ok] - (oy, ox)
            p = target.copy()
            for _ in range(8):  # contraction while the field's slope is < 1 (smooth field)
                dp = [ndi.map_coordinates(d[a], p.T, order=1, mode="nearest") for a in (0, 1)]
                p = target - np.stack(dp, 1)
            c[ok] = p + (oy, ox)
            return c

        out = _map_spatial(sample, warp, _move_centres(dict(sample.meta), follow))
        if outside.any():
            inst = out.instances.copy()
            inst[..., outside] = 0
            ign = out.ignore.copy() if out.ignore is not None else np.zeros((H, W), bool)
            ign[outside] = True
            sem = out.semantic
            if sem is not None:
                sem = sem.copy()
                sem[outside] = IGNORE_INDEX
            img = out.image.copy()
            img[:, outside] = 0
            out = replace(out, image=img, instances=inst, semantic=sem, ignore=ign)
        return out


class IntensityJitter:
    """Random gain, bias and gamma of the image, and additive Gaussian noise; labels untouched.

    ``image -> sign-preserving (gain * image + bias) ** gamma + N(0, noise)``, each factor drawn
    uniformly from its ``(lo, hi)`` (``gamma`` is applied to the positive part only);
    ``per_channel`` draws gain/bias per channel.
    """

    def __init__(
        self,
        gain: tuple[float, float] = (0.8, 1.2),
        bias: tuple[float, float] = (-0.1, 0.1),
        gamma: tuple[float, float] | None = None,
        noise: float = 0.0,
        per_channel: bool = False,
        p: float = 1.0,
    ) -> None:
        self.gain, self.bias, self.gamma = gain, bias, gamma
        self.noise, self.per_channel, self.p = noise, per_channel, p

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = _rng(rng)
        if rng.random() >= self.p:
            return sample
        c = sample.image.shape[0] if self.per_channel else 1
        g = rng.uniform(*self.gain, (c, 1, 1))
        b = rng.uniform(*self.bias, (c, 1, 1))
        img = sample.image * g + b
        if self.gamma is not None:
            gam = rng.uniform(*self.gamma)
            img = np.where(img > 0, np.abs(img) ** gam, img)
        if self.noise > 0:
            img = img + rng.normal(0, self.noise, img.shape)
        return replace(sample, image=img.astype(np.float32))


class ColorJitter:
    """Brightness, contrast and saturation jitter for RGB images (gray images: brightness and
    contrast only), each factor drawn from ``[1 - v, 1 + v]``; labels untouched."""

    def __init__(
        self,
        brightness: float = 0.2,
        contrast: float = 0.2,
        saturation: float = 0.2,
        p: float = 1.0,
    ) -> None:
        self.brightness, self.contrast, self.saturation, self.p = (
            brightness,
            contrast,
            saturation,
            p,
        )

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = _rng(rng)
        if rng.random() >= self.p:
            return sample
        img = sample.image.astype(np.float32)
        img = img * rng.uniform(1 - self.brightness, 1 + self.brightness)
        mean = img.mean()
        img = (img - mean) * rng.uniform(1 - self.contrast, 1 + self.contrast) + mean
        if img.shape[0] == 3 and self.saturation > 0:
            gray = img.mean(0, keepdims=True)
            img = (img - gray) * rng.uniform(1 - self.saturation, 1 + self.saturation) + gray
        return replace(sample, image=img.astype(np.float32))


#: name -> transform class, for configs (``build_transforms``)
TRANSFORMS: dict[str, type] = {
    "crop": RandomCrop,
    "flip": RandomFlip,
    "rot90": RandomRot90,
    "scale": RandomScale,
    "elastic": ElasticDeform,
    "intensity": IntensityJitter,
    "color": ColorJitter,
}


def build_transforms(spec: Sequence[str | dict]) -> Compose:
    """A :class:`Compose` from a config list: names (``"flip"``) or dicts
    (``{"name": "crop", "size": [256, 256], "min_instances": 1}``)."""
    steps = []
    for entry in spec:
        params = {} if isinstance(entry, str) else dict(entry)
        name = entry if isinstance(entry, str) else params.pop("name", None)
        if name not in TRANSFORMS:
            raise ValueError(f"unknown transform {name!r}; expected one of {sorted(TRANSFORMS)}")
        steps.append(TRANSFORMS[name](**params))
    return Compose(steps)

"""Images too large for memory, read one window at a time; their normalisation, computed once.

:func:`open_lazy` wraps a zarr array or group (OME-Zarr: the full-resolution level of its first
multiscale), a TIFF file (memory-mapped when stored uncompressed and contiguous, otherwise
through tifffile's zarr store, one strip or tile at a time), a dask array or a NumPy array in a
:class:`LazyImage`: ``read(y0, y1, x0, x1)`` returns the raw ``(C, h, w)`` pixels of that window.
A :class:`LazyImage` pickles without its pixels (files are reopened where it is unpickled), so
it can be sent to Dask workers; a NumPy or dask array travels inside it.

Axes: OME-Zarr's ``multiscales`` axes and TIFF series axes are read from the file; plain arrays
follow :func:`instembed.data.normalize.to_chw`'s rule -- ``(H, W)``, ``(H, W, C)`` or
``(C, H, W)`` with ``C <= 4`` -- unless ``axes`` (e.g. ``"CYX"``, ``"TCZYX"``) is given. Axes
other than channel, Y and X must have length 1. A 4th (alpha) channel is dropped, as
:func:`~instembed.data.normalize.to_chw` does.

Normalisation (:class:`GlobalNorm`): ``"percentile"`` maps the 1 / 99.8 percentiles **of the
whole image** to 0 / 1, as :func:`~instembed.data.normalize.normalize_image` does for an image in
memory, but computed from per-window statistics (:func:`window_stats`, merged by
:class:`StatsAccumulator`): exact for 8 / 16-bit unsigned images (a histogram of every pixel, the
method of :func:`~instembed.data.normalize.percentile_normalize`), and from a regular grid sample
of at most ``max_sample`` pixels for other dtypes (exact while the image has no more pixels than
that). ``"percentile_darkbg"`` decides the inversion from the median of the sample;
``"percentile_unsaturated"`` takes the high percentile below a saturation plateau by the rule
of :func:`~instembed.data.normalize.unsaturated_high`, with the image's maximum from the
histogram (exact) or the sample.
``"range"`` and ``"none"`` are per pixel and need no statistics. ``min_range`` floors the
whole-image percentile range (raw intensity units) as ``normalize_image``'s ``min_range`` does.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from instembed.data.errors import ImageReadError
from instembed.data.normalize import (
    NORMALIZATIONS,
    check_min_range,
    hist_percentiles,
    normalize_image,
    unsaturated_high,
)

log = logging.getLogger(__name__)

MAX_SAMPLE = 1 << 22
"""Pixels in the grid sample of :func:`window_stats` (the percentiles of non-8/16-bit images)."""

_CHANNEL_AXES = "CS"  # OME / tifffile names of a channel axis (S: samples per pixel)


def guess_axes(shape: tuple[int, ...], where: str = "image") -> str:
    """Axes of a plain array by :func:`~instembed.data.normalize.to_chw`'s rule."""
    if len(shape) == 2:
        return "YX"
    if len(shape) == 3:
        if shape[-1] <= 4 < shape[0]:
            return "YXC"
        if shape[0] <= 4:
            return "CYX"
    raise ImageReadError(
        f"{where}: cannot tell the axes of an array of shape {tuple(shape)} (expected (H, W), "
        "(H, W, C) or (C, H, W) with C <= 4); pass axes=, e.g. 'CYX' or 'TCZYX'"
    )


def _check_axes(axes: str, shape: tuple[int, ...], where: str) -> str:
    axes = axes.upper()
    if len(axes) != len(shape) or len(set(axes)) != len(axes):
        raise ImageReadError(
            f"{where}: axes {axes!r} do not fit an array of shape {tuple(shape)} "
            "(one distinct letter per dimension expected)"
        )
    if "Y" not in axes or "X" not in axes:
        raise ImageReadError(f"{where}: axes {axes!r} need a Y and an X axis")
    chans = [a for a in axes if a in _CHANNEL_AXES]
    if len(chans) > 1:
        raise ImageReadError(f"{where}: axes {axes!r} have more than one channel axis")
    for a, n in zip(axes, shape):
        if a not in "YX" + _CHANNEL_AXES and n != 1:
            raise ImageReadError(
                f"{where}: expected one 2-D image (axes other than channel, Y and X of length 1),"
                f" got axes {axes} of shape {tuple(shape)} (axis {a} has {n}); select one plane "
                "first"
            )
    return axes


class LazyImage:
    """A 2-D image of ``channels`` x ``height`` x ``width`` pixels read window by window.

    Build one with :func:`open_lazy`. ``read(y0, y1, x0, x1)`` returns the raw pixels
    ``(C, y1 - y0, x1 - x0)`` in the stored dtype; ``name`` names it in messages.
    """

    def __init__(self, kind: str, where, axes: str | None, name: str, **opts) -> None:
        self.kind, self.where, self.name, self.opts = kind, where, name, opts
        self._array = None
        arr = self._open()
        shape = tuple(int(s) for s in arr.shape)
        self.axes = _check_axes(axes or guess_axes(shape, name), shape, name)
        self.dtype = np.dtype(arr.dtype)
        sizes = dict(zip(self.axes, shape))
        self.height, self.width = sizes["Y"], sizes["X"]
        chan = next((a for a in self.axes if a in _CHANNEL_AXES), None)
        stored = sizes[chan] if chan else 1
        self.channels = 3 if stored == 4 else stored  # alpha dropped (to_chw)
        self._chan = chan

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def __repr__(self) -> str:
        return f"LazyImage({self.name}, {self.kind}, shape {self.shape}, {self.dtype})"

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.kind != "array":
            state["_array"] = None  # reopened where unpickled
        return state

    # ----------------------------------------------------------------------------- access
    def _open(self):
        if self._array is not None:
            return self._array
        if self.kind == "array":
            self._array = self.where
        elif self.kind == "zarr":
            import zarr

            self._array = zarr.open_array(self.where, mode="r", path=self.opts.get("component"))
        elif self.kind == "tiff":
            self._array = _open_tiff(self.where, self.opts.get("series", 0), self.opts.get("level"))
        else:  # pragma: no cover - built only by open_lazy
            raise ValueError(f"unknown lazy image kind {self.kind!r}")
        return self._array

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Raw pixels ``(C, y1 - y0, x1 - x0)`` of rows y0:y1, columns x0:x1."""
        if not (0 <= y0 < y1 <= self.height and 0 <= x0 < x1 <= self.width):
            raise ValueError(
                f"{self.name}: window rows {y0}:{y1}, columns {x0}:{x1} outside the image "
                f"({self.height} x {self.width})"
            )
        arr = self._open()
        index = []
        for a in self.axes:
            if a == "Y":
                index.append(slice(y0, y1))
            elif a == "X":
                index.append(slice(x0, x1))
            elif a == self._chan:
                index.append(slice(0, self.channels))
            else:
                index.append(0)
        try:
            win = arr[tuple(index)]
            if hasattr(win, "compute"):  # dask: compute here, in this process
                win = win.compute(scheduler="synchronous")
            win = np.asarray(win)
        except Exception as err:
            raise ImageReadError(
                f"{self.name}: cannot read rows {y0}:{y1}, columns {x0}:{x1} "
                f"({type(err).__name__}: {err})"
            ) from err
        kept = [a for a in self.axes if a in ("Y", "X", self._chan)]
        if self._chan is None:
            return win[None]
        return np.moveaxis(win, kept.index(self._chan), 0)


def _open_tiff(path: str, series: int, level: int | None):
    """A TIFF series as an array: a read-only memory map when its pixels are stored
    uncompressed and contiguous, else tifffile's zarr store (decoded strip / tile by strip /
    tile)."""
    import tifffile

    try:
        return tifffile.memmap(path, series=series, level=level or 0, mode="r")
    except ValueError:  # compressed or not contiguous
        pass
    import zarr

    store = tifffile.imread(path, aszarr=True, series=series, level=level or 0)
    return zarr.open_array(store, mode="r")


def _ome_multiscale(group, where: str) -> tuple[str, str | None]:
    """(path of the full-resolution array, its axes) of an OME-Zarr group (NGFF 0.4 / 0.5)."""
    attrs = group.attrs.asdict()
    ms = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not ms:
        arrays = sorted(k for k, _ in group.arrays())
        if len(arrays) == 1:
            return arrays[0], None
        raise ImageReadError(
            f"{where}: a zarr group without OME-Zarr 'multiscales' metadata and with "
            f"{len(arrays)} arrays ({', '.join(arrays) or 'none'}); give the path of one array"
        )
    first = ms[0]
    axes = first.get("axes")
    names = None
    if axes:
        names = "".join((a["name"] if isinstance(a, dict) else a)[0] for a in axes).upper()
    return first["datasets"][0]["path"], names


def open_lazy(image, *, axes: str | None = None, name: str | None = None) -> LazyImage:
    """A :class:`LazyImage` of ``image``: a path to a zarr array / group (``*.zarr``, OME-Zarr)
    or a TIFF, a ``zarr.Array``, a dask array, a NumPy array, or a :class:`LazyImage` (returned
    as is). Other image files (PNG, JPEG) are read whole. ``axes`` overrides the axes read from
    the file or guessed from the shape."""
    if isinstance(image, LazyImage):
        return image
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        where = name or str(path)
        if not path.exists():
            raise ImageReadError(f"{path}: file or folder not found")
        if path.is_dir() or path.suffix.lower() == ".zarr":
            import zarr

            try:
                node = zarr.open(str(path), mode="r")
            except Exception as err:
                raise ImageReadError(
                    f"{path}: not a zarr array or group ({type(err).__name__}: {err})"
                ) from err
            if isinstance(node, zarr.Group):
                component, found = _ome_multiscale(node, where)
                return LazyImage("zarr", str(path), axes or found, where, component=component)
            return LazyImage("zarr", str(path), axes, where)
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            try:
                with tifffile.TiffFile(path) as tif:
                    found = tif.series[0].axes
            except Exception as err:
                raise ImageReadError(f"{path}: cannot read TIFF ({err})") from err
            found = found.replace("S", "C") if "C" not in found else found
            lazy = LazyImage("tiff", str(path), axes or found, where, series=0)
            return lazy
        from instembed.data.io import read_image

        log.info("%s: not a TIFF or zarr: read whole", path)
        return LazyImage("array", read_image(path), axes, where)
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        raise TypeError(
            f"expected a zarr / TIFF path, a zarr, dask or NumPy array, got {type(image).__name__}"
        )
    kind = type(image).__module__.split(".")[0]
    return LazyImage("array", image, axes, name or f"{kind} array {tuple(image.shape)}")


# --------------------------------------------------------------------------- normalisation
def _hist_dtype(dtype: np.dtype) -> bool:
    return np.dtype(dtype) in (np.dtype(np.uint8), np.dtype(np.uint16))


def sample_stride(height: int, width: int, max_sample: int = MAX_SAMPLE) -> int:
    """Step of the regular grid sample of an image: every pixel while it has at most
    ``max_sample``."""
    return max(1, math.ceil(math.sqrt(height * width / max_sample)))


def window_stats(lazy: LazyImage, y0: int, y1: int, x0: int, x1: int, stride: int) -> dict:
    """Statistics of one window for :class:`StatsAccumulator`: a per-channel histogram of every
    pixel (8 / 16-bit unsigned images), and the pixels of the window on the image's sample grid
    (rows and columns multiples of ``stride``)."""
    raw = lazy.read(y0, y1, x0, x1)
    out = {"hist": None}
    if _hist_dtype(raw.dtype):
        bins = np.iinfo(raw.dtype).max + 1
        out["hist"] = np.stack([np.bincount(c.ravel(), minlength=bins) for c in raw])
    sy, sx = -(-y0 // stride) * stride - y0, -(-x0 // stride) * stride - x0
    out["sample"] = raw[:, sy::stride, sx::stride].reshape(raw.shape[0], -1)
    return out


@dataclass
class GlobalNorm:
    """One normalisation for every window of an image: ``mode`` of
    :data:`~instembed.data.normalize.NORMALIZATIONS`; for the percentile modes the per-channel
    ``lo`` / ``hi`` mapped to 0 / 1 (shape (C, 1, 1)), whether to ``invert`` (dark
    background) and ``min_range``, the floor on ``hi - lo`` (raw intensity units, 0 = off; as
    :func:`~instembed.data.normalize.percentile_normalize`'s)."""

    mode: str
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    invert: bool = False
    min_range: float = 0.0

    def __post_init__(self) -> None:
        self.min_range = check_min_range(self.min_range, "min_range")

    def apply(self, raw: np.ndarray, channel: int | None = None) -> np.ndarray:
        """Normalised float32 pixels of a raw ``(C, h, w)`` window (``channel``: the window
        holds that channel of the image only)."""
        if self.lo is None:
            return normalize_image(raw, self.mode, self.min_range)
        lo, hi = self.lo, self.hi
        if channel is not None:
            lo, hi = lo[channel : channel + 1], hi[channel : channel + 1]
        floor = max(1e-6, self.min_range)  # percentile_normalize's eps and floor
        out = ((raw.astype(np.float32) - lo) / np.maximum(hi - lo, floor)).astype(np.float32)
        return (1.0 - out).astype(np.float32) if self.invert else out

    def prepare(
        self, raw: np.ndarray, channels: int, channel: int | None = None, where: str = "image"
    ) -> np.ndarray:
        """A raw ``(C, h, w)`` window -> the ``(channels, h, w)`` float32 input of a model, by
        the steps of :func:`instembed.data.io.load_image` (channel pick, normalisation, colour
        averaged to gray or gray repeated), with this whole-image normalisation."""
        from instembed.data.io import model_channels

        if channel is not None:
            if not 0 <= channel < raw.shape[0]:
                raise ImageReadError(
                    f"{where}: channel {channel} asked for, but the image has {raw.shape[0]} "
                    f"channel(s) (0..{raw.shape[0] - 1})"
                )
            raw = raw[channel : channel + 1]
        img = self.apply(raw, channel)
        img = model_channels(img, "none", channels, None, where)
        return np.ascontiguousarray(img, np.float32)


class StatsAccumulator:
    """Merges the :func:`window_stats` of windows that partition an image, as they come
    (histograms summed at once: memory of one histogram and the grid sample), into the image's
    :class:`GlobalNorm` (:meth:`norm`: the percentiles of ``normalize_image`` on the whole
    image)."""

    def __init__(self) -> None:
        self.hist: np.ndarray | None = None
        self.samples: list[np.ndarray] = []
        self.all_hist = True

    def add(self, part: dict) -> None:
        if part["hist"] is None:
            self.all_hist = False
        elif self.hist is None:
            self.hist = part["hist"].astype(np.int64)
        else:
            self.hist += part["hist"]
        self.samples.append(part["sample"])

    def norm(
        self, mode: str, low: float = 1.0, high: float = 99.8, min_range: float = 0.0
    ) -> GlobalNorm:
        """The whole image's normalisation ``mode``; ``min_range``: the floor on the
        percentile range (raw intensity units, 0 = off)."""
        if mode not in NORMALIZATIONS:
            raise ValueError(f"unknown normalisation {mode!r}; expected one of {NORMALIZATIONS}")
        min_range = check_min_range(min_range, "min_range")
        if mode in ("range", "none"):
            return GlobalNorm(mode, min_range=min_range)
        sample = np.concatenate(self.samples, axis=1)
        unsat = mode == "percentile_unsaturated"
        if self.all_hist and self.hist is not None:
            pct = np.array([hist_percentiles(h, low, high, unsat) for h in self.hist], np.float64)
            lo, hi = pct[:, 0, None, None], pct[:, 1, None, None]
        else:
            values = sample.astype(np.float32)
            pct = np.percentile(values, [low, high], axis=1, keepdims=True)
            lo, hi = pct[0][:, :, None], pct[1][:, :, None]
            if unsat:
                hi = np.array([unsaturated_high(v, h, high) for v, h in zip(values, hi.ravel())])
                hi = hi.astype(np.float64)[:, None, None]
        norm = GlobalNorm(mode, lo, hi, min_range=min_range)  # darkbg: inverted below if need be
        if mode == "percentile_darkbg":
            gray = norm.apply(sample[:, None, :]).mean(0)
            invert = bool(gray.size and np.median(gray) > 0.5)
            norm = GlobalNorm(mode, lo, hi, invert=invert, min_range=min_range)
        return norm

"""One call: :func:`segment` an image (a NumPy array or a file) with a shipped model, a
checkpoint or a run folder, and get its instances back as NumPy arrays.

This module imports only NumPy at import time (``from instembed import segment`` stays light);
PyTorch and the engine are imported by the first call. Models are cached per
(model, device) within the process (:func:`clear_model_cache` empties the cache).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from instembed.structures import Instances

log = logging.getLogger(__name__)

__all__ = ["segment", "split_frames", "clear_model_cache", "MODEL_CACHE_SIZE"]

#: how many (model, device) pairs :func:`segment` keeps loaded (least recently used dropped)
MODEL_CACHE_SIZE = 4

_CACHE: OrderedDict[tuple, tuple[Any, Any]] = OrderedDict()
_LOCK = threading.Lock()

#: dtype kinds accepted as pixel values: unsigned / signed integers, floats
_PIXEL_KINDS = {"u": "unsigned integer", "i": "integer", "f": "float"}
_KIND_NAMES = {
    "b": "a mask, not an intensity image; use .astype(np.uint8) if meant",
    "c": "complex numbers",
    "O": "Python objects",
    "U": "strings",
    "S": "bytes",
    "V": "structured records",
    "M": "dates",
    "m": "time spans",
}


def clear_model_cache() -> None:
    """Forget the models :func:`segment` has loaded (frees their memory once unreferenced)."""
    with _LOCK:
        _CACHE.clear()


# --------------------------------------------------------------------------- checks
def _shape(arr: np.ndarray) -> str:
    return f"shape {tuple(int(s) for s in arr.shape)}"


def _check_array(arr: np.ndarray) -> np.ndarray:
    """``arr`` with a pixel dtype (native byte order), at least one pixel; else a one-line
    TypeError (dtype) / ValueError (empty)."""
    kind = arr.dtype.kind
    if kind not in _PIXEL_KINDS:
        what = _KIND_NAMES.get(kind, "not pixel values")
        raise TypeError(
            f"segment: expected an image of integer or float pixels, got an array of dtype "
            f"{arr.dtype} ({what}), {_shape(arr)}"
        )
    if arr.size == 0:
        raise ValueError(f"segment: expected a non-empty image, got an empty array ({_shape(arr)})")
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _channels_last(shape: tuple[int, ...]) -> bool | None:
    """For one image with channels (3-D): True for (H, W, C), False for (C, H, W), None when
    the channel axis cannot be told (the channel axis has length <= 4, H and W are > 4)."""
    if shape[-1] <= 4 < shape[0]:
        return True
    if shape[0] <= 4 < shape[-1]:
        return False
    return None


def split_frames(
    shape: tuple[int, ...], in_channels: int, frames: bool | None = None, channel=None
) -> tuple[bool, str]:
    """How :func:`segment` reads an array of ``shape`` for a model of ``in_channels``:
    ``(is_stack, layout)`` with ``layout`` the axes of one frame, ``"HW"``, ``"HWC"`` or
    ``"CHW"``. ValueError (one line) for a shape it cannot read or an ambiguous one.

    * 2-D: one gray image ``(H, W)`` (``frames=True`` is refused: there is no frame axis).
    * 3-D, the channel axis (length <= 4) first or last and H, W > 4: one image ``(H, W, C)``
      or ``(C, H, W)``; both end axes > 4: a stack of gray frames ``(T, H, W)``.
      Ambiguous: ``(C, H, W)`` with C in 2..4 for a **1-channel** model may be C channels of one
      image or C gray frames -- refused unless ``frames`` says which (``channel=`` given
      means one image with channels).
    * 4-D: a stack ``(T, H, W, C)`` or ``(T, C, H, W)`` of images with channels.
    * ``frames=True``: the first axis is the frame axis (3-D: ``(T, H, W)``; 4-D as above);
      ``frames=False``: one image (2-D, or 3-D with channels).
    """
    ndim = len(shape)
    got = f"an array of shape {tuple(shape)}"
    if ndim == 2:
        if frames:
            raise ValueError(
                f"segment: frames=True needs a stack (T, H, W) or (T, H, W, C), got {got}"
            )
        return False, "HW"
    if ndim == 4:
        if frames is False:
            raise ValueError(
                f"segment: frames=False needs one image (H, W) or (H, W, C) / (C, H, W), got {got}"
            )
        last = _channels_last(shape[1:])
        if last is None:
            raise ValueError(
                "segment: expected a stack of images with channels (T, H, W, C) or "
                f"(T, C, H, W) with C <= 4 and H, W > 4, got {got}"
            )
        return True, "HWC" if last else "CHW"
    if ndim != 3:
        raise ValueError(
            "segment: expected an image (H, W), (H, W, C), (C, H, W) or a stack (T, H, W), "
            f"(T, H, W, C), got {got} ({ndim}-D)"
        )
    if frames:
        return True, "HW"
    last = _channels_last(shape)
    if last is None:
        if frames is None and shape[0] > 4 and shape[-1] > 4 and channel is None:
            return True, "HW"
        raise ValueError(
            "segment: cannot tell the channel axis of a 3-D image: expected (H, W, C) or "
            f"(C, H, W) with C <= 4 and H, W > 4{' or a stack (T, H, W)' if frames is None else ''}"
            f", got {got}"
        )
    if frames is None and channel is None and not last and in_channels == 1 and 1 < shape[0] <= 4:
        raise ValueError(
            f"segment: {got} is ambiguous for a 1-channel model: {shape[0]} gray frames or one "
            f"image of {shape[0]} channels? Pass frames=True (a stack, one result per frame) or "
            "frames=False (one image, channels averaged to gray; channel=C picks one)"
        )
    return False, "HWC" if last else "CHW"


# --------------------------------------------------------------------------- preparation
def _prepare(
    chw: np.ndarray,
    mode: str,
    channels: int,
    channel: int | None,
    notice: list,
    min_range: float = 0.0,
) -> np.ndarray:
    """Raw ``(C, H, W)`` pixels -> the ``(channels, H, W)`` float32 image the model takes, by
    the steps of :func:`instembed.data.io.load_image` (channel pick, normalisation with the
    floor ``min_range`` on the percentile range, averaging to gray with a logged notice /
    repeating gray)."""
    from instembed.data.io import model_channels

    def average_notice(n: int) -> None:
        if not notice:
            notice.append(True)
            log.warning(
                "segment: the %d image channels were averaged to 1 gray channel for a "
                "1-channel model; to use one channel instead pass channel=C (C in 0..%d)",
                n,
                n - 1,
            )

    img = model_channels(chw, mode, channels, channel, "segment", average_notice, min_range)
    if not np.isfinite(img).all():
        bad = int((~np.isfinite(img)).sum())
        raise ValueError(
            f"segment: expected finite pixel values, got {bad} NaN or infinite value(s) "
            f"after normalisation {mode!r}"
        )
    return np.ascontiguousarray(img, np.float32)


def _frame_chw(frame: np.ndarray, layout: str) -> np.ndarray:
    """One frame in ``layout`` -> ``(C, H, W)``, a 4th (alpha) channel dropped (as
    :func:`instembed.data.normalize.to_chw` does for files)."""
    if layout == "HW":
        return frame[None]
    chw = np.moveaxis(frame, -1, 0) if layout == "HWC" else frame
    return chw[:3] if chw.shape[0] == 4 else chw


# --------------------------------------------------------------------------- model cache
def _cache_key(model, device) -> tuple:
    """(what names the weights, device): a checkpoint file / run folder by its resolved file,
    modification time and size (a rewritten checkpoint is loaded again); a shipped model by
    its name (checked against its sha256 when first loaded)."""
    from instembed.engine.predict import resolve_model

    path = Path(model)
    if path.exists():
        ckpt = resolve_model(path).resolve()
        st = ckpt.stat()
        return ("file", str(ckpt), st.st_mtime_ns, st.st_size, str(device))
    return ("name", str(model), str(device))


def _load(model, device):
    """(network, config) of ``model`` on ``device``, loaded once per process (LRU of
    :data:`MODEL_CACHE_SIZE`)."""
    from instembed.engine import predict as P

    key = _cache_key(model, device)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        loaded = P.load_model(model, device)
        _CACHE[key] = loaded
        while len(_CACHE) > MODEL_CACHE_SIZE:
            _CACHE.popitem(last=False)
        return loaded


# --------------------------------------------------------------------------- the call
def segment(
    image,
    model: str | os.PathLike = "bbbc039-nuclei",
    *,
    tile: int | None = None,
    tta: bool = False,
    normalize: str = "auto",
    min_range: float | None = None,
    device: str | None = None,
    scale: float | str | None = None,
    diameter: float | None = None,
    channel: int | None = None,
    frames: bool | None = None,
    cluster: dict | None = None,
    progress=None,
) -> Instances | list[Instances]:
    """Segment one image, or a stack of frames, with a model; the instances as NumPy arrays.

    Args:
        image: a NumPy array (or anything ``np.asarray`` takes that has ``__array__``, e.g. a
            CPU torch tensor) of integer or float pixels, or a path (``str`` /
            ``os.PathLike``) read exactly as ``instembed predict`` reads it (one image). Array
            layouts (see :func:`split_frames`):

            * ``(H, W)``: one gray image;
            * ``(H, W, C)`` / ``(C, H, W)``: one image whose channel axis is the end axis of
              length <= 4 (H, W > 4); a 4th channel is alpha and dropped;
            * ``(T, H, W)`` with T > 4 and W > 4: a stack of T gray frames; ``(T, H, W, C)`` /
              ``(T, C, H, W)``: a stack of images with channels;
            * ambiguous: ``(C, H, W)`` with C in 2..4 for a 1-channel model (all shipped models
              are) is refused unless ``frames=True`` (C frames) or ``frames=False`` (one image
              of C channels) says which; ``channel=`` given implies one image.

            Channels are matched to the model as predict does: a multi-channel image for a
            1-channel model is averaged to gray (a warning is logged; ``channel=C`` takes
            channel C instead), a gray image for a 3-channel model is repeated.
        model: a shipped model name (``bbbc039-nuclei``, ``dsb2018-nuclei``,
            ``bbbc010-worms``), a checkpoint ``.pt`` or a run folder. Loaded once per
            (model, device) in the process.
        tile: block size for block-by-block segmentation (>= 16 px); default: images with a
            side over 1024 px are segmented in 512 px blocks, smaller ones whole.
        tta: test-time augmentation (8 flips/rotations).
        normalize: ``"auto"`` (the model's own normalisation, from its config: what predict
            uses), or one of :data:`instembed.data.normalize.NORMALIZATIONS` (``"none"``: the
            pixels are used as given, cast to float32). Each frame of a stack is normalised on
            its own, as predict normalises each file.
        min_range: floor on the percentile range of the percentile normalisations, in the
            image's raw intensity units (``(x - lo) / max(hi - lo, min_range)``); ``None``: the
            model's (``data.reader_params.min_range`` of its config, 0 when absent).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``; ``None``/``"auto"``: CUDA when
            available, else CPU.
        scale: resize factor before the network (0.5 for objects twice the size of the
            training data's); results come back at the image's size. ``None`` / ``"auto"``:
            1, unless the objects found at scale 1 are far larger than those the model was
            trained on; then the image is segmented again, shrunk towards the training median,
            step by step while they still come out too large
            (:func:`instembed.data.sizes.auto_search`; never enlarged). ``meta["scale"]`` holds
            the factor used, ``meta["auto_trail"]`` each pass's factor and object size.
        diameter: the objects' typical diameter in pixels, instead of ``scale``: resized by
            the model's training median diameter / ``diameter``.
        channel: use channel ``channel`` (0-based) of a multi-channel image instead of the
            average.
        frames: ``True``: the array's first axis is a stack of frames; ``False``: it is one
            image; ``None``: decided from the shape as above. With a path, ``frames=True``
            reads the file's pixels as a stack (a multi-page TIFF).
        cluster: overrides of the model's clustering parameters, e.g. ``{"seed_thresh": 0.7,
            "min_size": 32}`` (as ``instembed predict --cluster KEY=VALUE``; the method is the
            model's), checked like predict's.
        progress: ``progress(done, total)``, called after each block of an image segmented
            block by block (an exception it raises stops the call).

    Returns:
        One :class:`~instembed.structures.Instances` with NumPy fields -- ``labels`` ``(H, W)``
        int32 (0 = background, ids 1..N), ``scores`` ``(N,)`` float32, ``classes`` ``(N,)`` or
        None, ``masks`` ``(N, H, W)`` bool for models whose instances may overlap
        (``bbbc010-worms``; ``labels`` then paints the masks, higher score on top), else None;
        ``masks_or_labels`` is what predict writes -- or, for a stack, a list of them, one
        per frame. ``meta`` holds ``model`` and ``normalize`` (and ``min_range`` when not 0)
        besides predict's timing.

    Raises:
        TypeError: ``image`` is neither an array nor a path, or its dtype is not integer/float
            (bool, complex, object, ...).
        ValueError: an empty image, a shape that is not one of the layouts above or is
            ambiguous, a channel the image lacks, non-finite pixels, an unknown
            normalisation / device, a bad ``tile`` / ``scale``; ``ImageReadError`` (a
            ValueError) for an unreadable file. FileNotFoundError: an unknown model.
        All messages are one line saying what was expected and what was received.
    """
    from instembed.data.normalize import NORMALIZATIONS, check_min_range, model_normalization

    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            "segment: expected model to be a shipped model name, a checkpoint path or a run "
            f"folder, got {type(model).__name__}"
        )
    if normalize != "auto" and normalize not in NORMALIZATIONS:
        raise ValueError(
            f"segment: expected normalize 'auto' or one of {list(NORMALIZATIONS)}, "
            f"got {normalize!r}"
        )
    if min_range is not None:
        min_range = check_min_range(min_range, "segment: min_range")
    if channel is not None and (
        isinstance(channel, bool) or not isinstance(channel, (int, np.integer)) or channel < 0
    ):
        raise ValueError(f"segment: expected channel to be an int >= 0 or None, got {channel!r}")
    channel = None if channel is None else int(channel)
    if frames not in (None, True, False):
        raise TypeError(f"segment: expected frames True, False or None, got {frames!r}")
    if tile is not None and (
        isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 16
    ):
        raise ValueError(f"segment: expected tile to be an int >= 16 pixels or None, got {tile!r}")

    path = None
    if isinstance(image, (str, os.PathLike)):
        path = image
    elif isinstance(image, np.ndarray) or (
        hasattr(image, "__array__") and not isinstance(image, (list, tuple))
    ):
        image = _check_array(np.asarray(image))
    else:
        hint = " (stack frames with np.stack(...))" if isinstance(image, (list, tuple)) else ""
        raise TypeError(
            f"segment: expected a NumPy array or an image path, got {type(image).__name__}{hint}"
        )
    if path is not None and frames:
        from instembed.data.io import read_image

        image, path = _check_array(read_image(path)), None

    from instembed.engine.distributed import resolve_device
    from instembed.engine.predict import Predictor

    dev = resolve_device("auto" if device is None else str(device), key="segment device")
    net, cfg = _load(model, dev)
    predictor = Predictor(
        net,
        cfg,
        device=dev,
        tile=tile,
        tta=bool(tta),
        scale="auto" if scale is None else scale,
        diameter=diameter,
    )
    from instembed.engine.config import check_cluster

    if cluster is not None and not isinstance(cluster, dict):
        raise TypeError(
            f"segment: expected cluster to be a dict or None, got {type(cluster).__name__}"
        )
    base, key = predictor.cluster, "model cluster"
    if cluster:
        import dataclasses

        base = dataclasses.replace(base, params={**base.params, **cluster})
        key = "segment cluster"
    predictor.cluster = check_cluster(base, require=True, key=key)
    mode, floor = model_normalization(cfg.data.reader_params, "model data.reader_params")
    mode = mode if normalize == "auto" else normalize
    floor = floor if min_range is None else min_range
    meta = {"model": str(model), "normalize": mode}
    if floor:
        meta["min_range"] = floor

    if path is not None:
        from instembed.data.io import load_image

        img, _ = load_image(
            path, mode, channels=predictor.in_channels, channel=channel, min_range=floor
        )
        return _run(predictor, [img], meta, progress)[0]

    stack, layout = split_frames(image.shape, predictor.in_channels, frames, channel)
    notice: list = []
    items = list(image) if stack else [image]
    chans = predictor.in_channels
    imgs = [_prepare(_frame_chw(x, layout), mode, chans, channel, notice, floor) for x in items]
    results = _run(predictor, imgs, meta, progress)
    return results if stack else results[0]


def _run(predictor, images: list[np.ndarray], meta: dict, progress=None) -> list[Instances]:
    out = []
    for img in images:
        pred = predictor(img, progress=progress).numpy()
        pred.meta.update(meta)
        out.append(pred)
    return out

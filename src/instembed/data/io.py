"""Reading and writing images and label files (PNG, TIFF, JPEG), label decoding, normalisation.

* :func:`read_image` returns the pixels as stored: ``(H, W)`` or ``(H, W, C)`` (TIFF may also be
  ``(C, H, W)``), native dtype (8/16/32-bit integer or float). Palette PNGs are expanded to RGB.
* :func:`read_labels` returns an instance label image ``(H, W)`` int32 or a mask stack
  ``(N, H, W)`` bool, decoding the label encoding (see :data:`LABEL_ENCODINGS`).
* :func:`to_chw` + :func:`normalize_image` turn raw pixels into the ``(C, H, W)`` float32 image of
  a :class:`~instembed.data.sample.Sample`.
* :func:`write_labels` / :func:`write_image` write them back; :func:`probe` reads only a header.

Mask-stack TIFF layout (written by :func:`write_labels` for ``(N, H, W)`` bool stacks and read
back by :func:`read_labels`): one TIFF, ``N`` pages of ``H x W`` ``uint8`` (0 = outside, 255 =
inside instance ``k``), page ``k - 1`` = instance ``k``; tifffile's JSON ImageDescription holds
``{"shape": [N, H, W], "axes": "QYX", "instembed": "mask_stack"}``. An empty stack (``N = 0``)
is written as an all-zero label image instead.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")

#: label encodings understood by :func:`read_labels`
LABEL_ENCODINGS = {
    "auto": "pick one of the below from the file's content",
    "ids": "integer label image: 0 background, k > 0 instance id (palette PNG: palette index)",
    "rgb": "colour-coded: each distinct non-black colour is one instance",
    "components": "each 4-connected region of one non-zero value is one instance (BBBC039)",
    "binary": "foreground mask: each 4-connected foreground region is one instance",
    "stack": "(N, H, W) masks, one per instance, may overlap",
}


class ImageReadError(ValueError):
    """A file could not be read or decoded (missing, unreadable, truncated, wrong content)."""


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in TIFF_SUFFIXES


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Pixels of an image file as stored: ``(H, W)``, ``(H, W, C)`` or (TIFF) ``(C, H, W)``.

    PNG/JPEG/BMP go through Pillow (8-bit, 16-bit gray ``I;16``, 32-bit ``I``/``F``, RGB(A);
    palette images are expanded to RGB(A)); TIFF through tifffile (any dtype, multi-page stacks).
    Raises :class:`ImageReadError` naming the file when it is missing, unreadable or truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    try:
        if _is_tiff(path):
            import tifffile

            return np.asarray(tifffile.imread(path))
        from PIL import Image

        with Image.open(path) as im:
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode == "LA":
                im = im.convert("RGBA")
            elif im.mode in ("1",):
                im = im.convert("L")
            return np.asarray(im).copy()
    except ImageReadError:
        raise
    except Exception as err:  # Pillow / tifffile raise many types for broken files
        raise ImageReadError(f"{path}: cannot read image ({type(err).__name__}: {err})") from err


def _read_palette_indices(path: Path) -> np.ndarray | None:
    """Palette PNG -> (H, W) uint8 indices (the label ids of CVPPP-style files); else None."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode != "P":
                return None
            return np.asarray(im).copy()
    except Exception as err:
        raise ImageReadError(f"{path}: cannot read image ({type(err).__name__}: {err})") from err


def _tiff_is_mask_stack(path: Path) -> bool:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            meta = tif.shaped_metadata or ()
    except Exception:
        return False
    return any(isinstance(m, dict) and m.get("instembed") == "mask_stack" for m in meta)


@dataclass
class ImageInfo:
    """What a file header says: ``shape`` (H, W), ``channels``, ``dtype`` name, ``pages``."""

    shape: tuple[int, int]
    channels: int
    dtype: str
    pages: int = 1


_PIL_MODES = {
    "1": (1, "bool"),
    "L": (1, "uint8"),
    "P": (1, "uint8"),
    "LA": (2, "uint8"),
    "I;16": (1, "uint16"),
    "I;16B": (1, "uint16"),
    "I;16L": (1, "uint16"),
    "I": (1, "int32"),
    "F": (1, "float32"),
    "RGB": (3, "uint8"),
    "RGBA": (4, "uint8"),
    "CMYK": (4, "uint8"),
}


def probe(path: str | os.PathLike) -> ImageInfo:
    """Read only the header of ``path`` and check that the file is complete.

    Cheap (no pixel decoding): PNG must end with its ``IEND`` chunk, JPEG with its end marker,
    and every TIFF strip/tile must lie inside the file. Raises :class:`ImageReadError`.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    size = path.stat().st_size
    if size == 0:
        raise ImageReadError(f"{path}: file is empty")
    if _is_tiff(path):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                pages = list(tif.pages)
                page = pages[0]
                for p in pages:
                    ends = [o + c for o, c in zip(p.dataoffsets, p.databytecounts)]
                    if ends and max(ends) > size:
                        raise ImageReadError(
                            f"{path}: truncated TIFF (pixel data ends at byte {max(ends)}, "
                            f"file has {size} bytes)"
                        )
                series = tif.series[0]
                shape = tuple(series.shape)
                axes = series.axes
                dtype = str(series.dtype)
        except ImageReadError:
            raise
        except Exception as err:
            raise ImageReadError(f"{path}: cannot read TIFF header ({err})") from err
        h, w = (page.imagelength, page.imagewidth)
        chans = 1
        if "S" in axes:
            chans = shape[axes.index("S")]
        elif "C" in axes:
            chans = shape[axes.index("C")]
        return ImageInfo((int(h), int(w)), int(chans), dtype, len(pages))
    from PIL import Image

    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            fh.seek(max(0, size - 16))
            tail = fh.read()
        if head.startswith(b"\x89PNG") and b"IEND" not in tail:
            raise ImageReadError(f"{path}: truncated PNG (no IEND chunk at the end)")
        if head.startswith(b"\xff\xd8") and not tail.rstrip(b"\x00").endswith(b"\xff\xd9"):
            raise ImageReadError(f"{path}: truncated JPEG (no end-of-image marker)")
        with Image.open(path) as im:
            w, h = im.size
            chans, dtype = _PIL_MODES.get(im.mode, (len(im.getbands()), "uint8"))
    except ImageReadError:
        raise
    except Exception as err:
        raise ImageReadError(f"{path}: cannot read image header ({err})") from err
    return ImageInfo((int(h), int(w)), chans, dtype)


# ---------------------------------------------------------------------------------------------
# images -> (C, H, W) float32
# ---------------------------------------------------------------------------------------------


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
) -> np.ndarray:
    """Map the ``low``/``high`` percentiles of ``image`` (C, H, W) to 0/1 (float32, not clipped).

    The usual normalisation for 12/16-bit microscopy (as in CSBDeep/StarDist, whose defaults
    1 / 99.8 are kept). A constant image maps to 0.
    """
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
            lo[c], hi[c] = _hist_percentiles(v, (low, high))
        if not (per_channel and image.ndim == 3):
            lo, hi = lo[0], hi[0]
    else:
        axes = tuple(range(1, x.ndim)) if per_channel and x.ndim == 3 else None
        lo, hi = np.percentile(x, [low, high], axis=axes, keepdims=True)
    return ((x - lo) / np.maximum(hi - lo, eps)).astype(np.float32)


def _hist_percentiles(values: np.ndarray, qs) -> list[float]:
    """numpy.percentile(values, q) (method 'linear') for small non-negative integers."""
    cum = np.cumsum(np.bincount(values))
    n = int(cum[-1])
    out = []
    for q in qs:
        pos = q / 100.0 * (n - 1)
        k = int(np.floor(pos))
        a = int(np.searchsorted(cum, k, side="right"))  # value at sorted index k
        b = int(np.searchsorted(cum, min(k + 1, n - 1), side="right"))
        out.append(a + (pos - k) * (b - a))
    return out


def range_normalize(image: np.ndarray) -> np.ndarray:
    """Integer images divided by their dtype's maximum (uint8 / 255, ...); floats unchanged."""
    if np.issubdtype(image.dtype, np.integer):
        return (image.astype(np.float32) / np.iinfo(image.dtype).max).astype(np.float32)
    if image.dtype == bool:
        return image.astype(np.float32)
    return image.astype(np.float32)


NORMALIZATIONS = ("percentile", "percentile_darkbg", "range", "none")


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


def normalize_image(image: np.ndarray, mode: str = "percentile") -> np.ndarray:
    """Normalise a ``(C, H, W)`` image: ``"percentile"`` (1 / 99.8 -> 0 / 1),
    ``"percentile_darkbg"`` (the same, then inverted when the background is bright, see
    :func:`dark_background`), ``"range"`` (divide by the dtype maximum) or ``"none"`` (cast to
    float32)."""
    if mode == "percentile":
        return percentile_normalize(image)
    if mode == "percentile_darkbg":
        return dark_background(percentile_normalize(image))
    if mode == "range":
        return range_normalize(image)
    if mode == "none":
        return np.asarray(image, np.float32)
    raise ValueError(f"unknown normalisation {mode!r}; expected one of {NORMALIZATIONS}")


def load_image(
    path: str | os.PathLike, normalize: str = "percentile", channels: int | None = None
) -> tuple[np.ndarray, str]:
    """Read ``path`` as a ``(C, H, W)`` float32 image; returns ``(image, raw dtype name)``.

    ``channels=1`` averages colour channels to gray; ``channels=3`` repeats a gray channel.
    """
    raw = read_image(path)
    chw = to_chw(raw, path=str(path))
    img = normalize_image(chw, normalize)
    if channels is not None and img.shape[0] != channels:
        if channels == 1:
            img = img.mean(0, keepdims=True)
        elif img.shape[0] == 1:
            img = np.repeat(img, channels, 0)
        else:
            raise ImageReadError(
                f"{path}: image has {img.shape[0]} channels, cannot make {channels}"
            )
    return np.ascontiguousarray(img, np.float32), str(raw.dtype)


# ---------------------------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------------------------


def _components(values: np.ndarray) -> np.ndarray:
    """Label each 4-connected region of equal non-zero value (scikit-image ``label``)."""
    from skimage.measure import label

    return label(values, background=0, connectivity=1).astype(np.int32)


def _rgb_ids(rgb: np.ndarray) -> np.ndarray:
    """Colour-coded labels -> ids: each distinct non-zero colour, numbered by colour code."""
    code = np.zeros(rgb.shape[:2], np.int64)
    for c in range(rgb.shape[2]):
        code = code * 256 + rgb[..., c].astype(np.int64)
    _, inv = np.unique(code, return_inverse=True)
    ids = inv.reshape(code.shape).astype(np.int32)
    if (code == 0).any():
        return ids  # black -> index 0 = background, colours -> 1..K
    return ids + 1


def _check_integer(arr: np.ndarray, path) -> np.ndarray:
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
            raise ImageReadError(
                f"{path}: label image must hold integer ids, got non-integer values "
                f"(dtype {arr.dtype})"
            )
        if arr.size and arr.max() > np.iinfo(np.int32).max:
            raise ImageReadError(f"{path}: label ids up to {arr.max()} exceed int32")
        arr = arr.astype(np.int64)
    elif not np.issubdtype(arr.dtype, np.integer):
        raise ImageReadError(f"{path}: label image must be integer, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise ImageReadError(f"{path}: label image has negative ids (min {arr.min()})")
    return arr


def _check_not_saturated(arr: np.ndarray, path) -> None:
    """A uint8/int8/uint16 label image whose non-zero ids fill its whole range has overflowed."""
    if arr.dtype in (np.uint8, np.int8, np.uint16, np.int16):
        top = np.iinfo(arr.dtype).max
        if arr.size and arr.max() == top:
            n = len(np.unique(arr[arr > 0]))
            if n >= top:
                raise ImageReadError(
                    f"{path}: label image uses all {top} non-zero ids of {arr.dtype}: it holds "
                    "more instances than its dtype allows (ids have overflowed); save it as "
                    "16/32-bit TIFF"
                )


def decode_labels(raw: np.ndarray, encoding: str = "auto", path=None) -> tuple[np.ndarray, str]:
    """Decode a raw label array; returns ``(labels, encoding used)``.

    ``labels`` is ``(H, W)`` int32 (0 = background) or, for ``"stack"``, ``(N, H, W)`` bool.
    ``"auto"``: a 3-D array that is not ``(H, W, 3|4)`` colour is a stack; colour with
    G = B = 0 (BBBC039) uses the components of R; other colour is ``"rgb"``; a 2-D image with
    one non-zero value is ``"binary"``; otherwise ``"ids"``.
    """
    if encoding not in LABEL_ENCODINGS:
        raise ValueError(
            f"unknown label encoding {encoding!r}; expected one of {list(LABEL_ENCODINGS)}"
        )
    colour = raw.ndim == 3 and raw.shape[-1] in (3, 4) and raw.shape[0] > 4
    if encoding == "auto":
        if raw.ndim == 3 and not colour:
            encoding = "stack"
        elif colour:
            rgb = raw[..., :3]
            encoding = "components" if not rgb[..., 1:].any() else "rgb"
        elif raw.ndim == 2:
            arr = _check_integer(raw, path)
            nz = np.unique(arr)
            encoding = "binary" if len(nz[nz > 0]) == 1 else "ids"
        else:
            raise ImageReadError(f"{path}: label array of shape {raw.shape} not understood")
    if encoding == "stack":
        if raw.ndim == 2:
            raw = raw[None]
        if raw.ndim != 3:
            raise ImageReadError(f"{path}: mask stack must be (N, H, W), got shape {raw.shape}")
        arr = _check_integer(raw, path)
        return arr > 0, "stack"
    if encoding == "rgb":
        if not colour:
            raise ImageReadError(f"{path}: 'rgb' labels need an (H, W, 3|4) file, got {raw.shape}")
        return _rgb_ids(raw[..., :3]), "rgb"
    if colour:
        if raw[..., 1:3].any():
            raise ImageReadError(
                f"{path}: colour label file with G/B content cannot use encoding {encoding!r} "
                "(use 'rgb')"
            )
        raw = raw[..., 0]
    if raw.ndim != 2:
        raise ImageReadError(f"{path}: label image must be (H, W), got shape {raw.shape}")
    arr = _check_integer(raw, path)
    if encoding in ("components", "binary"):
        if encoding == "binary":
            arr = arr > 0
        return _components(arr), encoding
    _check_not_saturated(arr, path)
    if arr.size and arr.max() > np.iinfo(np.int32).max:
        raise ImageReadError(f"{path}: label ids up to {arr.max()} exceed int32")
    return arr.astype(np.int32, copy=False), "ids"


def read_labels(path: str | os.PathLike, encoding: str = "auto", *, return_encoding: bool = False):
    """Read an instance label file: ``(H, W)`` int32 label image or ``(N, H, W)`` bool stack.

    ``path`` may also be a **folder of binary masks** (one file per instance, sorted by name),
    which gives a stack. Palette PNGs give their palette indices (CVPPP), RGB(A) files are
    decoded by colour (see :func:`decode_labels`), a mask-stack TIFF gives its stack. With
    ``return_encoding`` the result is ``(labels, encoding)``.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        masks = [decode_labels(read_image(f), "binary", f)[0] > 0 for f in files]
        if not masks:
            raise ImageReadError(f"{path}: mask folder holds no image files")
        shapes = {m.shape for m in masks}
        if len(shapes) > 1:
            raise ImageReadError(f"{path}: masks differ in size: {sorted(shapes)}")
        out: tuple[np.ndarray, str] = (np.stack(masks), "stack")
    else:
        raw = None
        if encoding in ("auto", "ids") and path.suffix.lower() == ".png":
            raw = _read_palette_indices(path)
            if raw is not None:
                out = decode_labels(raw, "ids", path)
        if raw is None:
            raw = read_image(path)
            if encoding == "auto" and _is_tiff(path) and raw.ndim == 3:
                stack = _tiff_is_mask_stack(path) or raw.shape[-1] not in (3, 4)
                out = decode_labels(raw, "stack" if stack else "auto", path)
            else:
                out = decode_labels(raw, encoding, path)
    return out if return_encoding else out[0]


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------


def write_labels(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Write a label image ``(H, W)`` (PNG: uint8/uint16 as needed; TIFF: uint16/uint32) or a
    mask stack ``(N, H, W)`` bool (TIFF only, layout in the module docstring).

    Raises ``ValueError`` for negative ids, non-integer labels, or more ids than the file type
    can hold (PNG: 65535).
    """
    path = Path(path)
    labels = np.asarray(labels)
    suffix = path.suffix.lower()
    if suffix not in (".png", *TIFF_SUFFIXES):
        raise ValueError(f"{path}: labels can be written as .png, .tif or .tiff, not {suffix!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if labels.ndim == 3:
        if labels.dtype != bool:
            raise ValueError(f"{path}: a mask stack must be bool (N, H, W), got {labels.dtype}")
        if suffix == ".png":
            raise ValueError(f"{path}: a mask stack (N, H, W) needs a TIFF file, not PNG")
        if labels.shape[0] == 0:
            return write_labels(path, np.zeros(labels.shape[1:], np.uint16))
        import tifffile

        tifffile.imwrite(
            path,
            labels.astype(np.uint8) * 255,
            photometric="minisblack",
            metadata={"axes": "QYX", "instembed": "mask_stack"},
            compression="zlib",
        )
        return path
    if labels.ndim != 2:
        raise ValueError(f"{path}: labels must be (H, W) or (N, H, W), got shape {labels.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(f"{path}: labels must be integer, got dtype {labels.dtype}")
    top = int(labels.max()) if labels.size else 0
    if labels.size and labels.min() < 0:
        raise ValueError(f"{path}: labels must be >= 0, got min {labels.min()}")
    if suffix == ".png":
        if top > 65535:
            raise ValueError(
                f"{path}: {top} ids do not fit a 16-bit PNG (max 65535); write a .tif instead"
            )
        from PIL import Image

        dtype = np.uint8 if top < 256 else np.uint16
        Image.fromarray(labels.astype(dtype)).save(path)
        return path
    import tifffile

    if top > np.iinfo(np.uint32).max:
        raise ValueError(f"{path}: {top} ids do not fit uint32")
    dtype = np.uint16 if top <= 65535 else np.uint32
    tifffile.imwrite(path, labels.astype(dtype), compression="zlib")
    return path


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write a ``(C, H, W)`` float image in [0, 1]: PNG as 8-bit gray/RGB (values clipped),
    TIFF as float32 ``(H, W)`` or ``(H, W, C)``."""
    path = Path(path)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"{path}: image must be (C, H, W) with C in (1, 3), got {image.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    hwc = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
    if path.suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        tifffile.imwrite(path, hwc.astype(np.float32), compression="zlib")
        return path
    from PIL import Image

    Image.fromarray(np.round(np.clip(hwc, 0, 1) * 255).astype(np.uint8)).save(path)
    return path

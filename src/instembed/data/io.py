"""Reading and writing images and label files (PNG, TIFF, JPEG), label decoding (normalisation:
:mod:`instembed.data.normalize`, re-exported here).

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

from instembed.data.errors import ImageReadError
from instembed.data.normalize import (  # noqa: F401  (re-exported: the io API)
    NORMALIZATIONS,
    check_min_range,
    dark_background,
    normalize_image,
    percentile_normalize,
    range_normalize,
    to_chw,
)

log = logging.getLogger(__name__)

#: paths whose channel averaging was already logged (the notice comes once per image)
_AVERAGED: set[str] = set()

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


def is_hidden(path: str | os.PathLike) -> bool:
    """Whether a file or folder name starts with ``.``: macOS ``._*`` AppleDouble files,
    ``.DS_Store``, ``.ipynb_checkpoints``, ... Every folder listing of the data stage skips them."""
    return Path(path).name.startswith(".")


def list_dir(folder: str | os.PathLike) -> list[Path]:
    """The entries of ``folder`` without hidden ones (:func:`is_hidden`), sorted."""
    return sorted(p for p in Path(folder).iterdir() if not is_hidden(p))


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files (by suffix, :data:`IMAGE_SUFFIXES`) directly in ``folder``, sorted; hidden
    files (``._img.png``, ``.DS_Store``) are skipped."""
    return [p for p in list_dir(folder) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]


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


def model_channels(
    chw: np.ndarray,
    normalize: str,
    channels: int | None,
    channel: int | None,
    where: str,
    on_average=None,
    min_range: float = 0.0,
) -> np.ndarray:
    """Raw ``(C, H, W)`` pixels -> the normalised image with the caller's channel count: pick
    ``channel`` (when given), normalise (``min_range``: the floor on the percentile range, see
    :func:`normalize_image`), then average colour to gray (``channels=1``; calls
    ``on_average(C)`` first, for the caller's notice) or repeat gray (``channels > 1``).
    Errors are :class:`ImageReadError` starting with ``where`` (a file name, or ``segment``)."""
    if channel is not None:
        if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)):
            raise TypeError(f"channel must be an int or None, got {channel!r}")
        if not 0 <= channel < chw.shape[0]:
            raise ImageReadError(
                f"{where}: channel {channel} asked for, but the image has {chw.shape[0]} "
                f"channel(s) (0..{chw.shape[0] - 1})"
            )
        chw = chw[channel : channel + 1]
    img = normalize_image(chw, normalize, min_range)
    if channels is not None and img.shape[0] != channels:
        if channels == 1:
            if on_average is not None:
                on_average(img.shape[0])
            img = img.mean(0, keepdims=True)
        elif img.shape[0] == 1:
            img = np.repeat(img, channels, 0)
        else:
            raise ImageReadError(
                f"{where}: the image has {img.shape[0]} channels, the model takes {channels}"
            )
    return img


def load_image(
    path: str | os.PathLike,
    normalize: str = "percentile",
    channels: int | None = None,
    channel: int | None = None,
    min_range: float = 0.0,
) -> tuple[np.ndarray, str]:
    """Read ``path`` as a ``(C, H, W)`` float32 image; returns ``(image, raw dtype name)``.

    ``normalize`` / ``min_range``: the normalisation (:func:`normalize_image`; ``min_range``
    floors the percentile range, in the file's raw intensity units; 0 = off).

    ``channels`` is the channel count the caller needs (the model's): ``channels=1`` averages
    colour channels to gray -- a warning is logged once per image saying so and how to pick one
    channel instead --, ``channels=3`` repeats a gray channel.

    ``channel=c`` (0-based, after a 4th alpha channel is dropped) takes channel ``c`` of a
    multi-channel image instead of averaging: the result is that channel alone (repeated when
    ``channels`` > 1); it is normalised exactly as the averaged image would be, per channel.
    A ``channel`` the image does not have raises :class:`ImageReadError` naming the file;
    ``channel=0`` of a gray image is the image itself.
    """
    raw = read_image(path)
    chw = to_chw(raw, path=str(path))

    def notice(n: int) -> None:
        if str(path) not in _AVERAGED:
            _AVERAGED.add(str(path))
            log.warning(
                "%s: the %d image channels were averaged to 1 gray channel for a 1-channel "
                "model; to use one channel instead pass channel=C (predict: --channel C, "
                "C in 0..%d)",
                path,
                n,
                n - 1,
            )

    img = model_channels(chw, normalize, channels, channel, str(path), notice, min_range)
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
        # float label images are common (Fiji saves labels as 32-bit float): accepted when every
        # value is a whole number, refused (naming the file and a bad value) otherwise
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            raise ImageReadError(
                f"{path}: float label image (dtype {arr.dtype}) holds non-integer values "
                f"(e.g. {arr[bad].flat[0]!r}, {int(bad.sum())} pixel(s)); instance labels must "
                "be whole numbers >= 0 -- is this an image rather than a label file?"
            )
        if arr.size and arr.max() > np.iinfo(np.int32).max:
            raise ImageReadError(f"{path}: label ids up to {arr.max()} exceed int32")
        arr = arr.astype(np.int64)
    elif not np.issubdtype(arr.dtype, np.integer):
        raise ImageReadError(f"{path}: label image must be integer, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise ImageReadError(f"{path}: label image has negative ids (min {arr.min()})")
    return arr


def check_float_labels(path: str | os.PathLike) -> None:
    """Header-time check of a label file stored as float (Fiji writes float32 label TIFFs):
    reads it and raises :class:`ImageReadError` naming the file unless every value is a whole
    number >= 0 (such a file is then read as an integer label image by :func:`read_labels`)."""
    raw = read_image(path)
    if np.issubdtype(raw.dtype, np.floating):
        _check_integer(raw, path)


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

    ``path`` may also be a **folder of binary masks** (one file per instance, sorted by name,
    hidden ``.*`` files skipped), which gives a stack. A float label image (Fiji saves labels as
    float32 TIFF) is read as integer ids when all its values are whole numbers >= 0, and refused
    with an :class:`ImageReadError` naming the file otherwise. Palette PNGs give their palette indices (CVPPP), RGB(A) files are
    decoded by colour (see :func:`decode_labels`), a mask-stack TIFF gives its stack. With
    ``return_encoding`` the result is ``(labels, encoding)``.
    """
    path = Path(path)
    if path.is_dir():
        files = image_files(path)
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

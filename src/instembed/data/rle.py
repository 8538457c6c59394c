"""COCO run-length encoding of binary masks: encode and decode, numpy only.

A COCO RLE is ``{"size": [H, W], "counts": ...}``. The runs go over the mask in column-major
(Fortran) order and start with a run of zeros (possibly of length 0). ``counts`` is either the
plain list of run lengths or the compressed ASCII string of the COCO API (``rleToString`` /
``rleFrString``): each value is written as little-endian groups of 5 bits, offset by 48 into
printable ASCII, with bit 0x20 meaning "more groups follow" and bit 0x10 of the last group the
sign; from the third value on, the value stored is the difference to the value two places
before.

:func:`encode_rle` uses ``pycocotools`` when it is installed and :func:`encode_rle_py`
otherwise (same output); :func:`rle_decode` never needs ``pycocotools``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["encode_rle", "encode_rle_py", "rle_decode"]


# --------------------------------------------------------------------------- encode
def _rle_counts(mask: np.ndarray) -> list[int]:
    """Run lengths of a (H, W) bool mask in column-major order, starting with a run of 0s."""
    flat = np.asarray(mask, bool).ravel(order="F")
    if flat.size == 0:
        return [0]
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return counts


def _compress_counts(counts: list[int]) -> str:
    """The COCO API's compressed string of a list of run lengths (see the module docstring)."""
    out = []
    for i, c in enumerate(counts):
        x = int(c) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            # stop once the remaining bits are pure sign extension of this group's bit 0x10
            more = not ((x == 0 and not (ch & 0x10)) or (x == -1 and (ch & 0x10)))
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def encode_rle_py(mask: np.ndarray) -> dict:
    """Compressed COCO RLE of a (H, W) bool mask without pycocotools."""
    mask = np.asarray(mask, bool)
    return {
        "size": [int(mask.shape[0]), int(mask.shape[1])],
        "counts": _compress_counts(_rle_counts(mask)),
    }


def encode_rle(mask: np.ndarray) -> dict:
    """Compressed COCO RLE ``{"size": [H, W], "counts": str}`` (pycocotools when installed)."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        return encode_rle_py(mask)
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


# --------------------------------------------------------------------------- decode
def _rle_string_to_counts(s: str) -> list[int]:
    """Run lengths of a compressed COCO counts string (inverse of :func:`_compress_counts`)."""
    counts: list[int] = []
    i = 0
    while i < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[i]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            i += 1
            k += 1
            if not more and (c & 0x10):  # negative: extend the sign bit
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_decode(rle: dict) -> np.ndarray:
    """COCO RLE (uncompressed ``counts`` list or compressed string) -> (H, W) bool mask."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (bytes, str)):
        counts = _rle_string_to_counts(counts.decode() if isinstance(counts, bytes) else counts)
    counts = np.asarray(counts, np.int64)
    if counts.sum() != h * w:
        raise ValueError(f"RLE counts sum to {counts.sum()}, expected h*w = {h * w}")
    values = np.zeros(len(counts), bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape(w, h).T

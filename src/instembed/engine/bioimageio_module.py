"""The TorchScript module of a bioimage.io package (:mod:`instembed.engine.bioimageio`): raw
image in, label image out.

:class:`Normalize` is :func:`instembed.data.normalize.normalize_image` written in TorchScript so
that its float32 result equals NumPy's bit for bit: the percentiles follow NumPy's ``linear``
method as ``numpy.percentile`` evaluates it on a float32 array (the neighbours' difference in
float32, ``_lerp``'s two branches in float64), or the histogram arithmetic of
``instembed.data.normalize._hist_percentiles`` for uint8 / uint16 pixels; the scaling runs in
float64 and is rounded to float32 once, as NumPy's type promotion does; the dark-background test
takes NumPy's float32 median. :class:`BioimageioModule` normalises each image of a batch and
runs the ``segment`` method of a file of :func:`instembed.engine.export.export_torchscript`
(network + clustering, Neven et al. 2019 for the seeded method).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["BioimageioModule", "Normalize", "bioimageio_module"]


# --------------------------------------------------------------------------- TorchScript
def _numpy_percentile(s: Tensor, q: float) -> Tensor:
    """``numpy.percentile(x, q)`` (method 'linear') per row of ``s`` (C, N): ``s`` is each
    channel's float32 values sorted; float64 (C,) as NumPy returns for a float32 array (the
    neighbours' difference in float32, the interpolation in float64, NumPy's ``_lerp``)."""
    n = s.shape[1]
    vi = (n - 1) * (q / 100.0)
    k = int(math.floor(vi))
    j = k + 1
    if vi >= n - 1:
        k = n - 1
        j = n - 1
    gamma = vi - math.floor(vi)
    a, b = s[:, k], s[:, j]
    diff = (b - a).to(torch.float64)
    if gamma >= 0.5:
        return b.to(torch.float64) - diff * (1.0 - gamma)
    return a.to(torch.float64) + diff * gamma


def _hist_percentile(s: Tensor, q: float) -> Tensor:
    """The percentile of :func:`instembed.data.normalize._hist_percentiles` (the exact
    histogram path for uint8 / uint16 images) per row of the sorted (C, N) float64 values."""
    n = s.shape[1]
    pos = q / 100.0 * (n - 1)
    k = int(math.floor(pos))
    a, b = s[:, k], s[:, min(k + 1, n - 1)]
    return a + (pos - k) * (b - a)


def _dtype_max(x: Tensor) -> float:
    if x.dtype == torch.uint8:
        return 255.0
    if x.dtype == torch.int8:
        return 127.0
    if x.dtype == torch.int16:
        return 32767.0
    if x.dtype == torch.uint16:
        return 65535.0
    if x.dtype == torch.int32:
        return 2147483647.0
    return 9223372036854775807.0


class Normalize(nn.Module):
    """:func:`instembed.data.normalize.normalize_image` in TorchScript: raw (C, H, W) pixels of
    any real dtype -> the float32 image the network takes, equal to NumPy's result.

    ``mode``: ``percentile`` (per-channel 1 / 99.8 percentiles -> 0 / 1; the histogram
    arithmetic for uint8 / uint16 input, NumPy's ``percentile`` for other dtypes, whose values
    are first cast to float32), ``percentile_darkbg`` (then ``1 - x`` when the median of the
    channel mean is above 0.5), ``percentile_unsaturated`` (the 99.8th percentile taken from
    the values below the maximum when it falls on a saturation plateau, as
    :func:`instembed.data.normalize.unsaturated_high`), ``range`` (integers divided by their
    dtype's maximum), ``none``.
    ``min_range``: the floor on the percentile range (raw intensity units, 0 = off) of the
    percentile modes, ``(x - lo) / max(hi - lo, min_range, eps)`` as NumPy's.
    Non-finite results are refused, as :func:`instembed.segment` refuses them."""

    def __init__(
        self,
        mode: str,
        low: float = 1.0,
        high: float = 99.8,
        eps: float = 1e-6,
        min_range: float = 0.0,
    ):
        super().__init__()
        from instembed.data.normalize import NORMALIZATIONS, check_min_range

        if mode not in NORMALIZATIONS:
            raise ValueError(f"normalisation: expected one of {NORMALIZATIONS}, got {mode!r}")
        self.mode, self.low, self.high, self.eps = mode, float(low), float(high), float(eps)
        self.min_range = check_min_range(min_range)
        self.floor = max(self.eps, self.min_range)  # the denominator's lower bound
        self.unsaturated = mode == "percentile_unsaturated"

    def percentile(self, x: Tensor) -> Tensor:
        c = x.shape[0]
        hist = x.dtype == torch.uint8 or x.dtype == torch.uint16
        if hist:
            s = torch.sort(x.reshape(c, -1).to(torch.float64), dim=1)[0]
            lo, hi = _hist_percentile(s, self.low), _hist_percentile(s, self.high)
        else:
            s = torch.sort(x.reshape(c, -1).to(torch.float32), dim=1)[0]
            lo, hi = _numpy_percentile(s, self.low), _numpy_percentile(s, self.high)
        if self.unsaturated:
            hi = hi.clone()
            for i in range(c):  # hi on the plateau of the maximum M: from the values below M
                row = s[i : i + 1]
                top = row[0, -1]
                if bool(hi[i] == top) and bool(row[0, 0] < top):
                    below = row[:, : int((row[0] < top).sum())]  # sorted: the prefix before M
                    if hist:
                        hi[i] = _hist_percentile(below, self.high)[0]
                    else:
                        hi[i] = _numpy_percentile(below, self.high)[0]
        lo, hi = lo.view(c, 1, 1), hi.view(c, 1, 1)
        x32 = x.to(torch.float32).to(torch.float64)
        return ((x32 - lo) / torch.clamp(hi - lo, min=self.floor)).to(torch.float32)

    def dark_background(self, x: Tensor) -> Tensor:
        gray = x[0]
        for i in range(1, x.shape[0]):  # NumPy's mean over axis 0: one add per channel
            gray = gray + x[i]
        if x.shape[0] > 1:
            gray = gray / float(x.shape[0])
        s = torch.sort(gray.reshape(-1))[0]
        n = s.shape[0]
        med = s[n // 2] if n % 2 == 1 else (s[n // 2 - 1] + s[n // 2]) / 2.0
        if float(med) > 0.5:
            return 1.0 - x
        return x

    def forward(self, x: Tensor) -> Tensor:
        if x.is_complex() or x.dtype == torch.bool:
            raise ValueError("expected an image of integer or float pixels")
        if self.mode.startswith("percentile"):
            out = self.percentile(x)
            if self.mode == "percentile_darkbg":
                out = self.dark_background(out)
        elif self.mode == "range" and not x.is_floating_point():
            out = x.to(torch.float32) / _dtype_max(x)
        else:
            out = x.to(torch.float32)
        if not bool(torch.isfinite(out).all()):
            raise ValueError(
                "expected finite pixel values, got NaN or infinite value(s) after "
                f"normalisation {self.mode}"
            )
        return out


class BioimageioModule(nn.Module):
    """Raw images (B, C, H, W) -> int32 labels (B, 1, H, W): each image normalised on its own
    (:class:`Normalize`) and segmented by ``inner.segment`` (a TorchScript file of
    :func:`instembed.engine.export.export_torchscript` with its post-processing)."""

    def __init__(
        self, inner: torch.jit.ScriptModule, mode: str, in_channels: int, min_range: float = 0.0
    ) -> None:
        super().__init__()
        self.inner = inner
        self.normalize = Normalize(mode, min_range=min_range)
        self.in_channels = int(in_channels)

    def forward(self, image: Tensor) -> Tensor:
        if image.dim() != 4 or image.shape[0] < 1 or image.shape[1] != self.in_channels:
            raise ValueError(
                f"expected raw images (B, {self.in_channels}, H, W) with B >= 1, got shape "
                f"{list(image.shape)}"
            )
        out: list[Tensor] = []
        for b in range(image.shape[0]):
            x = self.normalize(image[b])
            labels, _ = self.inner.segment(x.unsqueeze(0))
            out.append(labels.to(torch.int32).unsqueeze(0))
        return torch.stack(out)


def bioimageio_module(
    model: nn.Module, cfg, mode: str, workdir: Path, min_range: float = 0.0
) -> torch.jit.ScriptModule:
    """The scripted :class:`BioimageioModule` of ``model`` (clustering of ``cfg.cluster``,
    normalisation ``mode`` with the floor ``min_range`` on the percentile range). Raises
    ValueError for a model that returns instances itself (Mask R-CNN, ISFCN, recurrent: no
    label-image ``segment`` to compile) or whose clustering has no TorchScript exporter."""
    from instembed.engine.export import export_torchscript

    model = model.eval()
    d = int(getattr(model, "size_divisor", 1) or 1)
    side = 64 + (-64) % d
    c = int(getattr(model, "in_channels", 1))
    with torch.no_grad():
        returns_instances = model(torch.zeros(1, c, side, side)).instances is not None
    if returns_instances:
        raise ValueError(
            f"bioimage.io export: {type(model).__name__} returns instances itself (proposals / "
            "masks, not dense maps clustered into a label image); the package holds models "
            "with a compiled clustering only (seeded, center_offset). Export this model with "
            "--format torchscript"
        )
    try:
        path = export_torchscript(model, cfg, workdir / "inner.ts", postprocessing=True)
    except ValueError as err:
        raise ValueError(
            f"bioimage.io export needs a model whose clustering compiles to TorchScript (the "
            f"package returns a label image): {err}"
        ) from None
    inner = torch.jit.load(str(path), map_location="cpu")
    if not bool(getattr(inner, "has_postprocessing", False)):
        raise ValueError(
            "bioimage.io export: the TorchScript file has no compiled clustering (segment); "
            f"method {cfg.cluster.method!r}"
        )
    return torch.jit.script(BioimageioModule(inner, mode, int(inner.in_channels), min_range))

"""Training-speed options of the :class:`~instembed.engine.trainer.Trainer` (all off by default).

* ``optim.channels_last``: model weights and input images in the channels-last (NHWC) memory
  format. Same function; convolution kernels may sum in another order, so the loss can differ
  from the default in the last bits.
* ``optim.bf16``: the forward pass under ``torch.autocast("cpu", dtype=torch.bfloat16)`` on a
  CPU (the loss and the optimizer stay in float32; CUDA keeps ``optim.amp``). Changes the
  numerics (8-bit mantissa); fast only on CPUs with native bf16 (``avx512_bf16`` / ``amx_bf16``
  flags, :func:`cpu_has_native_bf16`), emulated (slower) elsewhere -- a warning says so.
* ``run.compile``: the training forward through :func:`torch.compile`. When it cannot compile
  (no ``torch.compile``, no C++ compiler, a backend failure on the first step) a warning is
  logged and training continues in eager mode (:class:`CompiledOrEager`).

None of them changes what a checkpoint holds: weights are saved contiguous, in float32, under
the names of the plain model, so checkpoints load into any configuration and resume is exact.
``docs/engine.md`` ("Training speed on a CPU") has the measured ratios.
"""

from __future__ import annotations

import functools
import logging
from contextlib import nullcontext

import torch
from torch import nn

log = logging.getLogger(__name__)

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX), where CPU bf16 autocast
    can pay; elsewhere oneDNN emulates it."""
    flags = cpu_flags()
    if any(f in flags for f in NATIVE_BF16_FLAGS):
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_context(device: torch.device, cuda_amp: bool, cpu_bf16: bool):
    """The autocast context of the training forward: float16 on CUDA when ``cuda_amp``,
    bfloat16 on a CPU when ``cpu_bf16``, else none."""
    if device.type == "cuda" and cuda_amp:
        return torch.autocast("cuda", dtype=torch.float16)
    if device.type == "cpu" and cpu_bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def _to_float(module, inputs, output):
    if isinstance(output, torch.Tensor) and output.is_floating_point():
        return output.float()
    return output


def float32_heads(model: nn.Module) -> list:
    """Make the decoders of an embedding network (``model.decoders``) return float32, so that
    under bf16 autocast the heads' own arithmetic (pixel coordinates added by the
    semi-convolutional embedding, ``exp`` of sigma, ``sigmoid`` of seeds) stays float32: in
    bf16 (8-bit mantissa) coordinates near 10 are rounded to 1/16, i.e. 4 pixels at the shipped
    ``coord_scale`` of 1/64, which changes the spatial-embedding loss several-fold. Returns the
    hook handles (empty for a model without ``decoders``: then autocast alone applies)."""
    decoders = getattr(model, "decoders", None)
    if not isinstance(decoders, nn.ModuleList):
        return []
    return [dec.register_forward_hook(_to_float) for dec in decoders]


def warn_if_emulated_bf16(device: torch.device, cpu_bf16: bool) -> None:
    if device.type == "cpu" and cpu_bf16 and not cpu_has_native_bf16():
        log.warning(
            "optim.bf16: this CPU has no native bf16 (flags %s absent); bf16 autocast is "
            "emulated and usually slower than float32 here",
            "/".join(NATIVE_BF16_FLAGS),
        )


def to_memory_format(x, channels_last: bool):
    """``x`` in channels-last format when ``channels_last`` and it is a 4-d tensor."""
    if channels_last and isinstance(x, torch.Tensor) and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def contiguous_state(state: dict) -> dict:
    """A state dict with every tensor in the default (contiguous) memory format."""
    return {k: v.contiguous() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


class CompiledOrEager(nn.Module):
    """``torch.compile(module)`` that falls back to ``module`` itself, with a logged warning,
    when compiling is not possible: ``torch.compile`` missing or refusing the module, or the
    first compiled call failing (inductor needs a working C++ compiler on a CPU). Errors of
    later calls are not caught: a model that fails in eager mode fails the same way here.

    The wrapped module is ``self.module``; its state dict keys are unchanged (``module.``
    prefix), but the trainer saves the plain model's state, never this wrapper's.
    """

    def __init__(self, module: nn.Module, compile_fn=None, **options) -> None:
        super().__init__()
        self.module = module
        self.compiled = None
        self._checked = False
        fn = compile_fn if compile_fn is not None else getattr(torch, "compile", None)
        if fn is None:
            self._fallback("torch.compile is not available in torch " + torch.__version__)
            return
        try:
            self.compiled = fn(module, **options)
        except Exception as err:  # noqa: BLE001 - any failure means: run eager
            self._fallback(f"{type(err).__name__}: {err}")

    @property
    def is_compiled(self) -> bool:
        return self.compiled is not None

    def _fallback(self, why: str) -> None:
        self.compiled = None
        self._checked = True
        log.warning("run.compile: cannot compile the model (%s); training in eager mode", why)

    def forward(self, *args, **kwargs):
        if self.compiled is None:
            return self.module(*args, **kwargs)
        if self._checked:
            return self.compiled(*args, **kwargs)
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - the first call compiles; eager decides
            self._fallback(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            return self.module(*args, **kwargs)
        self._checked = True
        return out

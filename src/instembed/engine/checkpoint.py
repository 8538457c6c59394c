"""Checkpoints: atomic writes, safe loads, compatibility checks, RNG state capture.

A checkpoint is a plain dict saved with :func:`torch.save` and read back with
``torch.load(weights_only=True)`` only (no arbitrary unpickling). It holds nothing but tensors,
numbers, strings, lists and dicts::

    format        "instembed-checkpoint-v1"
    version       instembed version that wrote it
    config        the resolved run config as a YAML string
    model         model state_dict
    step          optimizer steps done
    optimizer     optimizer state_dict            (training checkpoints)
    scheduler     LR scheduler state_dict         (training checkpoints)
    scaler        AMP GradScaler state_dict       (when mixed precision is on)
    rng           {"torch": uint8 tensor, "numpy": {...}, "python": [...], "cuda": [...]}
    metrics       last validation metrics {name: float}
    best          {"metric": str, "value": float, "step": int}
    size_model    {"mean", "std", "weights": [float], "bias": float, ...}  (optional; scale auto)

Writes go to a temporary file in the same folder, are flushed and fsync'ed, then moved over the
target with :func:`os.replace` (atomic on POSIX), so a crash or a full disk at any moment leaves
either the old or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from instembed import __version__

log = logging.getLogger(__name__)

FORMAT = "instembed-checkpoint-v1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model (message names the file)."""


# --------------------------------------------------------------------------- writing
def _write(obj: Any, fh) -> None:
    """Serialize ``obj`` into the open binary file ``fh`` (a seam for fault-injection tests)."""
    torch.save(obj, fh)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)`` through a temporary file + fsync + :func:`os.replace`.

    On any failure (disk full, Ctrl-C) the temporary file is removed and an existing ``path``
    is left untouched; the exception propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            _write(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def save_checkpoint(
    path: str | Path,
    *,
    model_state: dict[str, torch.Tensor],
    config_yaml: str,
    step: int,
    optimizer: dict | None = None,
    scheduler: dict | None = None,
    scaler: dict | None = None,
    rng: dict | None = None,
    metrics: dict[str, float] | None = None,
    best: dict | None = None,
    size_model: dict | None = None,
) -> Path:
    """Write a checkpoint atomically (see module docstring for the layout). ``size_model``:
    :meth:`instembed.engine.size_model.SizeModel.to_dict`, for ``scale="auto"``."""
    state = {
        "format": FORMAT,
        "version": __version__,
        "config": config_yaml,
        "model": {k: v.detach().cpu() for k, v in model_state.items()},
        "step": int(step),
    }
    for key, value in (
        ("optimizer", optimizer),
        ("scheduler", scheduler),
        ("scaler", scaler),
        ("rng", rng),
        ("metrics", metrics),
        ("best", best),
        ("size_model", size_model),
    ):
        if value is not None:
            state[key] = value
    return atomic_save(state, path)


# --------------------------------------------------------------------------- reading
def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)`` and check its format.

    Raises ``FileNotFoundError`` for a missing file and :class:`CheckpointError` for a file that
    is not an instembed checkpoint (torn, foreign, or holding pickled objects).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": our message says it
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except OSError:  # permissions, I/O errors: the OS message names the file
        raise
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad checkpoint
        raise CheckpointError(
            f"{path}: not a loadable checkpoint: {_why_unloadable(err)}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: expected an {FORMAT} checkpoint, got format {got!r}")
    for key in ("model", "config", "step"):
        if key not in state:
            raise CheckpointError(f"{path}: checkpoint has no {key!r} entry")
    return state


def _why_unloadable(err: Exception) -> str:
    """instembed's own reason for a failed ``torch.load(weights_only=True)``: never torch's text,
    whose advice (``weights_only=False``, allow-listing globals) would run arbitrary code."""
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) or "weights only load failed" in text.lower():
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f"a pickled Python object ({found.group(1)})" if found else "pickled Python objects"
        return (
            f"it holds {what}, and instembed reads only tensors, numbers, strings, lists and "
            "dicts from a checkpoint, for safety (it was not written by instembed, or was "
            "modified since)"
        )
    if isinstance(err, EOFError) or "zip archive" in text or "central directory" in text:
        return "the file is empty, truncated or corrupt (e.g. an interrupted copy or download)"
    first = text.splitlines()[0].strip() if text.strip() else ""
    if not first or "weights_only" in first or "weights only" in first.lower():
        return f"unreadable file ({type(err).__name__})"
    return f"unreadable file ({type(err).__name__}: {first[:200]})"


def check_compatible(
    model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """Raise :class:`CheckpointError` when ``state`` (a state_dict) does not fit ``model``.

    The message lists missing / unexpected parameter names and shape mismatches.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: {source} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(own[k].shape) != tuple(state[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:3]})")
        raise CheckpointError(
            f"{source} does not fit the model {type(model).__name__}: " + "; ".join(parts)
        )


def load_model_state(
    model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """:func:`check_compatible`, then ``model.load_state_dict(state)``."""
    check_compatible(model, state, source)
    model.load_state_dict(state)


def gray_to_colour(
    model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """``state`` of a model that read one gray channel, made loadable into ``model``, the same
    network reading C channels: each convolution weight whose only difference is 1 input
    channel where ``model`` has C is repeated C times and divided by C. On an image whose C
    channels are equal (a gray image repeated) the network computes what it computed on the
    gray image, and on a colour image what it computed on the channel average -- the gray
    model's input -- so training from it starts at the gray model and can learn colour.
    ValueError naming ``source`` when no tensor, or another difference, stands between them."""
    own = model.state_dict()
    out, inflated = dict(state), []
    for k, t in state.items():
        mine = own.get(k)
        if mine is None or mine.shape == t.shape:
            continue
        c = mine.shape[1] if mine.ndim == 4 else 0
        if (
            t.ndim == 4
            and t.shape[1] == 1
            and c > 1
            and mine.shape[:1] + mine.shape[2:] == (t.shape[:1] + t.shape[2:])
        ):
            out[k] = t.repeat(1, c, 1, 1) / c
            inflated.append(k)
        else:
            raise ValueError(
                f"{source}: {k} has shape {tuple(t.shape)}, the model expects "
                f"{tuple(mine.shape)}; only a 1-channel input convolution can be widened"
            )
    if not inflated:
        raise ValueError(f"{source}: no 1-channel input convolution to widen for this model")
    return out


def _channel_layout(model: torch.nn.Module) -> tuple[set[str], set[str]]:
    """(weights whose input is two equal halves concatenated -- the first convolution of each
    U-Net decoder block reads ``cat([upsampled, skip])`` --, transposed-convolution weights,
    stored as (in, out, k, k))."""
    from instembed.models.unet import UNetDecoder

    halves, transposed = set(), set()
    for name, mod in model.named_modules():
        if isinstance(mod, UNetDecoder):
            halves.update(f"{name}.blocks.{i}.0.0.weight" for i in range(len(mod.blocks)))
        if isinstance(mod, torch.nn.ConvTranspose2d):
            transposed.add(f"{name}.weight")
    return halves, transposed


def widen(
    model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """``state`` of a narrower network of the same layout as ``model`` (a U-Net with a smaller
    ``width``), embedded into ``model``'s tensors so that ``model`` computes exactly what the
    narrow network computed, in training and in eval mode.

    Old channels keep their weights (each half of a decoder block's concatenated input moved to
    where that half now starts). New channels keep ``model``'s own initialisation on their
    incoming side (their convolution weights, a fresh normalisation) and get zero weights on
    their outgoing side: every old channel and the heads read them with weight 0. So they do not
    change the output, yet their outgoing weights receive gradients from the first step on
    (unlike Net2Net's duplication, Chen et al. 2016, which needs noise to break the symmetry).
    ValueError naming ``source`` when a tensor is missing or extra, or differs in another way
    than growing channel counts."""
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise ValueError(
            f"{source}: not the layout of the model (missing {missing[:3]}, unexpected "
            f"{extra[:3]}); only the width may differ"
        )
    halves, transposed = _channel_layout(model)
    out, widened = {}, 0
    for k, t in state.items():
        mine = own[k]
        if mine.shape == t.shape:
            out[k] = t.clone()
            continue
        grows = mine.ndim == t.ndim and all(b >= a for a, b in zip(t.shape, mine.shape))
        if (
            not grows
            or (mine.ndim == 4 and mine.shape[2:] != t.shape[2:])
            or mine.ndim not in (1, 4)
        ):
            raise ValueError(
                f"{source}: {k} has shape {tuple(t.shape)}, the model expects "
                f"{tuple(mine.shape)}; only channel counts may grow"
            )
        new = mine.detach().clone()
        widened += 1
        if mine.ndim == 1:  # biases and normalisation: old channels first, the rest as initialised
            new[: t.shape[0]] = t
            out[k] = new
            continue
        # views as (out, in, k, k)
        w_new, w_old = (new.transpose(0, 1), t.transpose(0, 1)) if k in transposed else (new, t)
        n_out, n_in = w_old.shape[:2]
        if k in halves:
            a, b = n_in // 2, w_new.shape[1] // 2
            cols = [(slice(0, a), slice(0, a)), (slice(a, n_in), slice(b, b + a))]
        else:
            cols = [(slice(0, n_in), slice(0, n_in))]
        w_new[:n_out] = 0.0  # old outputs read nothing but their old inputs
        for src, dst in cols:
            w_new[:n_out, dst] = w_old[:, src]
        out[k] = new
    if not widened:
        raise ValueError(f"{source}: already as wide as the model; nothing to widen")
    return out


# --------------------------------------------------------------------------- RNG state
def capture_rng_state() -> dict:
    """The torch / numpy / python / CUDA global RNG states as weights_only-safe objects."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 - global state used by libraries
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": [int(version), [int(v) for v in internal], gauss_next],
    }
    if torch.cuda.is_available():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    npst = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            npst["kind"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached"],
        )
    )
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])

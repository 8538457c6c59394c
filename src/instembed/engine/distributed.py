"""Process groups and devices: one process, or one process per GPU / CPU slot under ``torchrun``.

Under ``torchrun`` (``WORLD_SIZE > 1``) :func:`init_distributed` joins the process group (NCCL on
CUDA, gloo on CPU) and :func:`resolve_device` maps ``"auto"`` / ``"cuda"`` to the local rank's
GPU. Commands that only need a device (``instembed predict``, ``instembed tune``) import
:func:`resolve_device` from here, without the training loop.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device_kind: str) -> DistInfo:
    """Join the torchrun process group when ``WORLD_SIZE > 1`` (NCCL on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


DEVICE_FORMS = "auto, cpu, cuda, cuda:N, mps"
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:[0-9]+)?)$")


def check_device_spec(spec: object, key: str = "run.device / --device") -> str:
    """``spec`` stripped and lower-cased when it is one of the valid forms (:data:`DEVICE_FORMS`),
    else a one-line ``ValueError`` naming ``key`` and the valid forms. Needs no hardware."""
    text = spec.strip().lower() if isinstance(spec, str) else None
    if text is None or not _DEVICE_RE.match(text):
        raise ValueError(f"{key}: {spec!r} is not a device; valid: {DEVICE_FORMS}")
    return text


def resolve_device(
    spec: str, dist: DistInfo | None = None, key: str = "run.device / --device"
) -> torch.device:
    """The device of ``spec``: ``"auto"`` -> ``cuda:<local rank>`` when CUDA is available, else
    ``cpu``; ``"cuda"`` -> ``cuda:<local rank>``; ``"cuda:N"``, ``"cpu"``, ``"mps"`` as given.

    Any other string, or a device this machine lacks, is a one-line ``ValueError`` naming ``key``
    (the config key / option the value came from) and the valid forms, raised before any work.
    """
    local = dist.local_rank if dist is not None else 0
    text = check_device_spec(spec, key)
    if text == "auto":
        return torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(text)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{key}: {spec!r} requested but CUDA is not available (use auto or cpu)"
            )
        if device.index is None:
            device = torch.device(f"cuda:{local}")
        if device.index >= torch.cuda.device_count():
            raise ValueError(
                f"{key}: {spec!r} requested but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s) (cuda:0 .. "
                f"cuda:{torch.cuda.device_count() - 1})"
            )
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(
                f"{key}: {spec!r} requested but MPS is not available (use auto or cpu)"
            )
    return device


def all_reduce_sum(t: torch.Tensor, dist: DistInfo) -> torch.Tensor:
    """Sum ``t`` over ranks in place (no-op in one process); returns ``t``."""
    if dist.enabled:
        import torch.distributed as tdist

        tdist.all_reduce(t)
    return t


def any_rank(flag: bool, dist: DistInfo) -> bool:
    """True on every rank when ``flag`` is true on any rank."""
    if not dist.enabled:
        return flag
    t = all_reduce_sum(torch.tensor([1.0 if flag else 0.0]), dist)
    return bool(t.item() > 0)


def broadcast_buffers(module: torch.nn.Module, dist: DistInfo, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (e.g. BatchNorm running statistics) to every rank."""
    if not dist.enabled:
        return
    import torch.distributed as tdist

    for buf in module.buffers():
        tdist.broadcast(buf.data, src=src)


def gather_interleaved(items: list, dist: DistInfo) -> list:
    """All ranks' ``items`` on every rank, in the order of a one-process run when rank ``r`` held
    items ``r::world`` of a sequence (``all_gather_object`` then re-interleave)."""
    if not dist.enabled:
        return items
    import torch.distributed as tdist

    gathered: list = [None] * dist.world
    tdist.all_gather_object(gathered, items)
    return [
        r for k in range(max(map(len, gathered))) for g in gathered if k < len(g) for r in [g[k]]
    ]


def destroy(dist: DistInfo) -> None:
    """Leave the process group (when one was joined)."""
    if dist.enabled:
        import torch.distributed as tdist

        if tdist.is_initialized():
            tdist.destroy_process_group()

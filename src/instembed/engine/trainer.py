"""The training loop: one process, or one process per GPU / CPU slot under ``torchrun`` (DDP).

Read top to bottom, :meth:`Trainer.fit` is::

    for step in range(start, steps):
        batch   <- next batch (seeded per item, so a resumed run sees the same batches)
        outputs <- model(image, coords_origin)            (autocast on CUDA when optim.amp)
        total, terms <- loss(outputs, batch)
        stop on non-finite total (step + terms reported, last good checkpoint kept)
        backward, clip, optimizer step, LR schedule step
        log (progress bar, CSV, TensorBoard); validate; checkpoint

Determinism and exact resume. Batches come from :class:`StepSampler`: epoch ``e`` is a
:class:`~torch.utils.data.DistributedSampler` permutation seeded with ``(run.seed, e)``, and item
``k`` of the stream gets its own augmentation seed derived from ``(run.seed, k)``; so the data of
step ``s`` depend only on the seed and ``s``. Checkpoints store model, optimizer, scheduler,
AMP-scaler and global RNG states and the step, so ``--resume`` continues bit-exactly on CPU.

Distributed. Under ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialised with NCCL
on CUDA and gloo on CPU, the model is wrapped in ``DistributedDataParallel``, each rank reads its
own share of every epoch, rank 0 alone logs and writes checkpoints, the loss is averaged over
ranks for logging and the validation accumulators of all ranks are gathered on rank 0.

Faults. Ctrl-C (SIGINT) or SIGTERM: the current step finishes and a final checkpoint is written.
Non-finite loss: :class:`NonFiniteLossError` with the step and every loss term; the last
checkpoint on disk (written before the fault) is left as it is. Checkpoints are atomic
(:mod:`instembed.engine.checkpoint`), so a SIGKILL at any moment leaves a loadable ``last.pt``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
import math
import os
import random
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from instembed.engine import checkpoint as ck
from instembed.engine.build import (
    build_datasets,
    build_loss_from_config,
    build_model_from_config,
    cluster_outputs,
)
from instembed.engine.config import Config, config_from_yaml, config_to_yaml, save_config

log = logging.getLogger(__name__)

LAST = "last.pt"
BEST = "best.pt"


class NonFiniteLossError(RuntimeError):
    """The loss (or gradient norm) became NaN/inf; ``step`` and ``terms`` say where and which."""

    def __init__(self, step: int, terms: dict[str, float], last_checkpoint: Path | None) -> None:
        self.step, self.terms, self.last_checkpoint = step, terms, last_checkpoint
        shown = ", ".join(f"{k}={v:.6g}" for k, v in terms.items())
        kept = f"; last good checkpoint kept: {last_checkpoint}" if last_checkpoint else ""
        super().__init__(f"non-finite loss at step {step}: {shown}{kept}")


# --------------------------------------------------------------------------- distributed
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


def resolve_device(spec: str, dist: DistInfo | None = None) -> torch.device:
    """``"auto"`` -> ``cuda:<local rank>`` when CUDA is available, else ``cpu``."""
    local = dist.local_rank if dist is not None else 0
    if spec == "auto":
        return torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"run.device: {spec!r} requested but CUDA is not available")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local}")
    return device


# --------------------------------------------------------------------------- data order
def _mix(*values: int) -> int:
    """A 63-bit seed from integers (stable across processes and platforms)."""
    h = hashlib.blake2b(np.asarray(values, np.int64).tobytes(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


class StepSampler(torch.utils.data.Sampler):
    """Endless stream of ``(index, item_seed)`` for this rank, starting at stream item ``start``.

    Epoch ``e`` uses ``DistributedSampler(shuffle=True, seed=seed)`` with ``set_epoch(e)``; the
    item seed is a hash of ``(seed, rank, k)`` for the ``k``-th item of this rank's stream.
    """

    def __init__(self, n: int, seed: int, dist: DistInfo, start: int = 0) -> None:
        self.n, self.seed, self.dist, self.start = n, seed, dist, start

    def _epoch(self, e: int) -> list[int]:
        from torch.utils.data import DistributedSampler

        ds = DistributedSampler(
            range(self.n),
            num_replicas=self.dist.world,
            rank=self.dist.rank,
            shuffle=True,
            seed=self.seed,
        )
        ds.set_epoch(e)
        return list(ds)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        per_epoch = len(self._epoch(0))
        e, k = divmod(self.start, per_epoch)
        pos = self.start
        while True:
            order = self._epoch(e)
            for idx in order[k:]:
                yield int(idx), _mix(self.seed, self.dist.rank, pos)
                pos += 1
            e, k = e + 1, 0


class SeededItems(torch.utils.data.Dataset):
    """Wrap a dataset so that item ``(index, seed)`` is drawn with all global RNGs seeded.

    Augmentations that draw from numpy's / torch's / python's global generators (or a generator
    seeded from them) become a function of the item seed; the callers' RNG state is restored.
    """

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        saved = ck.capture_rng_state()
        try:
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)  # noqa: NPY002 - global state read by transforms
            random.seed(seed)
            return self.dataset[index]
        finally:
            ck.restore_rng_state(saved)


# --------------------------------------------------------------------------- schedule
def lr_factor(step: int, total: int, schedule: str, power: float, warmup: int, floor: float):
    """Multiplier of the base LR at ``step`` (0-based): linear warm-up then poly / cosine / constant.

    ``floor`` is the final fraction of the base LR (``min_lr / lr``).
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    if schedule == "poly":
        f = (1.0 - t) ** power
    elif schedule == "cosine":
        f = 0.5 * (1.0 + math.cos(math.pi * t))
    else:
        f = 1.0
    return floor + (1.0 - floor) * f


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    oc = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    cls = torch.optim.AdamW if oc.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=oc.lr, betas=tuple(oc.betas), weight_decay=oc.weight_decay)


def build_scheduler(cfg: Config, optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    oc = cfg.optim
    floor = oc.min_lr / oc.lr if oc.lr > 0 else 0.0
    steps = cfg.run.steps
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(s, steps, oc.schedule, oc.poly_power, oc.warmup_steps, floor),
    )


# --------------------------------------------------------------------------- logging
class CsvLog:
    """Append rows to a CSV file; the header is fixed by the first row (or the existing file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fields: list[str] | None = None
        if path.is_file() and path.stat().st_size > 0:
            with open(path, newline="") as fh:
                self.fields = next(csv.reader(fh), None)

    def write(self, row: dict[str, Any]) -> None:
        new = self.fields is None
        if new:
            self.fields = list(row)
        extra = [k for k in row if k not in self.fields]
        if extra:
            log.debug("CSV %s: columns %s not in header, dropped", self.path.name, extra)
        with open(self.path, "a", newline="") as fh:
            w = csv.DictWriter(fh, self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra
        log.info("tensorboard not installed (pip install 'instembed[tensorboard]'): CSV logs only")
        return None
    return SummaryWriter(str(folder))


@contextmanager
def _stop_on_signals(flag: dict):
    """SIGINT / SIGTERM set ``flag['stop']`` instead of raising (main thread only)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        if flag.get("stop"):  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        flag["stop"] = signal.Signals(signum).name
        log.warning("%s received: finishing this step and writing a checkpoint", flag["stop"])

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# --------------------------------------------------------------------------- validation
def _count(instances: np.ndarray) -> int:
    if instances.ndim == 3:
        return int(instances.shape[0])
    return int(len(np.unique(instances[instances > 0])))


def _to_numpy_labels(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


@torch.no_grad()
def validate(
    model: nn.Module,
    samples,
    cfg: Config,
    device: torch.device,
    dist: DistInfo | None = None,
) -> dict[str, float]:
    """Instance metrics of ``model`` + the configured clusterer on ``samples``.

    Each rank evaluates samples ``rank::world``; accumulators are gathered and merged so every
    rank returns the metrics of the whole set (``InstanceEvaluator.summary()`` scalars).
    """
    from instembed.metrics import InstanceEvaluator

    dist = dist or DistInfo()
    n = len(samples)
    if cfg.run.max_val_images is not None:
        n = min(n, cfg.run.max_val_images)
    was_training = model.training
    model.eval()
    from instembed.engine.tune import GRIDS

    tune = bool(cfg.run.val_tune) and cfg.cluster.method in GRIDS
    records = []
    for i in range(dist.rank, n, dist.world):
        s = samples[i]
        image = torch.from_numpy(np.ascontiguousarray(s.image, np.float32))[None].to(device)
        out = model(image).map(lambda t: t.detach().float().cpu())
        if tune:  # clustered below, once per setting of the grid
            records.append({"out": out})
            continue
        cc = cfg.cluster
        if cc.method == "kmeans" and "k" not in cc.params:
            # k-means without k: the true number of instances (the coloring-dilemma protocol)
            cc = dataclasses.replace(cc, params={**cc.params, "k": max(1, _count(s.instances))})
        res = cluster_outputs(out, cc)
        records.append(
            {
                "gt": s.instances,
                "pred": _to_numpy_labels(res.masks_or_labels),
                "scores": _to_numpy_labels(res.scores) if res.scores is not None else None,
                "pred_classes": (
                    _to_numpy_labels(res.classes)
                    if getattr(res, "classes", None) is not None
                    else None
                ),
                "gt_classes": s.classes,
                "ignore": s.ignore,
            }
        )
    model.train(was_training)
    if dist.enabled:
        import torch.distributed as tdist

        gathered: list = [None] * dist.world
        tdist.all_gather_object(gathered, records)
        # re-interleave so the order matches a single-process run
        records = [
            r
            for k in range(max(map(len, gathered)))
            for g in gathered
            if k < len(g)
            for r in [g[k]]
        ]
    if tune:
        from instembed.engine.tune import tune_thresholds

        res = tune_thresholds([r["out"] for r in records], samples[:n], cfg.cluster)
        log.info("validation with clustering thresholds tuned on it: %s", res.params)
        tuned = {f"cluster/{k}": float(v) for k, v in res.params.items() if v is not None}
        return {**res.metrics, **tuned}
    ev = InstanceEvaluator()
    for r in records:
        classes_given = r["pred_classes"] is not None and r["gt_classes"] is not None
        ev.add(
            r["gt"],
            r["pred"],
            scores=r["scores"],
            pred_classes=r["pred_classes"] if classes_given else None,
            gt_classes=r["gt_classes"] if classes_given else None,
            ignore=r["ignore"],
        )
    summary = ev.summary()
    return {
        k: float(v)
        for k, v in summary.items()
        if isinstance(v, int | float | np.floating | np.integer) and not isinstance(v, bool)
    }


# --------------------------------------------------------------------------- the trainer
@dataclass
class FitResult:
    step: int
    status: str  # "done" | "interrupted" | "stopped"
    metrics: dict[str, float] = field(default_factory=dict)
    best: dict | None = None
    out: Path | None = None


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds the global state libraries use
    random.seed(seed)


class Trainer:
    """Train the model of ``cfg`` into ``out`` (checkpoints, ``config.yaml``, logs).

    ``resume=True`` continues from ``out/last.pt`` (model, optimizer, scheduler, scaler, RNG
    states, step). ``train_set`` (a dataset of item dicts, e.g. ``InstanceDataset``) and
    ``val_samples`` (a sequence of Samples) replace the data of ``cfg.data`` when given (e.g. a
    recorded split). Under torchrun every rank builds its own Trainer; only rank 0 writes files.
    """

    def __init__(
        self,
        cfg: Config,
        out: str | Path,
        resume: bool = False,
        train_set=None,
        val_samples=None,
    ) -> None:
        self.cfg = cfg
        self.out = Path(out)
        kind = (
            "cuda"
            if cfg.run.device.startswith("cuda")
            or (cfg.run.device == "auto" and torch.cuda.is_available())
            else "cpu"
        )
        self.dist = init_distributed(kind)
        self.device = resolve_device(cfg.run.device, self.dist)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if cfg.run.deterministic and self.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(cfg.run.seed)

        if train_set is None or val_samples is None:
            built_train, built_val = build_datasets(cfg)
            train_set = built_train if train_set is None else train_set
            val_samples = built_val if val_samples is None else val_samples
        self.train_set, self.val_samples = train_set, val_samples
        if len(self.train_set) == 0:
            raise ValueError("the training set is empty")
        self.model = build_model_from_config(cfg.model).to(self.device)
        self.loss_fn = build_loss_from_config(cfg.loss).to(self.device)
        self.optimizer = build_optimizer(cfg, self.model)
        self.scheduler = build_scheduler(cfg, self.optimizer)
        self.use_amp = bool(cfg.optim.amp and self.device.type == "cuda")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.step = 0
        self.best: dict | None = None
        self.metrics: dict[str, float] = {}
        self.last_saved: Path | None = None
        if resume:
            self._resume()
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net: nn.Module = DDP(self.model, device_ids=ids)
        else:
            self.net = self.model

    # ----------------------------------------------------------------- checkpoints
    def _resume(self) -> None:
        path = self.out / LAST
        state = ck.load_checkpoint(path, map_location="cpu")
        stored = config_from_yaml(state["config"])
        if stored.model != self.cfg.model:
            log.warning("resuming %s with a different model config than it was trained with", path)
        ck.load_model_state(self.model, state["model"], source=str(path))
        if "optimizer" not in state:
            raise ck.CheckpointError(f"{path}: has no optimizer state, cannot resume from it")
        self.optimizer.load_state_dict(state["optimizer"])
        if "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state and self.use_amp:
            self.scaler.load_state_dict(state["scaler"])
        if "rng" in state:
            ck.restore_rng_state(state["rng"])
        self.step = int(state["step"])
        self.best = state.get("best")
        self.metrics = dict(state.get("metrics", {}))
        self.last_saved = path
        log.info("resumed from %s at step %d", path, self.step)

    def save(self, name: str = LAST, *, training_state: bool = True) -> Path | None:
        """Write ``out/name`` (rank 0 only); ``training_state=False`` stores weights only."""
        if not self.dist.is_main:
            return None
        extra: dict[str, Any] = {}
        if training_state:
            extra = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": ck.capture_rng_state(),
            }
            if self.use_amp:
                extra["scaler"] = self.scaler.state_dict()
        path = ck.save_checkpoint(
            self.out / name,
            model_state=self.model.state_dict(),
            config_yaml=config_to_yaml(self.cfg),
            step=self.step,
            metrics=self.metrics or None,
            best=self.best,
            **extra,
        )
        if name == LAST:
            self.last_saved = path
        return path

    # ----------------------------------------------------------------- one step
    def _batches(self) -> Iterator[dict]:
        from instembed.data.dataset import collate

        sampler = StepSampler(
            len(self.train_set),
            self.cfg.run.seed,
            self.dist,
            start=self.step * self.cfg.data.batch_size,
        )
        loader = torch.utils.data.DataLoader(
            SeededItems(self.train_set),
            batch_size=self.cfg.data.batch_size,
            sampler=sampler,
            collate_fn=collate,
            num_workers=self.cfg.data.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=self.cfg.data.num_workers > 0,
        )
        return iter(loader)

    def _to_device(self, batch: dict) -> dict:
        return {
            k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()
        }

    def train_step(self, batch: dict) -> tuple[float, dict[str, float]]:
        """One optimizer step; returns (rank-averaged loss, terms). Raises NonFiniteLossError."""
        batch = self._to_device(batch)
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.use_amp else nullcontext()
        with autocast:
            outputs = self.net(batch["image"], coords_origin=batch.get("coords_origin"))
        outputs = outputs.map(lambda t: t.float())
        total, terms = self.loss_fn(outputs, batch)
        values = {k: float(v.detach()) for k, v in terms.items()}
        values = {"loss": float(total.detach()), **values}
        finite = torch.tensor([float(math.isfinite(values["loss"]))])
        if self.dist.enabled:
            import torch.distributed as tdist

            t = torch.tensor([values["loss"] if finite.item() else 0.0, finite.item()])
            tdist.all_reduce(t)  # sum over ranks: every rank stops together on a fault
            finite = t[1:] / self.dist.world
            values["loss"] = float(t[0]) / self.dist.world
        if finite.item() < 1:
            raise NonFiniteLossError(self.step + 1, values, self.last_saved)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.cfg.optim.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
            values["grad_norm"] = float(norm)
            if not self.use_amp and not math.isfinite(values["grad_norm"]):
                raise NonFiniteLossError(self.step + 1, values, self.last_saved)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        return values["loss"], values

    # ----------------------------------------------------------------- the loop
    def _validate_and_select(self, tb, val_log: CsvLog | None) -> None:
        if len(self.val_samples) == 0:
            return
        self._sync_buffers()
        t0 = time.perf_counter()
        self.metrics = validate(self.model, self.val_samples, self.cfg, self.device, self.dist)
        if not self.dist.is_main:
            return
        key, mode = self.cfg.run.best_metric, self.cfg.run.best_mode
        log.info(
            "step %d validation (%.1fs): %s",
            self.step,
            time.perf_counter() - t0,
            ", ".join(
                f"{k}={v:.4f}"
                for k, v in self.metrics.items()
                if k in ("AP", "AP50", "SBD", "PQ", key)
            ),
        )
        if val_log is not None:
            val_log.write({"step": self.step, **self.metrics})
        if tb is not None:
            for k, v in self.metrics.items():
                tb.add_scalar(f"val/{k}", v, self.step)
        value = self.metrics.get(key)
        if value is None:
            log.warning("best_metric %r not among validation metrics %s", key, sorted(self.metrics))
            return
        better = self.best is None or (
            value > self.best["value"] if mode == "max" else value < self.best["value"]
        )
        if better and math.isfinite(value):
            self.best = {"metric": key, "value": float(value), "step": self.step}
            self.save(BEST, training_state=False)

    def fit(self, stop_at: int | None = None, time_limit_s: float | None = None) -> FitResult:
        """Train until ``run.steps`` (or ``stop_at`` steps, or ``time_limit_s`` seconds of
        wall-clock time, whichever comes first; the last two end with status "stopped")."""
        cfg = self.cfg
        t_start = time.perf_counter()
        end = cfg.run.steps if stop_at is None else min(stop_at, cfg.run.steps)
        main = self.dist.is_main
        tb = csv_train = csv_val = None
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out / "config.yaml")
            csv_train = CsvLog(self.out / "train_log.csv")
            csv_val = CsvLog(self.out / "val_log.csv")
            tb = _tensorboard(self.out / "tb") if cfg.run.tensorboard else None
        bar = None
        if main and cfg.run.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=end, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        flag: dict = {}
        status = "done"
        batches = self._batches() if self.step < end else iter(())
        t_last, n_imgs = time.perf_counter(), 0
        self.net.train()
        try:
            with _stop_on_signals(flag):
                while self.step < end:
                    batch = next(batches)
                    loss, terms = self.train_step(batch)
                    n_imgs += int(batch["image"].shape[0]) * self.dist.world
                    stop = self._agree(bool(flag.get("stop")))
                    if bar is not None:
                        shown = {k: f"{v:.4g}" for k, v in terms.items() if k != "grad_norm"}
                        bar.set_postfix(shown, refresh=False)
                        bar.update(1)
                    if main and (self.step % max(1, cfg.run.log_every) == 0 or self.step == end):
                        now = time.perf_counter()
                        rate = n_imgs / max(now - t_last, 1e-9)
                        t_last, n_imgs = now, 0
                        row = {"step": self.step, "lr": self.scheduler.get_last_lr()[0], **terms}
                        row["images_per_s"] = rate
                        csv_train.write(row)
                        if tb is not None:
                            for k, v in row.items():
                                if k != "step":
                                    tb.add_scalar(f"train/{k}", v, self.step)
                    if stop:
                        status = "interrupted"
                        break
                    if time_limit_s is not None and self._agree(
                        time.perf_counter() - t_start > time_limit_s
                    ):
                        log.info("time limit of %.0f s reached at step %d", time_limit_s, self.step)
                        break
                    # the same cadence whatever stop_at is, so a resumed run replays the same RNG use
                    if (
                        cfg.run.val_every
                        and self.step % cfg.run.val_every == 0
                        and self.step < cfg.run.steps
                    ):
                        self._validate_and_select(tb, csv_val)
                    if cfg.run.ckpt_every and self.step % cfg.run.ckpt_every == 0:
                        self._sync_buffers()
                        self.save(LAST)
                self._sync_buffers()
                if status == "done" and self.step >= cfg.run.steps:
                    self._validate_and_select(tb, csv_val)
                elif status == "done":
                    status = "stopped"
                self.save(LAST)
                if main and self.best is None and len(self.val_samples) == 0:
                    self.save(BEST, training_state=False)  # no validation: best = last
        finally:
            if bar is not None:
                bar.close()
            if tb is not None:
                tb.close()
        if main:
            log.info("training %s at step %d; checkpoints in %s", status, self.step, self.out)
        return FitResult(self.step, status, dict(self.metrics), self.best, self.out)

    def _sync_buffers(self) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

        DDP all-reduces gradients, so parameters agree, but each rank updates its running
        statistics from its own batches (DDP re-broadcasts them only at the next forward).
        Called on every rank at the same steps: before validation and checkpoints.
        """
        if not self.dist.enabled:
            return
        import torch.distributed as tdist

        for buf in self.model.buffers():
            tdist.broadcast(buf.data, src=0)

    def _agree(self, stop: bool) -> bool:
        """True on every rank when any rank wants to stop."""
        if not self.dist.enabled:
            return stop
        import torch.distributed as tdist

        t = torch.tensor([1.0 if stop else 0.0])
        tdist.all_reduce(t)
        return bool(t.item() > 0)

    def close(self) -> None:
        if self.dist.enabled:
            import torch.distributed as tdist

            if tdist.is_initialized():
                tdist.destroy_process_group()

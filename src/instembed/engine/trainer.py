"""The training loop: one process, or one process per GPU / CPU slot under ``torchrun`` (DDP).

Read top to bottom, :meth:`Trainer.fit` is::

    for step in range(start, steps):
        batch   <- next batch (seeded per item, so a resumed run sees the same batches)
        outputs <- model(image, coords_origin)   (autocast: CUDA optim.amp, CPU optim.bf16)
        total, terms <- loss(outputs, batch)
        stop on non-finite total (step + terms reported, last good checkpoint kept)
        backward, clip, optimizer step, LR schedule step
        log (progress bar, CSV, TensorBoard); validate; checkpoint

Determinism and exact resume. Batches come from :class:`~instembed.engine.sampling.StepSampler`
(:mod:`instembed.engine.sampling`): epoch ``e`` is a
:class:`~torch.utils.data.DistributedSampler` permutation seeded with ``(run.seed, e)``, and item
``k`` of the stream gets its own augmentation seed derived from ``(run.seed, k)``; so the data of
step ``s`` depend only on the seed and ``s``. Checkpoints store model, optimizer, scheduler,
AMP-scaler and global RNG states and the step, so ``--resume`` continues bit-exactly on CPU.

Distributed. Under ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialised with NCCL
on CUDA and gloo on CPU, the model is wrapped in ``DistributedDataParallel``, each rank reads its
own share of every epoch, rank 0 alone logs and writes checkpoints, the loss is averaged over
ranks for logging and the validation results of all ranks are gathered on every rank
(:mod:`instembed.engine.distributed`).

Faults. Ctrl-C (SIGINT) or SIGTERM: the current step finishes and a final checkpoint is written.
Non-finite loss: :class:`NonFiniteLossError` with the step and every loss term; the last
checkpoint on disk (written before the fault) is left as it is. Checkpoints are atomic
(:mod:`instembed.engine.checkpoint`), so a SIGKILL at any moment leaves a loadable ``last.pt``.
A run that fails before its first checkpoint deletes the files it wrote (:class:`Trainer` lists
the run-folder rules: fresh start, resume without duplicate log rows, no half-made runs).

The pieces the loop uses live next to it: :mod:`~instembed.engine.distributed` (process group,
device), :mod:`~instembed.engine.sampling` (data order, seeds), :mod:`~instembed.engine.optim`
(optimizer, LR schedule), :mod:`~instembed.engine.logs` (CSV, TensorBoard, signals) and
:mod:`~instembed.engine.evaluation` (:func:`~instembed.engine.evaluation.validate`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from instembed.data.dataset import image_targets
from instembed.engine import checkpoint as ck
from instembed.engine.build import (
    build_datasets,
    build_loss_from_config,
    build_model_from_config,
)
from instembed.engine.config import Config, config_from_yaml, config_to_yaml, save_config
from instembed.engine.distributed import (
    any_rank,
    broadcast_buffers,
    check_device_spec,
    destroy,
    init_distributed,
    resolve_device,
)
from instembed.engine.evaluation import validate
from instembed.engine.logs import CsvLog, open_tensorboard, run_log_file, stop_on_signals
from instembed.engine.optim import build_optimizer, build_scheduler
from instembed.engine.sampling import SeededItems, seed_everything, train_sampler
from instembed.engine.speed import (
    CompiledOrEager,
    autocast_context,
    contiguous_state,
    float32_heads,
    to_memory_format,
    warn_if_emulated_bf16,
)

log = logging.getLogger(__name__)

LAST = "last.pt"
BEST = "best.pt"
#: what a run writes into its folder; a folder holding any of them "holds a run"
RUN_FILES = (
    LAST,
    BEST,
    "config.yaml",
    "train_log.csv",
    "val_log.csv",
    "run.log",
    "tb",
)
NO_VALIDATION = (
    "no validation images (the data split left none): best.pt is not selected by validation, "
    "it is a copy of the last checkpoint's weights"
)


def existing_run_files(out: str | Path) -> list[str]:
    """The names of :data:`RUN_FILES` present in ``out`` (empty when it holds no run)."""
    out = Path(out)
    return [name for name in RUN_FILES if (out / name).exists()] if out.is_dir() else []


def check_run_folder(out: str | Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse (one-line ``ValueError`` / ``FileNotFoundError``) to start a run in ``out`` that
    would destroy another: ``out`` already holding a run needs ``resume`` (continue it from
    ``last.pt``) or ``overwrite`` (start over: its run files are deleted when training starts)."""
    out = Path(out)
    if resume and overwrite:
        raise ValueError(
            "--resume and --overwrite exclude each other: continue the run or start over"
        )
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out}: exists and is not a folder")
    if resume:
        if not (out / LAST).is_file():
            raise FileNotFoundError(f"--resume: no checkpoint to resume from at {out / LAST}")
        return
    found = existing_run_files(out)
    if found and not overwrite:
        raise ValueError(
            f"{out} already holds a run ({', '.join(found)}): pass --resume to continue it, "
            f"or --overwrite to start over (deletes its checkpoints and logs), or choose "
            f"another --out"
        )


def clear_run_files(out: str | Path) -> list[str]:
    """Delete the :data:`RUN_FILES` of ``out`` (other files are left alone); returns their names."""
    import shutil

    out = Path(out)
    found = existing_run_files(out)
    for name in found:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return found


SIZE_SAMPLES = 256  # training images measured for data.object_diameter


def measure_object_sizes(train_set) -> list[float] | None:
    """``[low, median, high]`` object diameters of the training samples behind ``train_set``
    (its ``samples``, before augmentation, at most :data:`SIZE_SAMPLES` of them;
    :func:`instembed.data.sizes.training_sizes`), kept in the run's config as
    ``data.object_diameter`` for ``scale="auto"`` prediction. None (logged) when the set
    exposes no samples or they hold no objects."""
    from instembed.data.sizes import training_sizes

    samples = getattr(train_set, "samples", None)
    sizes = None
    if samples is not None and len(samples):  # at most SIZE_SAMPLES images, evenly spaced
        picks = np.unique(np.linspace(0, len(samples) - 1, min(len(samples), SIZE_SAMPLES)))
        sizes = training_sizes(samples[int(i)] for i in picks)
    if sizes is None:
        log.info("training object sizes not recorded (no samples with objects to measure)")
    else:
        log.info("training object diameters (5th / 50th / 95th percentile, px): %s", sizes)
    return sizes


class NonFiniteLossError(RuntimeError):
    """The loss (or gradient norm) became NaN/inf; ``step`` and ``terms`` say where and which."""

    def __init__(self, step: int, terms: dict[str, float], last_checkpoint: Path | None) -> None:
        self.step, self.terms, self.last_checkpoint = step, terms, last_checkpoint
        shown = ", ".join(f"{k}={v:.6g}" for k, v in terms.items())
        kept = f"; last good checkpoint kept: {last_checkpoint}" if last_checkpoint else ""
        super().__init__(f"non-finite loss at step {step}: {shown}{kept}")


# --------------------------------------------------------------------------- the trainer
@dataclass
class FitResult:
    step: int
    status: str  # "done" | "interrupted" | "stopped"
    metrics: dict[str, float] = field(default_factory=dict)
    best: dict | None = None
    out: Path | None = None
    no_validation: bool = False  # no validation images: best.pt is the last weights


class Trainer:
    """Train the model of ``cfg`` into ``out`` (checkpoints, ``config.yaml``, logs).

    ``resume=True`` continues from ``out/last.pt`` (model, optimizer, scheduler, scaler, RNG
    states, step). ``train_set`` (a dataset of item dicts, e.g. ``InstanceDataset``) and
    ``val_samples`` (a sequence of Samples) replace the data of ``cfg.data`` when given (e.g. a
    recorded split). Under torchrun every rank builds its own Trainer; only rank 0 writes files.

    Run folder rules (what :meth:`fit` does with ``out``):

    * a fresh run (not ``resume``) starts over: when its first :meth:`fit` starts, the
      :data:`RUN_FILES` of an earlier run in ``out`` are deleted (other files are left alone), so
      old and new checkpoints and logs never mix. ``instembed train`` refuses such a folder
      unless ``--overwrite`` is given (:func:`check_run_folder`); the library call does not ask.
    * a resumed run keeps its logs but drops the CSV rows (and TensorBoard events) of steps
      after the checkpoint it resumes from, so no step is logged twice.
    * a run that fails (any exception) before its first ``last.pt`` is written leaves no half
      files: the run files it wrote are deleted, and the folder too when the run created it and
      nothing else is in it. There is never a ``best.pt`` without a ``last.pt``.
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
        spec = check_device_spec(cfg.run.device)  # a bad device string: before any work
        kind = (
            "cuda"
            if spec.startswith("cuda") or (spec == "auto" and torch.cuda.is_available())
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
        if cfg.data.object_diameter is None:  # sizes for predict --scale auto
            cfg.data.object_diameter = measure_object_sizes(self.train_set)
        self.model = build_model_from_config(cfg.model).to(self.device)
        if cfg.optim.channels_last:  # before the optimizer: its states follow the weights
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loss_fn = build_loss_from_config(cfg.loss).to(self.device)
        self.optimizer = build_optimizer(cfg, self.model)
        self.scheduler = build_scheduler(cfg, self.optimizer)
        self.use_amp = bool(cfg.optim.amp and self.device.type == "cuda")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.use_bf16 = bool(cfg.optim.bf16 and self.device.type == "cpu")
        warn_if_emulated_bf16(self.device, self.use_bf16)
        if self.use_bf16:
            float32_heads(self.model)
        self.step = 0
        self.best: dict | None = None
        self.metrics: dict[str, float] = {}
        self.last_saved: Path | None = None
        self.resumed = bool(resume)
        self._started = False  # fit() ran once: later fits continue this run's logs
        if resume:
            self._resume()
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net: nn.Module = DDP(self.model, device_ids=ids)
        else:
            self.net = self.model
        if cfg.run.compile:  # the training forward only; checkpoints hold self.model's state
            self.net = CompiledOrEager(self.net)

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
            model_state=contiguous_state(self.model.state_dict()),
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

        sampler = train_sampler(
            self.train_set,
            self.cfg.data,
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
        """Tensors, and lists of per-image tensors (classes, instance_masks, boxes), on the
        training device."""

        def move(v):
            if isinstance(v, torch.Tensor):
                return v.to(self.device, non_blocking=True)
            if isinstance(v, list) and v and all(isinstance(t, torch.Tensor) for t in v):
                return [t.to(self.device, non_blocking=True) for t in v]
            return v

        return {k: move(v) for k, v in batch.items()}

    def train_step(self, batch: dict) -> tuple[float, dict[str, float]]:
        """One optimizer step; returns (rank-averaged loss, terms). Raises NonFiniteLossError."""
        batch = self._to_device(batch)
        with autocast_context(self.device, self.use_amp, self.use_bf16):
            outputs = self.net(
                to_memory_format(batch["image"], self.cfg.optim.channels_last),
                coords_origin=batch.get("coords_origin"),
                targets=image_targets(batch),
            )
        outputs = outputs.map(lambda t: t.float().contiguous())
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
            if self.last_saved is None:  # never a best.pt without a last.pt beside it
                self.save(LAST)
            self.save(BEST, training_state=False)

    def _open_logs(self) -> tuple[CsvLog, CsvLog, Any]:
        """Create the run folder's config and logs (rank 0): fresh ones for a fresh run (the
        earlier run's files deleted first), the existing ones without the rows of steps after
        ``self.step`` when the run continues (resumed, or a second :meth:`fit`)."""
        cfg = self.cfg
        fresh = not self.resumed and not self._started
        if fresh:
            removed = clear_run_files(self.out)
            if removed:
                log.info(
                    "starting over in %s: deleted the earlier run's %s",
                    self.out,
                    ", ".join(removed),
                )
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.out / "config.yaml")
        keep = None if fresh else self.step
        csv_train = CsvLog(self.out / "train_log.csv", fresh=fresh, keep_through_step=keep)
        csv_val = CsvLog(self.out / "val_log.csv", fresh=fresh, keep_through_step=keep)
        tb = (
            open_tensorboard(self.out / "tb", purge_step=None if fresh else self.step + 1)
            if cfg.run.tensorboard
            else None
        )
        return csv_train, csv_val, tb

    def _discard_half_run(self, created: bool) -> None:
        """After a failure before the first checkpoint: delete what this run wrote (rank 0)."""
        removed = clear_run_files(self.out)
        gone = False
        if created and self.out.is_dir() and not any(self.out.iterdir()):
            self.out.rmdir()
            gone = True
        if removed or gone:
            log.warning(
                "training failed before its first checkpoint: removed %s",
                f"the run folder {self.out}" if gone else f"{', '.join(removed)} from {self.out}",
            )

    def fit(
        self, stop_at: int | None = None, time_limit_s: float | None = None, cpu_time: bool = False
    ) -> FitResult:
        """Train until ``run.steps`` (or ``stop_at`` steps, or ``time_limit_s`` seconds of
        wall-clock time, whichever comes first; the last two end with status "stopped").
        ``cpu_time``: ``time_limit_s`` counts this process's CPU seconds instead (a budget
        that stays fair when other work shares the machine; with one torch thread and no
        data-loader workers, CPU seconds = seconds of one core spent on training).

        See the class docstring for what happens to the run folder (fresh start, resume,
        failure before the first checkpoint)."""
        cfg = self.cfg
        clock = time.process_time if cpu_time else time.perf_counter
        t_start = clock()
        end = cfg.run.steps if stop_at is None else min(stop_at, cfg.run.steps)
        main = self.dist.is_main
        no_val = len(self.val_samples) == 0
        tb = csv_train = csv_val = None
        bar = None
        run_log = None
        created = main and not self.out.exists()
        ok = False
        try:
            if main:
                csv_train, csv_val, tb = self._open_logs()
                fresh = not self.resumed and not self._started
                run_log = run_log_file(self.out / "run.log", fresh=fresh)
            self._started = True
            if main:
                log.info(
                    "%s %s at step %d of %d",
                    "continuing" if self.step else "training",
                    self.out,
                    self.step,
                    cfg.run.steps,
                )
                if no_val:
                    log.warning("%s: %s", self.out, NO_VALIDATION)
            if main and cfg.run.progress:
                from tqdm.auto import tqdm

                bar = tqdm(
                    total=end, initial=self.step, desc="train", unit="step", dynamic_ncols=True
                )
            flag: dict = {}
            status = "done"
            batches = self._batches() if self.step < end else iter(())
            t_last, n_imgs = time.perf_counter(), 0
            self.net.train()
            with stop_on_signals(flag):
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
                    if time_limit_s is not None and self._agree(clock() - t_start > time_limit_s):
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
                if main and self.best is None and no_val:
                    self.save(BEST, training_state=False)  # no validation: best = last
            if main:
                log.info("training %s at step %d; checkpoints in %s", status, self.step, self.out)
            ok = True
        finally:
            if bar is not None:
                bar.close()
            if tb is not None:
                tb.close()
            if run_log is not None:
                run_log.close()
            if not ok and main and self.last_saved is None:
                self._discard_half_run(created)
        return FitResult(self.step, status, dict(self.metrics), self.best, self.out, no_val)

    def _sync_buffers(self) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

        DDP all-reduces gradients, so parameters agree, but each rank updates its running
        statistics from its own batches (DDP re-broadcasts them only at the next forward).
        Called on every rank at the same steps: before validation and checkpoints.
        """
        broadcast_buffers(self.model, self.dist)

    def _agree(self, stop: bool) -> bool:
        """True on every rank when any rank wants to stop."""
        return any_rank(stop, self.dist)

    def close(self) -> None:
        """Leave the torchrun process group (when one was joined)."""
        destroy(self.dist)

"""Running instembed's work as Dask tasks: where they run, the model each worker loads once,
and what is reported when some fail. Used by :mod:`instembed.engine.dask_blocks` (one huge
image, block by block) and :func:`predict_files` (many images).

Where tasks run (``scheduler``): ``None`` -- a local cluster of ``workers`` processes started for
the call and closed after it (one thread each, torch set to one thread); a scheduler address
(``tcp://host:8786``) or a ``distributed.Client`` -- the user's cluster, whose workers must see
the input and output paths; ``"synchronous"`` -- in this process, without Dask. Every worker
builds the model once per call (:class:`ModelSpec`, sent to each worker once and cached there).

Failures: a task that raises is reported with what it was working on (:class:`TaskFailed`); a
task whose worker died is reported as such (Dask's ``KilledWorker``, after
``distributed.scheduler.allowed-failures`` retries); the other tasks run to the end first, and
:class:`BlockwiseError` then lists every failure.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SYNC = ("synchronous", "sync", "inline")

_CACHE: OrderedDict[str, Any] = OrderedDict()  # per process: ModelSpec.token -> Predictor
_LOADS: dict[str, int] = {}
_LOCK = threading.Lock()


class TaskFailed(Exception):
    """One block or image failed inside its task (the message names it and the cause)."""


class BlockwiseError(RuntimeError):
    """Some blocks (or images) failed; ``failed`` lists (index, reason); finished ones are kept."""

    def __init__(self, message: str, failed: list[tuple[Any, str]]) -> None:
        super().__init__(message)
        self.failed = failed


# --------------------------------------------------------------------------- the model
@dataclass
class ModelSpec:
    """What each worker needs to build its :class:`~instembed.engine.predict.Predictor` once.

    ``model``: a checkpoint / run folder / shipped name (loaded by each worker) or a network
    (``cfg`` its config; pickled to each worker once). The remaining fields are the Predictor's
    options; ``threads`` sets torch's threads in the worker when given.
    """

    model: Any
    cfg: Any = None
    cluster: Any = None
    device: str = "auto"
    tta: bool = False
    overlap: int | None = None
    tile: int | None = None
    halo: int | None = None
    scale: float | str = 1.0
    diameter: float | None = None
    batch: int = 1
    threads: int | None = None
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    def predictor(self):
        """The Predictor of this spec, built at the first call in this process."""
        with _LOCK:
            hit = _CACHE.get(self.token)
            if hit is not None:
                return hit
            import torch

            from instembed.engine.distributed import resolve_device
            from instembed.engine.predict import Predictor, load_model

            if self.threads:
                torch.set_num_threads(int(self.threads))
            dev = resolve_device(str(self.device), key="device")
            if isinstance(self.model, (str, os.PathLike)):
                net, cfg = load_model(self.model, dev)
            else:
                net, cfg = self.model, self.cfg
            pred = Predictor(
                net,
                cfg,
                device=dev,
                tile=self.tile,
                overlap=self.overlap,
                tta=self.tta,
                batch=self.batch,
                cluster=self.cluster,
                halo=self.halo,
                scale=self.scale,
                diameter=self.diameter,
            )
            _CACHE[self.token] = pred
            _LOADS[self.token] = _LOADS.get(self.token, 0) + 1
            while len(_CACHE) > 2:
                _CACHE.popitem(last=False)
            return pred

    def loads(self) -> int:
        """How often this process has built the model of this spec (1 when cached)."""
        return _LOADS.get(self.token, 0)


def model_identity(model) -> str:
    """A string that changes when the weights change: a checkpoint's path and sha256, or the
    sha256 of a network's parameters and buffers."""
    import hashlib

    from instembed.engine.predict import resolve_model, sha256_file

    if isinstance(model, (str, os.PathLike)):
        path = resolve_model(model).resolve()
        return f"{path} sha256:{sha256_file(path)}"
    import torch

    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name} {t.dtype} {tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"{type(model).__qualname__} sha256:{h.hexdigest()}"


# --------------------------------------------------------------------------- where tasks run
@contextlib.contextmanager
def dask_client(scheduler=None, workers: int | None = None):
    """The Dask client for ``scheduler`` (module docstring), or None for ``"synchronous"``; a
    local cluster (or a client made from an address) is closed on exit."""
    if isinstance(scheduler, str) and scheduler.lower() in SYNC:
        yield None
        return
    from distributed import Client

    if isinstance(scheduler, Client):
        yield scheduler
        return
    if scheduler is not None and not isinstance(scheduler, str):
        raise TypeError(
            "scheduler: expected None (a local cluster), a scheduler address, a "
            f"distributed.Client or 'synchronous', got {type(scheduler).__name__}"
        )
    cluster = None
    # the local scheduler and nannies log every start and stop at INFO: quiet unless asked for
    dlog = logging.getLogger("distributed")
    level = dlog.level
    if scheduler is None and logging.getLogger().getEffectiveLevel() >= logging.WARNING:
        dlog.setLevel(logging.WARNING)
    try:
        if scheduler is None:
            from distributed import LocalCluster

            n = max(1, os.cpu_count() or 1) if workers is None else int(workers)
            if n < 1:
                raise ValueError(f"workers must be >= 1, got {workers}")
            cluster = LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
            client = Client(cluster)
        else:
            try:
                client = Client(scheduler, timeout="20s")
            except OSError as err:
                raise ValueError(
                    f"scheduler {scheduler}: cannot connect to a Dask scheduler there ({err})"
                ) from None
        try:
            yield client
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()
        dlog.setLevel(level)


class Runner:
    """Runs ``fn(*args)`` for a set of jobs in this process (``client`` None) or as Dask tasks,
    handing each result or exception over as it comes."""

    def __init__(self, client=None) -> None:
        self.client = client
        self.token = uuid.uuid4().hex[:12]

    def share(self, obj):
        """``obj`` as a task argument: sent once to every worker (Dask), or itself."""
        if self.client is None:
            return obj
        return self.client.scatter(obj, broadcast=True, hash=False)

    def run(
        self,
        fn: Callable,
        jobs: dict[Any, tuple],
        what: str,
        on_result: Callable[[Any, Any], None],
        progress: Callable[[str, int, int], None] | None = None,
    ) -> dict[Any, BaseException]:
        """Run every job; returns {job: exception} of those that failed."""
        errors: dict[Any, BaseException] = {}
        total, done = len(jobs), 0
        if progress is not None:
            progress(what, 0, total)
        if self.client is None:
            for key, args in jobs.items():
                try:
                    on_result(key, fn(*args))
                except Exception as err:  # reported with the others at the end
                    errors[key] = err
                done += 1
                if progress is not None:
                    progress(what, done, total)
            return errors
        from distributed import as_completed

        futures = {
            self.client.submit(
                fn, *args, key=f"instembed-{what}-{key}-{self.token}", pure=False
            ): key
            for key, args in jobs.items()
        }
        try:
            for fut in as_completed(list(futures)):
                key = futures[fut]
                try:  # the task's exception, KilledWorker, or a result lost with its worker
                    res = fut.result()
                except Exception as err:
                    errors[key] = err
                else:
                    on_result(key, res)
                fut.release()
                done += 1
                if progress is not None:
                    progress(what, done, total)
        except BaseException:
            self.client.cancel(list(futures))
            raise
        return errors


def describe_failure(err: BaseException) -> str:
    """One line for a failed task: its own message, or what happened to its worker."""
    if isinstance(err, TaskFailed):
        return str(err)
    name = type(err).__name__
    if "Cancelled" in name:
        return f"its result was lost with its worker ({name}: {str(err)[:200]})"
    if name == "KilledWorker":
        return f"the worker running it died (KilledWorker: {str(err).splitlines()[0][:200]})"
    return f"{name}: {err}"


def progress_callback(progress):
    """``fn(phase, done, total)`` from the ``progress`` argument (True: tqdm bars on stderr)."""
    if progress is None or progress is False:
        return None
    if callable(progress):
        return progress
    import sys

    from tqdm.auto import tqdm

    bars: dict[str, Any] = {}

    def show(phase: str, done: int, total: int) -> None:
        bar = bars.get(phase)
        if bar is None:
            bar = bars[phase] = tqdm(total=total, desc=phase, unit="task", file=sys.stderr)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return show


def raise_failed(name: str, what: str, failed: dict, total: int, where, rows=None) -> None:
    """Raise :class:`BlockwiseError` for the ``failed`` {key: exception} of ``total`` tasks on
    ``what`` (``"block"``, ``"image"``, ...) of ``name``; ``rows(key)`` adds where a key lies."""
    lines = [
        f"  {what} {k}{rows(k) if rows else ''}: {describe_failure(e)}"
        for k, e in sorted(failed.items(), key=lambda kv: str(kv[0]))
    ]
    raise BlockwiseError(
        f"{name}: {len(failed)} of {total} {what}(s) failed; the finished ones are kept in "
        f"{where} -- run again with the same settings to compute only the missing ones:\n"
        + "\n".join(lines),
        [(k, describe_failure(e)) for k, e in failed.items()],
    )


# --------------------------------------------------------------------------- many images
def _file_task(spec, path: str, stem: str, out: str, opts, channel) -> dict:
    from instembed.engine.predict import write_prediction

    try:
        pred = spec.predictor()
        image = pred.read(path, channel)
        res = pred(image)
        write_prediction(Path(out), stem, image, res, opts)
    except Exception as err:
        log.exception("%s failed", path)
        msg = str(err) if str(path) in str(err) else f"{path}: {type(err).__name__}: {err}"
        raise TaskFailed(msg) from None
    return {"instances": int(res.num_instances), "pid": os.getpid(), "loads": spec.loads()}


@dataclass
class FilesRun:
    """What :func:`predict_files` did: images ``done`` (``skipped`` ones had all their files
    already), ``instances`` found, ``failed`` (input, reason) pairs, ``loads`` (process id ->
    model loads there), ``seconds``."""

    done: int = 0
    skipped: int = 0
    instances: int = 0
    failed: list = field(default_factory=list)
    loads: dict = field(default_factory=dict)
    seconds: float = 0.0


def predict_files(
    files: list,
    names: list[str],
    spec: ModelSpec,
    out,
    opts,
    *,
    channel: int | None = None,
    scheduler=None,
    workers: int | None = None,
    threads: int | None = None,
    progress=None,
    skip: set | None = None,
) -> FilesRun:
    """Segment image files as Dask tasks, one per image, each written as ``instembed predict``
    writes it (:func:`instembed.engine.predict.write_prediction` with ``opts``) under ``out``
    with its name from ``names``; each image read as the model's training data were
    (:meth:`instembed.engine.predict.Predictor.read`). Inputs in ``skip``
    are left out (counted as ``skipped``). A failed image is listed in ``failed`` and the
    others go on."""
    t0 = time.perf_counter()
    run = FilesRun(skipped=len(skip or ()))
    if threads is None and scheduler is None:
        threads = 1
    spec.threads = threads
    with dask_client(scheduler, workers) as client:
        runner = Runner(client)
        shared = runner.share(spec)
        jobs = {
            str(f): (shared, str(f), name, str(out), opts, channel)
            for f, name in zip(files, names)
            if not skip or f not in skip
        }

        def got(key, res):
            run.done += 1
            run.instances += res["instances"]
            run.loads[res["pid"]] = max(run.loads.get(res["pid"], 0), res["loads"])

        failed = runner.run(_file_task, jobs, "images", got, progress_callback(progress))
    run.failed = [(k, describe_failure(e)) for k, e in failed.items()]
    run.seconds = time.perf_counter() - t0
    return run

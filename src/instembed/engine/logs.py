"""Training logs and stop signals: CSV files, the optional TensorBoard writer, SIGINT / SIGTERM.

:class:`CsvLog` appends rows whose header is fixed by the first row (or the file already on
disk, so a resumed run keeps its columns); a fresh run starts a fresh file (``fresh=True``) and a
resumed one first drops the rows of steps after its checkpoint (``keep_through_step``), so no
step is logged twice. :func:`open_tensorboard` returns None when the optional ``tensorboard``
extra is missing (``purge_step`` drops the events of a resumed run's replayed steps);
:func:`run_log_file` copies the run's log messages into ``run.log`` in the run folder;
:func:`stop_on_signals` turns Ctrl-C / SIGTERM into a flag the loop checks after each step (a
second Ctrl-C raises at once).
"""

from __future__ import annotations

import csv
import logging
import os
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class CsvLog:
    """Append rows to a CSV file; the header is fixed by the first row (or the existing file).

    ``fresh=True`` deletes an existing file first (a new run never appends to an old run's log).
    ``keep_through_step=s`` keeps only the existing rows whose ``step`` is at most ``s`` (a run
    resumed from step ``s`` drops the rows written after that checkpoint before it appends).
    """

    def __init__(
        self, path: Path, *, fresh: bool = False, keep_through_step: int | None = None
    ) -> None:
        self.path = Path(path)
        self.fields: list[str] | None = None
        if fresh:
            self.path.unlink(missing_ok=True)
        if self.path.is_file() and self.path.stat().st_size > 0:
            with open(self.path, newline="") as fh:
                self.fields = next(csv.reader(fh), None)
            if keep_through_step is not None and self.fields:
                self._truncate(keep_through_step)

    def _truncate(self, step: int) -> None:
        with open(self.path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        kept = [r for r in rows if not _after(r.get("step"), step)]
        if len(kept) == len(rows):
            return
        log.info(
            "%s: dropped %d row(s) of steps after %d (written after the checkpoint resumed from)",
            self.path.name,
            len(rows) - len(kept),
            step,
        )
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, self.fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(kept)
        os.replace(tmp, self.path)

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


def _after(value: str | None, step: int) -> bool:
    """Whether a CSV ``step`` cell names a step after ``step`` (unreadable cells: no)."""
    try:
        return float(value) > step  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def open_tensorboard(folder: Path, purge_step: int | None = None):
    """A TensorBoard ``SummaryWriter`` on ``folder``, or None without the tensorboard extra.

    ``purge_step=s``: events of steps ``>= s`` already in ``folder`` are hidden (a run resumed
    from step ``s - 1`` replays them)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra
        log.info("tensorboard not installed (pip install 'instembed[tensorboard]'): CSV logs only")
        return None
    return SummaryWriter(str(folder), purge_step=purge_step)


class _Forward(logging.Handler):
    """Passes on to the root handlers the records that would have reached them without
    :class:`RunLog` (those at or above the level the logger had before)."""

    def __init__(self, top: logging.Logger, saved_level: int, propagate: bool) -> None:
        super().__init__()
        self.top, self.saved_level, self.propagate = top, saved_level, propagate

    def _would_emit(self, record: logging.LogRecord) -> bool:
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None:
            level = self.saved_level if logger is self.top else logger.level
            if level:
                return record.levelno >= level
            logger = logger.parent  # type: ignore[assignment]
        return True

    def emit(self, record: logging.LogRecord) -> None:
        if self.propagate and self._would_emit(record) and self.top.parent is not None:
            self.top.parent.handle(record)


class RunLog:
    """While open, the ``instembed`` loggers' messages from INFO up are also written to
    ``path``; what reaches the console (or any other handler) is unchanged. :meth:`close` undoes
    it."""

    def __init__(self, path: Path, *, fresh: bool = True) -> None:
        self.top = logging.getLogger("instembed")
        self.saved = (self.top.level, self.top.propagate)
        self.file = logging.FileHandler(path, mode="w" if fresh else "a", encoding="utf-8")
        self.file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.forward = _Forward(self.top, *self.saved)
        self.top.addHandler(self.file)
        self.top.addHandler(self.forward)
        self.top.propagate = False
        if self.top.getEffectiveLevel() > logging.INFO:
            self.top.setLevel(logging.INFO)

    def close(self) -> None:
        if self.file not in self.top.handlers:
            return
        self.top.removeHandler(self.file)
        self.top.removeHandler(self.forward)
        self.top.setLevel(self.saved[0])
        self.top.propagate = self.saved[1]
        self.file.close()


def run_log_file(path: Path, *, fresh: bool = True) -> RunLog:
    """Copy the run's log messages (INFO and up) into ``path`` until ``.close()``; ``fresh``
    starts a new file, else the run's existing log is continued (resume)."""
    return RunLog(path, fresh=fresh)


@contextmanager
def stop_on_signals(flag: dict):
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

"""Options shared by the commands that run a model (train, predict, tune, export, demo).

``--threads N``: :func:`add_threads_argument` declares it, :func:`apply_threads` applies it (torch
intra-op threads, and the BLAS / OpenMP pools through ``threadpoolctl`` when it is installed).
:func:`show_defaults` makes a command's ``--help`` show every option's default, with the
formatter of :mod:`instembed.commands.data`. Nothing heavy is imported here (``--help`` stays
instant and torch-free).
"""

from __future__ import annotations

import argparse

from instembed.commands.data import HelpFormatter

_LIMITS: list = []  # threadpoolctl limiters kept alive for the life of the process


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """``--help`` of ``parser`` shows ``(default: X)`` for each option with a default."""
    parser.formatter_class = HelpFormatter


def add_threads_argument(
    parser: argparse.ArgumentParser, default: int | None = None, why: str = ""
) -> None:
    """Add ``--threads N`` (``default=None``: torch's own choice, one thread per core)."""
    shown = "" if default is not None else " (default: torch's choice, one per core)"
    parser.add_argument(
        "--threads",
        type=int,
        default=default,
        metavar="N",
        help="CPU threads for torch and the BLAS/OpenMP pools"
        + (f"; {why}" if why else "")
        + shown,
    )


def check_threads(n: int | None) -> None:
    """A one-line ``ValueError`` for ``--threads`` below 1."""
    if n is not None and n < 1:
        raise ValueError(f"--threads must be >= 1, got {n}")


def apply_threads(n: int | None) -> None:
    """Use ``n`` CPU threads: ``torch.set_num_threads(n)`` and, when ``threadpoolctl`` is
    installed, the same limit on the BLAS / OpenMP pools (numpy, scipy, scikit-learn).
    ``None`` leaves everything as it is."""
    check_threads(n)
    if n is None:
        return
    import torch

    torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional
        return
    _LIMITS.append(threadpool_limits(limits=n))

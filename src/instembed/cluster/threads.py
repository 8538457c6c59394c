"""Intra-op thread scope of the clusterers.

The clusterers are loops of many small tensor operations (a seed loop over a few thousand sampled
points, a certification pass over cache-sized chunks of pixels). PyTorch's intra-op threads
cannot speed these up, and they can slow them down by orders of magnitude: with more than one
thread, MKL's matrix-vector products and every parallel region wait on OpenMP barriers, and the
idle worker threads keep spinning after each region, competing with the main thread for the cores.
On a machine whose cores are shared with other processes this made the clusterers 3-20x slower
with 2 threads than with 1 (see docs/cluster.md). So the public clusterers run on one intra-op
thread and restore the caller's setting when they return. TorchScript-compiled clusterers skip
this (``torch.set_num_threads`` is not scriptable); set the thread count around them yourself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def one_intra_op_thread() -> Iterator[None]:
    """Run the enclosed code with ``torch.set_num_threads(1)``, then restore the previous count
    (also on error). Nested use is a no-op."""
    n = torch.get_num_threads()
    if n > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n > 1:
            torch.set_num_threads(n)

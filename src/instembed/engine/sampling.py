"""Data order and seeds: the batches of step ``s`` depend only on ``run.seed`` and ``s``.

Epoch ``e`` is a :class:`~torch.utils.data.DistributedSampler` permutation seeded with
``(run.seed, e)`` (:class:`StepSampler`), and item ``k`` of a rank's stream gets its own
augmentation seed derived from ``(run.seed, rank, k)``, under which :class:`SeededItems` draws
the item with every global RNG seeded. So a run resumed at step ``s`` sees the same batches as
one that never stopped.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator

import numpy as np
import torch

from instembed.engine import checkpoint as ck
from instembed.engine.distributed import DistInfo


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (stable across processes and platforms)."""
    h = hashlib.blake2b(np.asarray(values, np.int64).tobytes(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds the global state libraries use
    random.seed(seed)


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

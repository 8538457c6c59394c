"""Data order and seeds: the batches of step ``s`` depend only on ``run.seed`` and ``s``.

Epoch ``e`` is a :class:`~torch.utils.data.DistributedSampler` permutation seeded with
``(run.seed, e)`` (:class:`StepSampler`), and item ``k`` of a rank's stream gets its own
augmentation seed derived from ``(run.seed, rank, k)``, under which :class:`SeededItems` draws
the item with every global RNG seeded. So a run resumed at step ``s`` sees the same batches as
one that never stopped.

With group weights (``data.look_weights``: the image looks of :mod:`instembed.data.looks`),
stream item ``k`` of a rank first draws its group ``g`` with probability ``w_g / sum w`` (a
uniform from ``numpy.random.default_rng`` seeded with ``(run.seed, rank, k // 4096)``), then
takes the next image of that group's own endless stream: epochs of a ``DistributedSampler``
permutation of the group's images, seeded with ``(run.seed, g)`` and split between the ranks
like the plain stream. Every image of a group is seen once per group epoch, the draws depend
only on ``(run.seed, rank, k)``, and resuming at item ``k`` replays the group draws of items
``< k`` (vectorised, 4096 at a time) to find each group's position.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch

from instembed.engine import checkpoint as ck
from instembed.engine.distributed import DistInfo


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (stable across processes and platforms)."""
    h = hashlib.blake2b(np.asarray(values, np.int64).tobytes(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


def _mix_str(*parts: int | str) -> int:
    """A 62-bit seed from integers and strings (stable across processes and platforms)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 2


_BLOCK = 4096  # group draws made at once


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds the global state libraries use
    random.seed(seed)


class StepSampler(torch.utils.data.Sampler):
    """Endless stream of ``(index, item_seed)`` for this rank, starting at stream item ``start``.

    Epoch ``e`` uses ``DistributedSampler(shuffle=True, seed=seed)`` with ``set_epoch(e)``; the
    item seed is a hash of ``(seed, rank, k)`` for the ``k``-th item of this rank's stream.

    With ``groups`` (one label per index, e.g. image looks) and ``weights`` (``{label: w}``), the
    index of item ``k`` is drawn group-first (module doc); labels without a weight, or weight 0,
    are never drawn; a label with a weight > 0 and no index is an error.
    """

    def __init__(
        self,
        n: int,
        seed: int,
        dist: DistInfo,
        start: int = 0,
        groups: Sequence[str] | None = None,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        self.n, self.seed, self.dist, self.start = n, seed, dist, start
        self.weights = None
        if weights is not None:
            if groups is None or len(groups) != n:
                got = None if groups is None else len(groups)
                raise ValueError(f"group weights need one group label per index ({n}), got {got}")
            names = sorted(k for k, w in weights.items() if w > 0)
            members = {g: [i for i in range(n) if groups[i] == g] for g in names}
            empty = [g for g in names if not members[g]]
            if empty:
                present = sorted(set(groups))
                raise ValueError(
                    f"group weights: no image of group(s) {empty} (groups present: {present})"
                )
            total = float(sum(weights[g] for g in names))
            self.names, self.members = names, members
            self.cdf = np.cumsum([weights[g] / total for g in names])
            self.weights = {g: float(weights[g]) / total for g in names}

    def _epoch(self, e: int, n: int | None = None, seed: int | None = None) -> list[int]:
        from torch.utils.data import DistributedSampler

        ds = DistributedSampler(
            range(self.n if n is None else n),
            num_replicas=self.dist.world,
            rank=self.dist.rank,
            shuffle=True,
            seed=self.seed if seed is None else seed,
        )
        ds.set_epoch(e)
        return list(ds)

    def _draws(self, block: int) -> np.ndarray:
        """Group positions (into ``self.names``) of stream items ``block * 4096 ...``."""
        u = np.random.default_rng([int(self.seed), self.dist.rank, block, 0x6C6F6F6B]).random(
            _BLOCK
        )
        return np.minimum(np.searchsorted(self.cdf, u, side="right"), len(self.names) - 1)

    def _grouped(self) -> Iterator[tuple[int, int]]:
        done = np.zeros(len(self.names), np.int64)  # items of each group before self.start
        for b in range(self.start // _BLOCK):
            done += np.bincount(self._draws(b), minlength=len(self.names))
        block = self.start // _BLOCK
        draws = self._draws(block)
        done += np.bincount(draws[: self.start % _BLOCK], minlength=len(self.names))
        seeds = [_mix_str(self.seed, "group", g) for g in self.names]
        per_epoch = [
            len(self._epoch(0, len(self.members[g]), s)) for g, s in zip(self.names, seeds)
        ]
        orders: dict[tuple[int, int], list[int]] = {}
        pos = self.start
        while True:
            if pos // _BLOCK != block:
                block = pos // _BLOCK
                draws = self._draws(block)
            gi = int(draws[pos % _BLOCK])
            e, k = divmod(int(done[gi]), per_epoch[gi])
            if (gi, e) not in orders:
                orders = {key: v for key, v in orders.items() if key[0] != gi}
                orders[gi, e] = self._epoch(e, len(self.members[self.names[gi]]), seeds[gi])
            done[gi] += 1
            yield (
                self.members[self.names[gi]][orders[gi, e][k]],
                _mix(self.seed, self.dist.rank, pos),
            )
            pos += 1

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.weights is not None:
            yield from self._grouped()
            return
        per_epoch = len(self._epoch(0))
        e, k = divmod(self.start, per_epoch)
        pos = self.start
        while True:
            order = self._epoch(e)
            for idx in order[k:]:
                yield int(idx), _mix(self.seed, self.dist.rank, pos)
                pos += 1
            e, k = e + 1, 0


def train_sampler(train_set, data_cfg, seed: int, dist: DistInfo, start: int = 0) -> StepSampler:
    """The training :class:`StepSampler`: plain, or drawing by image look when
    ``data_cfg.look_weights`` is set (looks from :func:`instembed.data.looks.sample_looks` over
    ``train_set.samples``, computed once and kept on ``train_set``)."""
    if getattr(data_cfg, "look_weights", None) is None:
        return StepSampler(len(train_set), seed, dist, start=start)
    from instembed.data.looks import check_look_weights, sample_looks

    weights = check_look_weights(data_cfg.look_weights)
    looks = getattr(train_set, "looks", None)
    if looks is None:
        looks = sample_looks(getattr(train_set, "samples", train_set))
        train_set.looks = looks
    try:
        return StepSampler(len(train_set), seed, dist, start, groups=looks, weights=weights)
    except ValueError as err:
        raise ValueError(f"data.look_weights: {err}") from None


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

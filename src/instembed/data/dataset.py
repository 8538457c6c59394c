"""PyTorch dataset over Samples (a list or any reader) and the batch collate function.

Each item is a dict of tensors (the batch contract shared with losses and the engine)::

    "image"          float32 (C, H, W)
    "labels"         int64   (H, W)  0 = background, 1..N = instances (sequential); pixels that
                                     belong to several masks of a stack are 0 here and True in
                                     "ignore"
    "ignore"         bool    (H, W)  True = excluded from losses and scores
    "semantic"       int64   (H, W)  class ids, 255 = void (only when the samples have it)
    "classes"        int64   (N,)    class of instance k at position k - 1 (when known)
    "instance_masks" bool    (N, H, W) one mask per instance, overlaps kept (mask stacks) --
                                     ``instance_masks[k - 1]`` is instance k of "labels"
    "boxes"          float32 (N, 4)  x1, y1, x2, y2 of each mask (pixel edges)
    "coords_origin"  int64   (2,)    (y0, x0) of this crop in the (augmented) full image
    "centres"        float32 (N, 2)  (y, x) of each instance's whole-image centre in this crop's
                                     pixel coordinates (may lie outside the crop); only when
                                     the dataset computes centres (``center`` != "centroid")
    "index"          int64   ()      position in the underlying sequence
    + the tensors returned by ``instembed.targets.build_targets(name, labels, ...)`` for
      each name in ``targets``.

:func:`collate` stacks equal-shaped tensors along a new batch dimension and keeps the
per-instance ones (``classes``, ``instance_masks``, ``boxes``, ``centres``) as lists of per-image tensors.
:func:`image_targets` turns a batch into the per-image target dicts a model receives
(``model(image, coords_origin, targets)``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from instembed.data.sample import Sample
from instembed.data.transforms import frame, relabel
from instembed.structures import masks_to_boxes

log = logging.getLogger(__name__)


class InstanceDataset(torch.utils.data.Dataset):
    """A torch Dataset of instance-segmentation items built from Samples.

    Args:
        samples: a sequence of :class:`Sample` (a list, a reader from
            :func:`~instembed.data.readers.open_dataset`, ...), read lazily by index.
        transform: a callable ``(sample, rng) -> Sample`` (e.g.
            :class:`~instembed.data.transforms.Compose`), or ``None``.
        targets: names of method-specific targets (``"center_offset"``, ...) built by
            ``instembed.targets.build_targets``; a mapping ``{name: kwargs}`` passes
            options.
        seed: with a seed, item ``i`` in epoch ``e`` (see :meth:`set_epoch`) is augmented with
            ``numpy.random.default_rng([seed, e, i])``; without one, the generator is seeded from
            torch's global RNG (distinct per DataLoader worker and reproducible under
            ``torch.manual_seed``).
        center: object centres for the spatial-embedding loss
            (:data:`instembed.data.centres.CENTRE_METHODS`). ``"centroid"`` (default) stores
            none (the loss uses the per-crop centroid); otherwise the centres are computed on the
            whole image when it is first read (cached per index, per process), carried through
            the transforms and returned as ``item["centres"]``.
        center_stride: block size of ``center="approx_medoid"``.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable | None = None,
        targets: Sequence[str] | Mapping[str, dict] = (),
        seed: int | None = None,
        center: str = "centroid",
        center_stride: int = 3,
    ) -> None:
        from instembed.data.centres import CENTRE_METHODS

        if center not in CENTRE_METHODS:
            raise ValueError(f"center must be one of {CENTRE_METHODS}, got {center!r}")
        self.center, self.center_stride = center, int(center_stride)
        self._centres: dict[int, np.ndarray] = {}  # index -> centres of the relabelled image
        if not hasattr(samples, "__getitem__") or not hasattr(samples, "__len__"):
            raise TypeError(
                f"samples must be a sequence of Samples or a reader, got {type(samples).__name__}"
            )
        self.samples = samples
        self.transform = transform
        self.targets = dict(targets) if isinstance(targets, Mapping) else {t: {} for t in targets}
        self.seed = seed
        self.epoch = 0
        if self.targets:
            from instembed.targets import TARGET_NAMES

            unknown = set(self.targets) - set(TARGET_NAMES)
            if unknown:  # fail now, not in a worker
                raise ValueError(
                    f"unknown target name(s) {sorted(unknown)}; valid names: {list(TARGET_NAMES)}"
                )

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        if self.seed is not None:
            return np.random.default_rng([int(self.seed), self.epoch, int(index)])
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.samples[index]
        if not isinstance(sample, Sample):
            raise TypeError(f"item {index} is a {type(sample).__name__}, expected a Sample")
        if self.center != "centroid":
            sample = self._with_centres(sample, index)
        if self.transform is not None:
            sample = self.transform(sample, self._rng(index))
        return sample_to_item(sample, index, self.targets)

    def _with_centres(self, sample: Sample, index: int) -> Sample:
        """Relabel the whole image and attach its object centres (computed once per index)."""
        from instembed.data.centres import with_centres

        sample = relabel(sample)
        cached = self._centres.get(int(index))
        if cached is None or len(cached) != sample.num_instances:
            cached = self._centres[int(index)] = with_centres(
                sample, self.center, self.center_stride
            ).meta["centres"] - np.asarray(frame(sample)[0], np.float64)
        return with_centres(sample, self.center, centres=cached)


def sample_to_item(
    sample: Sample, index: int = 0, targets: Mapping[str, dict] | None = None
) -> dict[str, torch.Tensor]:
    """One Sample -> the item dict described in the module docstring."""
    sample = relabel(sample)
    h, w = sample.shape
    ignore = np.zeros((h, w), bool) if sample.ignore is None else sample.ignore.astype(bool)
    if sample.is_stack:
        cover = sample.instances.sum(0)
        labels = sample.label_image().astype(np.int64)
        overlap = cover > 1
        labels[overlap] = 0
        ignore = ignore | overlap
        masks = sample.instances.astype(bool, copy=False)
    else:
        labels = sample.instances.astype(np.int64)
        n = int(labels.max(initial=0))  # relabelled: ids 1..n
        masks = labels[None] == np.arange(1, n + 1, dtype=np.int64).reshape(-1, 1, 1)
    (y0, x0), _ = frame(sample)
    item: dict[str, torch.Tensor] = {
        "image": torch.from_numpy(np.ascontiguousarray(sample.image, np.float32)),
        "labels": torch.from_numpy(np.ascontiguousarray(labels)),
        "ignore": torch.from_numpy(np.ascontiguousarray(ignore)),
        "instance_masks": torch.from_numpy(np.ascontiguousarray(masks)),
        "boxes": torch.from_numpy(masks_to_boxes(masks)),
        "coords_origin": torch.tensor([y0, x0], dtype=torch.int64),
        "index": torch.tensor(int(index), dtype=torch.int64),
    }
    centres = sample.meta.get("centres")
    if centres is not None:
        centres = np.asarray(centres, np.float64) - np.array([y0, x0], np.float64)
        if len(centres) != masks.shape[0]:
            raise ValueError(
                f"meta['centres'] has {len(centres)} rows for {masks.shape[0]} instances"
                + (f" in {sample.path}" if sample.path else "")
            )
        item["centres"] = torch.from_numpy(centres.astype(np.float32))
    if sample.semantic is not None:
        item["semantic"] = torch.from_numpy(np.ascontiguousarray(sample.semantic, np.int64))
    if sample.classes is not None:
        item["classes"] = torch.as_tensor(np.asarray(sample.classes, np.int64))
    if targets:
        from instembed.targets import build_targets as build

        for name, kw in targets.items():
            extra = build(name, item["labels"], **kw)
            clash = set(extra) & set(item)
            if clash:
                raise ValueError(
                    f"target {name!r} returned keys {sorted(clash)} already in the item"
                )
            item.update(extra)
    return item


PER_INSTANCE_KEYS = ("classes", "instance_masks", "boxes", "centres")
"""Batch keys that hold one entry per instance: lists of per-image tensors after collate."""


def collate(items: Sequence[Mapping[str, torch.Tensor]]) -> dict:
    """Stack a list of item dicts into a batch dict.

    Tensors are stacked along a new dim 0 (differing shapes are an error naming the key), except
    the per-instance :data:`PER_INSTANCE_KEYS`, which stay lists of per-image tensors. Non-tensor
    values become lists.
    """
    if not items:
        raise ValueError("collate: got an empty list of items")
    keys = list(items[0])
    for i, it in enumerate(items[1:], start=1):
        if set(it) != set(keys):
            raise ValueError(
                f"collate: item {i} has keys {sorted(it)}, item 0 has {sorted(keys)} (mixed "
                "samples with and without semantic/classes in one batch?)"
            )
    batch: dict = {}
    for k in keys:
        vals = [it[k] for it in items]
        if not all(isinstance(v, torch.Tensor) for v in vals):
            batch[k] = vals
            continue
        shapes = {tuple(v.shape) for v in vals}
        if k in PER_INSTANCE_KEYS:  # variable length: always a list of per-image tensors
            batch[k] = vals
        elif len(shapes) == 1:
            batch[k] = torch.stack(vals)
        else:
            raise ValueError(
                f"collate: {k!r} has different shapes in one batch: {sorted(shapes)}; images in a "
                "batch must share a size (add a RandomCrop(size) transform or use batch size 1)"
            )
    return batch


def image_targets(batch: Mapping) -> list[dict[str, torch.Tensor]]:
    """The per-image targets of a collated batch, as a model receives them.

    One dict per image with ``labels`` (H, W), ``ignore`` (H, W), ``masks`` (N, H, W) bool
    (overlaps kept), ``boxes`` (N, 4) and, when the data have them, ``classes`` (N,) and
    ``semantic`` (H, W). The tensors are the batch's own (no copy).
    """
    n = int(batch["image"].shape[0])
    out = []
    for i in range(n):
        t = {
            "labels": batch["labels"][i],
            "ignore": batch["ignore"][i],
            "masks": batch["instance_masks"][i],
            "boxes": batch["boxes"][i],
        }
        if "classes" in batch:
            t["classes"] = batch["classes"][i]
        if "semantic" in batch:
            t["semantic"] = batch["semantic"][i]
        out.append(t)
    return out

"""Build the run's components from a :class:`~instembed.engine.config.Config`.

Model, loss and clusterer are three separate objects (the network never computes its loss or
clusters); this module is the one place that turns config sections into them, plus the data sets.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from instembed.engine.config import ClusterConfig, Config, DataConfig, LossConfig, ModelConfig

log = logging.getLogger(__name__)


def model_kwargs(mc: ModelConfig) -> dict[str, Any]:
    """Keyword arguments of :func:`instembed.models.build_model` for this section."""
    kw: dict[str, Any] = {"in_channels": mc.in_channels, **mc.params}
    if mc.backbone is not None:
        kw["backbone"] = mc.backbone
    return kw


def build_model_from_config(mc: ModelConfig):
    """``instembed.models.build_model(mc.name, ...)``: an ``nn.Module`` called
    ``model(image, coords_origin=None, targets=None) -> Outputs``."""
    from instembed.models import build_model

    return build_model(mc.name, **model_kwargs(mc))


class CompositeLoss(nn.Module):
    """Weighted sum of several losses (multi-task training, e.g. embedding + semantic CE).

    ``parts``: (name, weight, loss module). ``forward(outputs, batch) -> (total, terms)`` with
    each loss's total under its name and its terms as ``<name>/<term>``.
    """

    def __init__(self, parts: list[tuple[str, float, nn.Module]]) -> None:
        super().__init__()
        self.names = [n for n, _, _ in parts]
        self.weights = [float(w) for _, w, _ in parts]
        self.parts = nn.ModuleList(m for _, _, m in parts)

    def forward(self, outputs, batch: dict):
        total = None
        terms: dict[str, torch.Tensor] = {}
        for name, w, loss in zip(self.names, self.weights, self.parts):
            t, sub = loss(outputs, batch)
            total = w * t if total is None else total + w * t
            terms[name] = t.detach()
            terms.update({f"{name}/{k}": v.detach() for k, v in sub.items() if k != name})
        return total, terms


def build_loss_from_config(lc: LossConfig):
    """``instembed.losses.build_loss(lc.name, **lc.params)``, plus ``lc.extra`` losses summed."""
    from instembed.losses import build_loss

    main = build_loss(lc.name, **lc.params)
    if not lc.extra:
        return main
    parts = [(lc.name, 1.0, main)]
    for i, entry in enumerate(lc.extra):
        unknown = set(entry) - {"name", "weight", "params"}
        if "name" not in entry or unknown:
            raise ValueError(
                f"loss.extra[{i}]: expected keys name, weight, params; got {sorted(entry)}"
            )
        parts.append(
            (
                str(entry["name"]),
                float(entry.get("weight", 1.0)),
                build_loss(entry["name"], **dict(entry.get("params") or {})),
            )
        )
    return CompositeLoss(parts)


# parameters of ClusterConfig.params consumed here, not by the clusterer
ENGINE_CLUSTER_PARAMS = ("foreground_classes", "stuff_classes")


def cluster_outputs(outputs, cc: ClusterConfig):
    """Cluster the outputs of ONE image (batch dimension 1) with the configured method.

    ``foreground_classes`` in ``cc.params``: the foreground is the pixels whose semantic argmax
    is one of them (models with a semantic head). Returns the clusterer's ``Instances``
    (``labels`` (H, W) int64, ``scores`` (N,), optional ``classes`` (N,)).
    """
    from instembed.cluster import cluster_embeddings

    params = {k: v for k, v in cc.params.items() if k not in ENGINE_CLUSTER_PARAMS}
    foreground = None
    fg_classes = cc.params.get("foreground_classes")
    if fg_classes is not None:
        if outputs.semantic is None:
            raise ValueError("cluster.params.foreground_classes needs a model with a semantic head")
        sem = outputs.semantic[0].argmax(0)
        foreground = torch.isin(sem, torch.as_tensor(list(fg_classes), device=sem.device))
    return cluster_embeddings(outputs, cc.method, foreground=foreground, **params)


# --------------------------------------------------------------------------- data
def train_transform(dc: DataConfig):
    """Training augmentation: scale / crop / flip / rot90 switches, then ``data.augment`` specs
    (names or ``{"name": ..., **params}`` of :data:`instembed.data.transforms.TRANSFORMS`)."""
    from instembed.data.transforms import build_transforms

    spec: list = []
    if dc.crop is not None:
        if len(dc.crop) != 2:
            raise ValueError(f"data.crop: expected [H, W], got {dc.crop}")
        spec.append({"name": "crop", "size": list(dc.crop)})
    if dc.flip:
        spec.append("flip")
    if dc.rot90:
        spec.append("rot90")
    spec.extend(dc.augment)
    try:
        return build_transforms(spec) if spec else None
    except (TypeError, ValueError) as err:
        raise ValueError(f"data.augment: {err}") from None


def load_samples(dc: DataConfig, seed: int) -> tuple[Any, Any]:
    """(train, val) sequences of :class:`~instembed.data.Sample` for this data section.

    Synthetic: ``make_samples(synth, n_train, size, seed)`` and ``n_val`` more with seed
    ``seed + 1_000_003``. Folder: ``open_dataset(path)``, validation from ``val_path`` or the
    recorded split ``split`` (:func:`instembed.data.splits.split_dataset`), or the
    last ``val_fraction`` of the (sorted) training set. Raises ``FileNotFoundError`` for a
    missing folder and ``ValueError`` for an empty data set, naming the path.
    """
    if dc.synth is not None and dc.path is not None:
        raise ValueError("data: give either data.synth (a synthetic kind) or data.path, not both")
    if dc.synth is not None:
        from instembed.data.synth import make_samples

        size = tuple(dc.size)
        if len(size) != 2:
            raise ValueError(f"data.size: expected [H, W], got {list(dc.size)}")
        train = make_samples(dc.synth, dc.n_train, size=size, seed=seed, **dc.synth_params)
        val = make_samples(dc.synth, dc.n_val, size=size, seed=seed + 1_000_003, **dc.synth_params)
        if not train:
            raise ValueError(f"data.n_train: need at least one training sample, got {dc.n_train}")
        return train, val
    if dc.path is None:
        raise ValueError("data: neither data.synth nor data.path is set")
    from instembed.data.readers import open_dataset

    path = Path(dc.path)
    if not path.exists():
        raise FileNotFoundError(f"data.path: data folder not found: {path}")
    train = open_dataset(path, format=dc.format, **dc.reader_params)
    if len(train) == 0:
        raise ValueError(f"data.path: empty data set (no samples found) in {path}")
    if dc.val_path is not None:
        vpath = Path(dc.val_path)
        if not vpath.exists():
            raise FileNotFoundError(f"data.val_path: data folder not found: {vpath}")
        val = open_dataset(vpath, format=dc.format, **dc.reader_params)
        if len(val) == 0:
            raise ValueError(f"data.val_path: empty data set (no samples found) in {vpath}")
        return train, val
    if dc.split is not None:
        from instembed.data.splits import split_dataset

        try:
            return split_dataset(train, dc.split)
        except ValueError as err:
            raise ValueError(f"data.split: {err}") from None
    n_val = int(round(len(train) * dc.val_fraction))
    if n_val == 0 or n_val >= len(train):
        return _Subset(train, range(len(train))), _Subset(train, range(0))
    cut = len(train) - n_val
    return _Subset(train, range(cut)), _Subset(train, range(cut, len(train)))


class _Subset:
    """A lazy slice of a reader (samples are loaded on access)."""

    def __init__(self, base, indices) -> None:
        self.base, self.indices = base, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.base[self.indices[i]]


def build_datasets(cfg: Config):
    """(train InstanceDataset with augmentation + targets, list-like of validation Samples)."""
    from instembed.data.dataset import InstanceDataset

    train_samples, val_samples = load_samples(cfg.data, cfg.run.seed)
    train = InstanceDataset(
        train_samples,
        transform=train_transform(cfg.data),
        targets=tuple(cfg.data.targets),
        center=cfg.data.center,
    )
    return train, val_samples

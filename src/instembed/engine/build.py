"""Build the run's components from a :class:`~instembed.engine.config.Config`.

Model, loss and clusterer are three separate objects (the network never computes its loss or
clusters); this module is the one place that turns config sections into them, plus the data sets.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from instembed.engine.config import ClusterConfig, Config, DataConfig, LossConfig, ModelConfig

log = logging.getLogger(__name__)


def model_kwargs(mc: ModelConfig) -> dict[str, Any]:
    """Keyword arguments of :func:`instembed.models.build_model` for this section."""
    kw: dict[str, Any] = {
        "in_channels": mc.in_channels,
        "heads": dict(mc.heads),
        "semiconv": mc.semiconv,
        **mc.params,
    }
    if mc.coord_scale is not None:
        kw["coord_scale"] = mc.coord_scale
    return kw


def build_model_from_config(mc: ModelConfig):
    """``instembed.models.build_model(mc.name, ...)`` -> ``nn.Module`` returning ``Outputs``."""
    from instembed.models import build_model

    return build_model(mc.name, **model_kwargs(mc))


def build_loss_from_config(lc: LossConfig):
    """``instembed.losses.build_loss(lc.name, **lc.params)``."""
    from instembed.losses import build_loss

    return build_loss(lc.name, **lc.params)


def cluster_outputs(outputs, cc: ClusterConfig):
    """Cluster the outputs of ONE image (batch dimension 1) with the configured method.

    Returns the clusterer's ``ClusterResult`` (``labels`` (H, W) int64, ``scores`` (N,),
    optional ``classes`` (N,)).
    """
    from instembed.cluster import cluster_embeddings

    return cluster_embeddings(outputs, cc.method, **cc.params)


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
        train_samples, transform=train_transform(cfg.data), targets=tuple(cfg.data.targets)
    )
    return train, val_samples

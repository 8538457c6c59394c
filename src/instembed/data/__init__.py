"""Data stage: the :class:`Sample` contract, readers, synthetic scenes, augmentation.

Importing this package is light (numpy only); torch is imported by
:mod:`instembed.data.dataset` when it is used. The main entry points are re-exported lazily::

    from instembed.data import Sample, make_samples, open_dataset, read_image, write_labels
    from instembed.data import InstanceDataset, collate      # imports torch on first use
"""

from __future__ import annotations

import importlib
from typing import Any

from instembed.data.sample import Sample
from instembed.structures import IGNORE_INDEX

# public name -> module that defines it (resolved on first attribute access)
_LAZY: dict[str, str] = {
    "make_samples": "instembed.data.synth",
    "KINDS": "instembed.data.synth",
    "open_dataset": "instembed.data.readers",
    "Reader": "instembed.data.readers",
    "FORMATS": "instembed.data.readers",
    "read_image": "instembed.data.io",
    "read_labels": "instembed.data.io",
    "write_labels": "instembed.data.io",
    "write_image": "instembed.data.io",
    "percentile_normalize": "instembed.data.io",
    "InstanceDataset": "instembed.data.dataset",
    "collate": "instembed.data.dataset",
}

__all__ = ["IGNORE_INDEX", "Sample", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'instembed.data' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

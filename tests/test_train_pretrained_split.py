"""benchmarks/train_pretrained.py: training on a recorded split hands the split's samples to the
Trainer; the config's own data is never built, and the training sizes are the split's."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests" / "engine"))

from test_engine_trainer import tiny_config  # noqa: E402

import train_pretrained  # noqa: E402
from instembed.data.synth import make_samples  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_train_on_split_never_builds_the_config_data(tmp_path, monkeypatch):
    import instembed.engine.trainer as trainer_module

    def refuse(cfg):
        raise AssertionError("the config's data was built")

    monkeypatch.setattr(trainer_module, "build_datasets", refuse)
    cfg = tiny_config(steps=2)
    cfg.cluster.method = "kmeans"  # true K: quick on untrained embeddings
    samples = make_samples("touching_cells", 3, size=(32, 32), seed=5)
    trainer, result, _ = train_pretrained.train_on_split(cfg, tmp_path, samples[:2], samples[2:])
    assert result.step == 2
    assert len(trainer.train_set) == 2 and len(trainer.val_samples) == 1
    # the sizes recorded are those of the two split images, not the config's dot grids
    per_image = []
    for s in samples[:2]:
        lab = np.asarray(s.label_image())
        areas = np.bincount(lab.ravel())[1:]
        per_image.append(np.median(2 * np.sqrt(areas[areas > 0] / np.pi)))
    np.testing.assert_allclose(
        cfg.data.object_diameter, np.percentile(per_image, [5, 50, 95]), atol=0.006
    )

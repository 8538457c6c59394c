"""Every shipped config parses, builds its model, loss and data, and trains one step."""

from pathlib import Path

import pytest
import torch

from instembed.engine.build import build_loss_from_config, build_model_from_config, load_samples
from instembed.engine.config import load_config
from instembed.engine.trainer import Trainer

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
SYNTH = [p for p in CONFIGS if load_config(p).data.synth is not None]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_there_are_configs_for_every_method():
    losses = {load_config(p).loss.name for p in CONFIGS}
    assert {"discriminative", "semiconv", "spatial", "center_offset", "metric"} <= losses


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses_and_builds(path):
    cfg = load_config(path)
    model = build_model_from_config(cfg.model)
    loss = build_loss_from_config(cfg.loss)
    assert model.in_channels == cfg.model.in_channels
    assert isinstance(loss, torch.nn.Module)
    if cfg.loss.name == "spatial":  # embedding units of the loss and the model must agree
        assert cfg.loss.params["coord_scale"] == cfg.model.params["coord_scale"]


@pytest.mark.parametrize("path", SYNTH, ids=lambda p: p.name)
def test_synthetic_config_trains_one_step_and_validates(path, tmp_path):
    # shrink the run: 1 step on 2 small images, validation on 1 image
    cfg = load_config(
        path,
        [
            "run.steps=1", "run.progress=false", "run.tensorboard=false",
            "data.n_train=2", "data.n_val=1", "data.batch_size=2", "data.crop=[64, 64]",
        ],
    )  # fmt: skip
    cfg.data.size = [min(cfg.data.size[0], 96), min(cfg.data.size[1], 96)]
    train, val = load_samples(cfg.data, cfg.run.seed)
    assert len(train) == 2 and len(val) == 1
    res = Trainer(cfg, tmp_path).fit()
    assert res.step == 1 and (tmp_path / "last.pt").is_file()
    assert cfg.run.best_metric in res.metrics  # validation ran with the config's clusterer


@pytest.mark.data
@pytest.mark.parametrize("path", [p for p in CONFIGS if p not in SYNTH], ids=lambda p: p.name)
def test_real_data_config_reads_its_data(path, shared_data):
    cfg = load_config(path)
    shared_data(Path(cfg.data.path).name)  # skips when the data set is not here
    train, val = load_samples(cfg.data, cfg.run.seed)
    assert len(train) > 0 and len(val) > 0
    s = train[0]
    assert s.image.shape[0] == cfg.model.in_channels

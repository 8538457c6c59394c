"""Size model (instembed.engine.size_model): the ridge fit against scikit-learn, the pipeline
(resize, pool, fit, predict) on a hand-made encoder whose features are known, the checkpoint
round trip, and how scale="auto" uses a size model's prediction for its first pass."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from instembed.data.sample import Sample
from instembed.data.sizes import start_scale
from instembed.engine import checkpoint as ck
from instembed.engine.config import ClusterConfig, Config, config_to_yaml
from instembed.engine.predict import Predictor, load_model, scaled_size
from instembed.engine.size_model import (
    SizeModel,
    encoder_features,
    fit_size_model,
    ridge_fit,
)
from instembed.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_ridge_fit_matches_scikit_learn():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)) * [1, 5, 0.1, 2, 3, 1] + [0, 2, -1, 0, 5, 3]
    y = x @ [0.3, -0.1, 2.0, 0.0, 0.5, 1.0] + rng.normal(scale=0.1, size=40)
    mean, std, weights, bias = ridge_fit(x, y, ridge=3.0)
    z = (x - x.mean(0)) / x.std(0)
    ref = Ridge(alpha=3.0).fit(z, y)
    np.testing.assert_allclose(weights, ref.coef_, rtol=1e-9, atol=1e-12)
    assert bias == pytest.approx(ref.intercept_)
    np.testing.assert_allclose(mean, x.mean(0))
    # a constant column: std 1, weight 0
    xc = np.c_[x, np.full(40, 7.0)]
    _, std_c, w_c, _ = ridge_fit(xc, y, ridge=3.0)
    assert std_c[-1] == 1.0 and w_c[-1] == 0.0
    with pytest.raises(ValueError, match="expected x"):
        ridge_fit(x[:1], y[:1])


class LogHeightEncoder(nn.Module):
    """Level 0: the image; level 1: a map filled with log(H), H the height it was given. Its
    pooled features are therefore [log H, 0] (plus level 0's, which the size model skips)."""

    def forward(self, x):
        return [x, torch.full_like(x[:, :1], math.log(x.shape[-2]))]


class LogHeightNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = SimpleNamespace(encoder=LogHeightEncoder(), size_divisor=1)
        self.w = nn.Parameter(torch.zeros(1))


def _disc_sample(size: int, r: int) -> Sample:
    yy, xx = np.mgrid[:size, :size]
    lab = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= r * r).astype(np.int32)
    return Sample(image=lab[None].astype(np.float32), instances=lab)


def test_fit_and_predict_on_an_encoder_whose_features_are_known():
    net = LogHeightNet()
    f = encoder_features(net, np.zeros((1, 64, 64), np.float32), 0.5)
    np.testing.assert_allclose(f, [math.log(32), 0.0], atol=1e-6)  # [mean, std] of level 1, H 32
    # training images 64 px high, one disc of diameter d each; shown at 0.5 / 1 / 2 the feature
    # is log(64 s) and the target log(d s): for a fixed d the relation is log d = feature -
    # log(64 / d), exactly linear, which a weakly penalised ridge recovers
    samples = [_disc_sample(64, 8) for _ in range(3)]
    d = 2 * math.sqrt((samples[0].instances > 0).sum() / math.pi)
    sm = fit_size_model(net, samples, scales=(0.5, 1.0, 2.0), ridge=1e-9)
    assert sm.n_images == 3 and sm.scales == (0.5, 1.0, 2.0)
    # an image 96 px high (the training image at 1.5x): predicted diameter 1.5 d
    assert sm.diameter(net, np.zeros((1, 96, 80), np.float32)) == pytest.approx(1.5 * d, rel=1e-6)
    # images without objects are left out; fewer than two with objects: no size model
    empty = Sample(image=np.zeros((1, 64, 64), np.float32), instances=np.zeros((64, 64), int))
    assert fit_size_model(net, [empty, samples[0]]) is None


def test_encoder_features_need_an_encoder():
    with pytest.raises(TypeError, match="needs a network whose backbone has an encoder"):
        encoder_features(nn.Conv2d(1, 1, 1), np.zeros((1, 8, 8), np.float32))


def test_size_model_round_trip_through_a_checkpoint(tmp_path):
    cfg = Config()
    cfg.model.params = {"heads": {"embedding": 4, "seed": 1}, "depth": 2, "width": 4}
    model = build_model("unet", heads={"embedding": 4, "seed": 1}, depth=2, width=4)
    feats = encoder_features(model, np.random.default_rng(0).random((1, 40, 48)))
    n = feats.size  # levels 1 and 2 of widths 8 and 16: (8 + 16) x [mean, std]
    assert n == 2 * (8 + 16)
    sm = SizeModel(np.zeros(n), np.ones(n), np.linspace(-1, 1, n), 2.5, n_images=4)
    path = tmp_path / "m.pt"
    ck.save_checkpoint(
        path,
        model_state=model.state_dict(),
        config_yaml=config_to_yaml(cfg),
        step=0,
        size_model=sm.to_dict(),
    )
    loaded, _ = load_model(path)
    got = loaded.size_model
    np.testing.assert_array_equal(got.weights, sm.weights)
    assert got.bias == 2.5 and got.n_images == 4
    img = np.random.default_rng(1).random((1, 40, 48))
    expect = math.exp(((encoder_features(model, img) - 0) / 1) @ sm.weights + 2.5)
    assert got.diameter(loaded, img) == pytest.approx(expect, rel=1e-5)
    # a checkpoint without one: no attribute
    ck.save_checkpoint(
        path, model_state=model.state_dict(), config_yaml=config_to_yaml(cfg), step=0
    )
    assert getattr(load_model(path)[0], "size_model", None) is None
    bad = sm.to_dict() | {"std": [0.0] * n}
    ck.save_checkpoint(
        path,
        model_state=model.state_dict(),
        config_yaml=config_to_yaml(cfg),
        step=0,
        size_model=bad,
    )
    with pytest.raises(ValueError, match=r"m\.pt: size_model .* std > 0"):
        load_model(path)
    with pytest.raises(ValueError, match="expected 48 features"):
        sm.predict_log(np.zeros(5))


def test_start_scale_by_hand():
    sizes = [10.0, 20.0, 40.0]
    assert start_scale(60.0, sizes) == pytest.approx(20 / 60)  # above the range
    assert start_scale(30.0, sizes) == 1.0  # inside
    assert start_scale(9.0, sizes) == pytest.approx(20 / 9)  # below low and < 20 / 1.25
    assert start_scale(12.0, sizes) == 1.0
    assert start_scale(2.0, sizes) == 4.0  # clipped
    narrow = [34.0, 36.0, 37.0]  # the band is the ratio around the median: (28.8, 45)
    assert start_scale(44.0, narrow) == 1.0 and start_scale(46.0, narrow) == pytest.approx(36 / 46)
    assert start_scale(29.0, narrow) == 1.0 and start_scale(28.0, narrow) == pytest.approx(36 / 28)
    assert start_scale(float("nan"), sizes) == 1.0 and start_scale(60.0, None) == 1.0


class SizedNet(nn.Module):
    """Every pixel is background but the network records the sizes it is given; it carries a
    stand-in size model predicting a fixed diameter."""

    semiconv, size_divisor, in_channels = False, 1, 1

    def __init__(self, predicted: float):
        super().__init__()
        self.seen: list[tuple[int, int]] = []
        self.w = nn.Parameter(torch.zeros(1))
        self.size_model = SimpleNamespace(diameter=lambda model, image: predicted)

    def forward(self, x, coords_origin=None):
        from instembed.structures import Outputs

        self.seen.append(tuple(x.shape[-2:]))
        b, _, h, w = x.shape
        return Outputs(embedding=torch.zeros(b, 2, h, w), seed=torch.zeros(b, 1, h, w))


@pytest.mark.parametrize("predicted, factor", [(16.0, 0.5), (4.0, 2.0), (8.5, 1.0)])
def test_auto_starts_where_the_size_model_says(predicted, factor):
    # the net finds nothing: a first pass away from scale 1 finds no objects to agree with
    # the prediction, so the search starts over at scale 1 (as without a size model)
    cfg = Config()
    cfg.data.object_diameter = [6.0, 8.0, 10.0]
    net = SizedNet(predicted)
    cluster = ClusterConfig("threshold", {"delta_v": 0.2, "fg_thresh": 0.5})
    pred = Predictor(net, cfg, cluster=cluster, scale="auto")(np.zeros((1, 64, 80), np.float32))
    first = scaled_size((64, 80), factor)
    assert net.seen == ([first] if factor == 1.0 else [first, (64, 80)])
    assert pred.meta["scale"] == 1.0 and pred.meta["predicted_diameter"] == predicted
    assert [f for f, _ in pred.meta["auto_trail"]] == ([1.0] if factor == 1 else [factor, 1.0])
    assert pred.labels.shape == (64, 80)


def test_auto_with_a_size_model_refuses_a_wrong_channel_count_with_its_message():
    cfg = Config()
    cfg.data.object_diameter = [6.0, 8.0, 10.0]
    cluster = ClusterConfig("threshold", {"delta_v": 0.2, "fg_thresh": 0.5})
    net = SizedNet(16.0)

    def convolve(model, image):  # as the encoder would: a cryptic error on 3 channels
        if image.shape[0] != 1:
            raise RuntimeError("expected input to have 1 channels, but got 3 channels instead")
        return 16.0

    net.size_model = SimpleNamespace(diameter=convolve)
    predictor = Predictor(net, cfg, cluster=cluster, scale="auto")
    with pytest.raises(ValueError, match=r"image must be \(1, H, W\) for this model"):
        predictor(np.zeros((3, 32, 32), np.float32))


def _tiny_run(tmp_path, n_train):
    import yaml

    cfg = {
        "data": {"synth": "dot_grid", "n_train": n_train, "n_val": 0, "size": [32, 32]},
        "model": {
            "name": "embedding",
            "backbone": "unet",
            "params": {"heads": {"embedding": 2, "seed": 1}, "depth": 2, "width": 4},
        },
        "run": {"steps": 2, "progress": False, "tensorboard": False},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_size_model_fits_the_trained_weights_on_the_training_images(tmp_path, capsys):
    from instembed.cli import main
    from instembed.engine.build import build_datasets, build_model_from_config
    from instembed.engine.config import load_config

    cfg_path, out = _tiny_run(tmp_path, n_train=3), tmp_path / "run"
    assert main(["train", str(cfg_path), "--out", str(out), "--size-model"]) == 0
    assert "size model fitted on 3 training image(s)" in capsys.readouterr().out
    state = ck.load_checkpoint(out / "best.pt")
    assert "size_model" in state and "model" in state
    # independently: the same weights, the training images built from the same config
    cfg = load_config(str(cfg_path))
    train_set, _ = build_datasets(cfg)
    net = build_model_from_config(cfg.model)
    net.load_state_dict(state["model"])
    want = fit_size_model(net.eval(), train_set.samples)
    got = SizeModel.from_dict(state["size_model"])
    np.testing.assert_allclose(got.weights, want.weights, rtol=1e-6, atol=1e-9)
    assert got.bias == pytest.approx(want.bias) and got.n_images == 3
    model, _ = load_model(out)
    np.testing.assert_allclose(model.size_model.mean, want.mean, rtol=1e-6)


def test_train_size_model_with_one_image_warns_and_stores_none(tmp_path, capsys):
    from instembed.cli import main

    cfg_path, out = _tiny_run(tmp_path, n_train=1), tmp_path / "run"
    assert main(["train", str(cfg_path), "--out", str(out), "--size-model"]) == 0
    assert "fewer than two training images hold objects" in capsys.readouterr().err
    assert "size_model" not in ck.load_checkpoint(out / "best.pt")

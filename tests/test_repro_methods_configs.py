"""benchmarks/repro_methods.py: every method's run config is valid and puts its model keys where
the model builder reads them (``model.params``). Fast: configs and untrained models only; the
script's ``main`` runs with training, data loading and scoring replaced by stubs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import instembed  # noqa: E402
import repro_methods as rpm  # noqa: E402
from instembed.engine.build import build_model_from_config  # noqa: E402
from instembed.engine.config import config_from_dict  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

# written out by hand from the method descriptions in the script's docstring and the base
# configs (configs/pretrained/*.yaml): (heads, semiconv, loss, clusterer)
EXPECTED = {
    "discriminative+meanshift": (
        {"embedding": 8, "semantic": 2},
        False,
        "discriminative",
        "meanshift",
    ),
    "discriminative+threshold": (
        {"embedding": 8, "semantic": 2},
        False,
        "discriminative",
        "threshold",
    ),
    "semiconv+meanshift": ({"embedding": 8, "semantic": 2}, True, "semiconv", "meanshift"),
    "spatial+seeded": ({"embedding": 2, "sigma": 2, "seed": 1}, True, "spatial", "seeded"),
    "center_offset": (
        {"center": 1, "offset": 2, "semantic": 2},
        False,
        "center_offset",
        "center_offset",
    ),
}
# (depth, width, sigma_init) of each base config's U-Net
BACKBONE = {"bbbc039": (3, 16, 0.15), "dsb2018": (4, 16, 0.15), "bbbc010": (4, 16, 0.5)}


def card_clusterer(dataset: str) -> dict:
    """The shipped model's tuned thresholds (src/instembed/pretrained/<model>.json), which the
    spatial+seeded run must start from; read from the card so a re-shipped model is followed."""
    card = Path(instembed.__file__).parent / "pretrained" / f"{rpm.BASE[dataset]}.json"
    params = json.loads(card.read_text())["cluster"]["params"]
    return {k: params[k] for k in ("fg_thresh", "seed_thresh", "prob_thresh", "min_size")}


MIN_SIZE = {"bbbc039": 16, "dsb2018": 16, "bbbc010": 64}


def test_tables_cover_the_script():
    assert set(EXPECTED) == set(rpm.METHODS)
    assert set(BACKBONE) == set(rpm.BASE)
    for methods in rpm.TASKS.values():
        assert set(methods) <= set(rpm.METHODS)


@pytest.mark.parametrize("dataset", sorted(rpm.BASE))
@pytest.mark.parametrize("method", sorted(rpm.METHODS))
def test_method_config_is_valid_and_builds_the_method_model(dataset, method):
    heads, semiconv, loss, cluster = EXPECTED[method]
    depth, width, sigma_init = BACKBONE[dataset]
    raw = rpm.run_config(rpm.base_config(dataset), method, 7, dataset)
    # no legacy top-level keys (they clash with the base's model.params)
    assert not {"heads", "semiconv", "coord_scale"} & set(raw["model"])
    cfg = config_from_dict(raw)

    assert cfg.model.name == "embedding" and cfg.model.backbone == "unet"
    p = cfg.model.params
    assert p["heads"] == heads and p["semiconv"] is semiconv
    # the backbone of the base config is kept, the sigma bias init only with a sigma head
    assert (p["depth"], p["width"]) == (depth, width)
    assert p.get("sigma_init") == (sigma_init if "sigma" in heads else None)
    assert p["coord_scale"] == 0.015625
    assert cfg.loss.name == loss and cfg.cluster.method == cluster
    assert cfg.run.steps == 7 and cfg.run.val_every == 0 and cfg.run.ckpt_every == 0
    assert Path(cfg.data.path).name == dataset
    assert cfg.data.targets == (["center_offset"] if method == "center_offset" else [])
    assert cfg.cluster.params["min_size"] == MIN_SIZE[dataset]
    if method == "spatial+seeded":
        for key, value in card_clusterer(dataset).items():
            assert cfg.cluster.params[key] == value
    ce = [e for e in raw["loss"].get("extra", []) if e["name"] == "semantic_ce"]
    assert bool(ce) == (
        method in ("discriminative+meanshift", "discriminative+threshold", "semiconv+meanshift")
    )
    for e in ce:
        assert e["params"].get("class_weights") == ([1.0, 5.0] if dataset == "bbbc010" else None)

    # the model builder reads the keys: the untrained model has the method's heads
    model = build_model_from_config(cfg.model).eval()
    assert model.heads == heads and model.semiconv is semiconv
    with torch.no_grad():
        out = model(torch.zeros(1, 1, 32, 48))
    for name, channels in heads.items():
        assert tuple(getattr(out, name).shape) == (1, channels, 32, 48), name
    for name in {"embedding", "sigma", "seed", "center", "offset", "semantic"} - set(heads):
        assert getattr(out, name) is None, name


def test_base_config_not_modified_by_method_config():
    base = rpm.base_config("bbbc039")
    before = json.dumps(base, sort_keys=True)
    for method in rpm.METHODS:
        rpm.run_config(base, method, 3, "bbbc039")
    assert json.dumps(base, sort_keys=True) == before
    raw = yaml.safe_load((REPO / "configs" / "pretrained" / "bbbc039-nuclei.yaml").read_text())
    assert base["model"] == raw["model"]


@pytest.mark.parametrize("task", sorted(rpm.TASKS))
def test_main_runs_every_method_of_the_task(task, tmp_path, monkeypatch):
    """``main`` end to end with stubs for the data, training and scoring: every method of the task
    gets a config the engine accepts and a model with that method's heads."""
    trained = {}

    def fake_load_split(cfg, dataset):
        return ["train"], ["val1", "val2"]

    def fake_train(cfg, out, train_samples, val_samples, time_limit=None, **kw):
        Path(out).mkdir(parents=True)
        model = build_model_from_config(cfg.model)
        trained[Path(out).name] = (cfg, model)
        return SimpleNamespace(model=model), SimpleNamespace(step=cfg.run.steps), 0.5

    def fake_outputs(model, samples):
        return [model.heads] * len(samples)

    def fake_evaluate(outputs, samples, cluster_cfg):
        return {"AP_dsb@0.5": 0.25}

    monkeypatch.setattr(rpm, "load_split", fake_load_split)
    monkeypatch.setattr(rpm, "train_on_split", fake_train)
    monkeypatch.setattr(rpm, "network_outputs", fake_outputs)
    monkeypatch.setattr(rpm, "evaluate_outputs", fake_evaluate)
    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = ["--task", task, "--quick", "--steps", "3", "--no-tune"]
    assert rpm.main([*argv, "--out", str(out), "--runs", str(runs)]) == 0

    dataset = "bbbc010" if task == "worms" else "bbbc039"
    result = json.loads((out / f"repro_{task}_{dataset}.json").read_text())
    assert [r["method"] for r in result["rows"]] == rpm.TASKS[task]
    owners = {rpm.METHODS[m].get("eval_only", m) for m in rpm.TASKS[task]}
    assert sorted(trained) == sorted(f"{task}_{dataset}_{o.replace('+', '_')}" for o in owners)
    for row in result["rows"]:
        heads, semiconv, _, cluster = EXPECTED[row["method"]]
        assert row["config"]["model"]["params"]["heads"] == heads
        assert row["config"]["model"]["params"]["semiconv"] is semiconv
        assert row["config"]["cluster"]["method"] == cluster
        assert row["AP_dsb@0.5"] == 0.25 and row["n_val_images"] == 2 and row["steps"] == 3
    for cfg, model in trained.values():
        assert cfg.run.steps == 3 and model.heads == cfg.model.params["heads"]

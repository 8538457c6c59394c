import pytest
import yaml

from instembed.engine.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    config_from_yaml,
    config_to_dict,
    config_to_yaml,
    load_config,
    save_config,
)


def test_defaults_round_trip_through_yaml(tmp_path):
    cfg = Config()
    cfg.optim.lr = 3e-4
    cfg.data.crop = [64, 96]
    cfg.model.params = {"depth": 3, "base": 16}
    path = save_config(cfg, tmp_path / "config.yaml")
    back = load_config(path)
    assert back == cfg
    assert config_from_yaml(config_to_yaml(cfg)) == cfg
    # the saved text is plain YAML (safe_load) with one mapping per section
    raw = yaml.safe_load(path.read_text())
    assert set(raw) == {"data", "model", "loss", "cluster", "optim", "run"}
    assert raw["optim"]["lr"] == 3e-4


def test_unknown_key_is_rejected_with_its_dotted_name(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("optim:\n  lr: 0.01\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        load_config(p)
    with pytest.raises(ConfigError, match="optimiser"):
        config_from_dict({"optimiser": {}})


@pytest.mark.parametrize(
    "data, key",
    [
        ({"optim": {"lr": "fast"}}, "optim.lr"),
        ({"run": {"steps": 1.5}}, "run.steps"),
        ({"run": {"steps": True}}, "run.steps"),  # bool is not an int here
        ({"data": {"crop": [64, "x"]}}, r"data.crop\[1\]"),
        ({"model": {"params": {"heads": {"embedding": "8"}}}}, "model.params.heads.embedding"),
        ({"model": {"heads": {"embedding": "8"}}}, "model.params.heads.embedding"),  # old form
        ({"model": {"params": {"semiconv": "yes"}}}, "model.params.semiconv"),
        ({"model": {"name": "maskrcnm"}}, "model.name: unknown model 'maskrcnm'"),
        ({"optim": {"schedule": "linear"}}, "optim.schedule"),
        ({"model": "unet"}, "model"),
    ],
)
def test_wrong_type_is_rejected_naming_the_key(data, key):
    with pytest.raises(ConfigError, match=key):
        config_from_dict(data)


def test_int_accepted_for_float_and_yaml_exponent_strings():
    # YAML 1.1 reads "1e-3" (no dot) as a string; a float field accepts it
    cfg = config_from_dict(yaml.safe_load("optim:\n  lr: 1e-3\n  weight_decay: 0\n"))
    assert cfg.optim.lr == 0.001 and isinstance(cfg.optim.weight_decay, float)


def test_overrides_dotted_yaml_values(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr: 0.01\nmodel:\n  name: unet\n")
    cfg = load_config(
        p,
        [
            "optim.lr=2e-4",
            "data.crop=[32, 48]",
            "model.params.depth=3",
            "optim.grad_clip=null",
            "data.synth=dot_grid",
        ],
    )
    assert cfg.optim.lr == 2e-4
    assert cfg.data.crop == [32, 48]
    assert cfg.model.params == {"depth": 3}
    assert cfg.optim.grad_clip is None
    assert cfg.data.synth == "dot_grid"
    assert cfg.model.name == "unet"  # untouched keys keep the file's value
    with pytest.raises(ConfigError, match="run.stepz"):
        load_config(p, ["run.stepz=3"])
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_config(p, ["run.steps"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"run": {"steps": 3}}, ["run.steps.x=1"])


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml"):
        load_config(p)


def test_to_dict_holds_only_plain_types():
    def walk(x):
        if isinstance(x, dict):
            return all(isinstance(k, str) and walk(v) for k, v in x.items())
        if isinstance(x, list):
            return all(walk(v) for v in x)
        return x is None or isinstance(x, str | int | float | bool)

    assert walk(config_to_dict(Config()))


def test_old_model_section_is_read_into_the_embedding_family_params():
    # the form stored in checkpoints written before the model table (the shipped models)
    old = config_from_dict(
        {
            "model": {
                "name": "unet",
                "in_channels": 1,
                "heads": {"embedding": 2, "seed": 1},
                "semiconv": True,
                "coord_scale": None,  # meant: the model's default
                "params": {"depth": 3},
            }
        }
    )
    assert old.model.name == "unet" and old.model.backbone is None
    assert old.model.params == {"heads": {"embedding": 2, "seed": 1}, "semiconv": True, "depth": 3}
    new = config_from_dict(
        {
            "model": {
                "name": "embedding",
                "backbone": "unet",
                "params": {"heads": {"embedding": 2, "seed": 1}, "semiconv": True, "depth": 3},
            }
        }
    )
    from instembed.engine.build import build_model_from_config

    a, b = build_model_from_config(old.model), build_model_from_config(new.model)
    assert [(k, v.shape) for k, v in a.state_dict().items()] == [
        (k, v.shape) for k, v in b.state_dict().items()
    ]
    assert a.semiconv and b.semiconv and a.heads == b.heads == {"embedding": 2, "seed": 1}
    with pytest.raises(ConfigError, match="both given"):
        config_from_dict({"model": {"semiconv": True, "params": {"semiconv": False}}})

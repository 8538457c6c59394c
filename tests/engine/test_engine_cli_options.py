"""Command-line options shared by the model commands: value checks of the config, device strings,
--threads, defaults in --help, predict --channel, --skip-bad where the readers' hint names it."""

import argparse

import numpy as np
import pytest
import torch
import yaml

from instembed.cli import build_parser, main
from instembed.engine.config import ConfigError, config_from_dict, load_config
from instembed.engine.distributed import resolve_device

MODEL_COMMANDS = ("train", "predict", "tune", "export", "demo")


@pytest.fixture(autouse=True)
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def tiny_cfg(tmp_path, **run):
    data = {
        "data": {"synth": "dot_grid", "n_train": 2, "n_val": 0, "size": [32, 32]},
        "model": {
            "name": "embedding",
            "backbone": "unet",
            "params": {"heads": {"embedding": 2}, "depth": 1, "width": 4},
        },
        "run": {"steps": 1, "progress": False, "tensorboard": False, **run},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def subparsers():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


# ----------------------------------------------------------------------- config value checks
@pytest.mark.parametrize(
    "key,value,expected",
    [
        ("run.steps", -5, "run.steps: expected >= 1, got -5"),
        ("run.steps", 0, "run.steps: expected >= 1, got 0"),
        ("run.val_every", -1, "run.val_every: expected >= 0, got -1"),
        ("run.ckpt_every", -2, "run.ckpt_every: expected >= 0, got -2"),
        ("run.log_every", -3, "run.log_every: expected >= 0, got -3"),
        ("data.batch_size", 0, "data.batch_size: expected >= 1, got 0"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_key(key, value, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"{key}={value}"])
    assert str(info.value) == expected
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=expected):
        config_from_dict({section: {name: value}})


def test_zero_cadences_stay_valid():
    cfg = load_config(None, ["run.val_every=0", "run.ckpt_every=0", "run.log_every=0"])
    assert cfg.run.val_every == cfg.run.ckpt_every == cfg.run.log_every == 0


def test_train_with_negative_steps_is_a_one_line_error(tmp_path, capsys):
    cfg = tiny_cfg(tmp_path)
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--steps", "-5", "--out", str(out)]) == 2
    assert "run.steps: expected >= 1, got -5" in one_line_error(capsys)
    assert not out.exists()


# ----------------------------------------------------------------------- device strings
@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cuda0", "", "tpu", "cpu:0:1"])
def test_unparsable_device_is_a_one_line_value_error(spec):
    with pytest.raises(ValueError) as info:
        resolve_device(spec)
    msg = str(info.value)
    assert "\n" not in msg and "run.device" in msg and "--device" in msg
    for form in ("auto", "cpu", "cuda", "cuda:N", "mps"):
        assert form in msg


def test_valid_device_forms():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


def test_train_bad_device_refused_before_work(tmp_path, capsys):
    cfg = tiny_cfg(tmp_path)
    out = tmp_path / "run"
    assert main(["train", str(cfg), "run.device=gpu", "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert "'gpu'" in err and "run.device" in err and "cuda:N" in err
    assert main(["train", str(cfg), "--device", "gpu", "--out", str(out)]) == 2
    assert "--device" in one_line_error(capsys)
    assert not out.exists()


def test_predict_and_tune_bad_device_refused_before_work(tmp_path, capsys):
    img = tmp_path / "img.tif"
    from instembed.data.io import write_image

    write_image(img, np.zeros((1, 16, 16), np.float32))
    out = tmp_path / "pred"
    # the model does not even exist: the device is checked first
    rc = main(["predict", str(img), "--model", "nope.pt", "--out", str(out), "--device", "gpu"])
    assert rc == 2
    assert "--device" in one_line_error(capsys) and not out.exists()
    rc = main(["tune", "--model", "nope.pt", "--data", str(tmp_path), "--device", "gpu"])
    assert rc == 2
    assert "--device" in one_line_error(capsys)


# ----------------------------------------------------------------------- --threads
@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_every_model_command_has_threads(command):
    parser = subparsers()[command]
    (action,) = [a for a in parser._actions if "--threads" in a.option_strings]
    assert action.type is int
    assert action.default == (1 if command == "demo" else None)  # today's defaults kept


def test_apply_threads_sets_torch_threads():
    from instembed.commands._options import apply_threads

    apply_threads(1)
    assert torch.get_num_threads() == 1
    n = torch.get_num_threads()
    apply_threads(None)  # leaves it alone
    assert torch.get_num_threads() == n


@pytest.mark.parametrize("command", ["train", "export", "demo"])
def test_threads_below_one_refused(tmp_path, capsys, command):
    args = {
        "train": ["train", str(tiny_cfg(tmp_path)), "--out", str(tmp_path / "r")],
        "export": ["export", "--model", "x.pt", "--format", "onnx", "--out", "x.onnx"],
        "demo": ["demo", "--out", str(tmp_path / "d")],
    }[command]
    assert main([*args, "--threads", "0"]) == 2
    assert "--threads must be >= 1" in one_line_error(capsys)


def test_train_threads_is_used(tmp_path, capsys):
    cfg = tiny_cfg(tmp_path)
    torch.set_num_threads(2)
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--threads", "1"]) == 0
    assert torch.get_num_threads() == 1


# ----------------------------------------------------------------------- defaults in --help
@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_help_shows_every_default(command):
    parser = subparsers()[command]
    formatter = parser._get_formatter()
    missing = []
    for action in parser._actions:
        if (
            not action.option_strings
            or action.default in (None, argparse.SUPPRESS)
            or isinstance(action, argparse._HelpAction)
        ):
            continue
        text = formatter._get_help_string(action) or ""
        if "default" not in text:
            missing.append(action.option_strings[0])
    assert not missing, f"{command} --help hides the defaults of {missing}"
    text = " ".join(parser.format_help().split())
    if command == "demo":
        assert "(default: demo_out)" in text and "(default: 300)" in text
    if command == "predict":
        assert "(default: auto)" in text and "(default: tif)" in text


# ----------------------------------------------------------------------- predict --channel
def test_predict_channel_is_passed_to_load_image(tmp_path, capsys, monkeypatch):
    from instembed.data import io
    from instembed.engine import checkpoint as ck
    from instembed.engine.build import build_model_from_config
    from instembed.engine.config import config_to_yaml

    cfg = load_config(tiny_cfg(tmp_path))
    cfg.cluster.method = "threshold"
    cfg.cluster.params = {"delta_v": 0.5}
    model = build_model_from_config(cfg.model)
    ckpt = ck.save_checkpoint(
        tmp_path / "m.pt", model_state=model.state_dict(), config_yaml=config_to_yaml(cfg), step=0
    )
    rgb = np.zeros((3, 32, 32), np.float32)
    rgb[1, 8:16, 8:16] = 1.0
    img = tmp_path / "in" / "rgb.png"
    img.parent.mkdir()
    io.write_image(img, rgb)

    seen = []
    real = io.load_image

    def spy(path, normalize="percentile", channels=None, channel=None, min_range=0.0):
        seen.append(channel)
        return real(path, normalize, channels=channels, channel=channel, min_range=min_range)

    monkeypatch.setattr(io, "load_image", spy)
    args = ["predict", str(img), "--model", str(ckpt), "--no-progress", "--threads", "1"]
    assert main([*args, "--out", str(tmp_path / "p1"), "--channel", "1"]) == 0
    assert seen == [1]
    # a channel the image lacks: the image is reported and skipped (exit code 1)
    assert main([*args, "--out", str(tmp_path / "p2"), "--channel", "5"]) == 1
    assert "channel 5" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "p3"), "--channel", "-1"]) == 2


# ----------------------------------------------------------------------- --skip-bad
def test_skip_bad_hint_names_an_option_of_the_commands_that_read_data(tmp_path, monkeypatch):
    # the readers' error says "pass skip_bad=True / --skip-bad": train and tune take --skip-bad
    for command in ("train", "tune"):
        parser = subparsers()[command]
        assert any("--skip-bad" in a.option_strings for a in parser._actions), command

    seen = {}

    class Stop(Exception):
        pass

    def fake_trainer(cfg, out, resume=False):
        seen["cfg"] = cfg
        raise Stop

    monkeypatch.setattr("instembed.engine.trainer.Trainer", fake_trainer)
    with pytest.raises(Stop):
        main(["train", str(tiny_cfg(tmp_path)), "--out", str(tmp_path / "r"), "--skip-bad"])
    assert seen["cfg"].data.reader_params == {"skip_bad": True}

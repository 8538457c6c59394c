"""CPU training-speed options (optim.channels_last, optim.bf16, run.compile): same results as
the default within tolerances derived from the arithmetic, checkpoints unchanged, exact resume,
and a logged fallback when torch.compile cannot be used."""

import json
import logging
import math
from pathlib import Path

import pytest
import torch

from instembed.engine import checkpoint as ck
from instembed.engine import speed
from instembed.engine.config import config_from_dict
from instembed.engine.trainer import LAST, Trainer

PRETRAINED = Path(__file__).resolve().parents[1] / "src" / "instembed" / "pretrained"
EPS32 = torch.finfo(torch.float32).eps  # 2**-23
EPS_BF16 = torch.finfo(torch.bfloat16).eps  # 2**-7


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(steps=2, **options):
    """The shipped models' structure (U-Net, semi-convolutional spatial embedding with sigma and
    seed heads, spatial loss, Adam, clipping) at toy size."""
    optim = {"optimizer": "adam", "lr": 0.002, "grad_clip": 5.0}
    run = {"steps": steps, "val_every": 0, "ckpt_every": 1, "log_every": 1}
    run.update(progress=False, tensorboard=False, device="cpu")
    for key, value in options.items():
        (run if key == "compile" else optim)[key] = value
    return config_from_dict(
        {
            "data": {
                "synth": "dot_grid",
                "synth_params": {"radius": 3, "spacing": 12},
                "n_train": 4,
                "n_val": 0,
                "size": [40, 40],
                "crop": [32, 32],
                "batch_size": 2,
            },
            "model": {
                "name": "unet",
                "heads": {"embedding": 2, "sigma": 2, "seed": 1},
                "semiconv": True,
                "coord_scale": 1 / 64,
                "params": {"depth": 2, "width": 4},
            },
            "loss": {"name": "spatial", "params": {"coord_scale": 1 / 64}},
            "optim": optim,
            "run": run,
        }
    )


def losses_of(tr: Trainer, n: int) -> list[float]:
    batches = tr._batches()
    tr.net.train()
    return [tr.train_step(next(batches))[0] for _ in range(n)]


def max_fan_in(model) -> int:
    return max(m.weight[0].numel() for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def test_options_default_off_and_old_configs_load_unchanged():
    cfg = config_from_dict({})
    assert (cfg.optim.bf16, cfg.optim.channels_last, cfg.run.compile) == (False, False, False)
    with pytest.raises(ValueError, match="optim.bf16: expected bool"):
        config_from_dict({"optim": {"bf16": "yes"}})
    shipped = json.loads((PRETRAINED / "bbbc039-nuclei.json").read_text())["config"]
    # a config written before the options existed: the shipped one without their keys
    old = {**shipped, "optim": dict(shipped["optim"]), "run": dict(shipped["run"])}
    for section, key in (("optim", "bf16"), ("optim", "channels_last"), ("run", "compile")):
        old[section].pop(key, None)
    cfg = config_from_dict(old)
    assert (cfg.optim.bf16, cfg.optim.channels_last, cfg.run.compile) == (False, False, False)


def test_channels_last_gives_the_same_outputs_as_contiguous():
    from instembed.engine.build import build_model_from_config

    cfg = tiny_config()
    torch.manual_seed(0)
    model = build_model_from_config(cfg.model).eval()
    x = torch.rand(2, 1, 32, 32)
    origin = torch.tensor([[0, 0], [8, 16]])
    with torch.no_grad():
        ref = model(x, coords_origin=origin)
        model_cl = model.to(memory_format=torch.channels_last)
        out = model_cl(speed.to_memory_format(x, True), coords_origin=origin)
    # same sums in another order: each layer adds at most ~fan_in * eps relative rounding;
    # bound the whole network by (fan-in x number of convolutions) x eps x the output's scale
    n_conv = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    for name in ("embedding", "sigma", "seed"):
        a, b = getattr(ref, name), getattr(out, name)
        tol = max_fan_in(model) * n_conv * EPS32 * float(a.abs().max())
        assert float((a - b).abs().max()) <= tol, name


def rounding_bound(model, option: str) -> float:
    """Relative loss difference that rounding alone explains, on the same weights. Rounding
    errors of a sum add up like a random walk: sqrt(n) x unit roundoff for n roundings. fp32 in
    another order (channels-last, fused kernels): n = largest fan-in x number of convolutions,
    unit eps32; bf16 autocast rounds each convolution's inputs and weights to 8 bits: n = number
    of convolutions, unit eps_bf16 (both operands rounded: 2 x eps_bf16 / 2)."""
    n_conv = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    if option == "bf16":
        return math.sqrt(n_conv) * EPS_BF16
    return math.sqrt(max_fan_in(model) * n_conv) * EPS32


@pytest.mark.parametrize("option", ["channels_last", "bf16"])
def test_option_trains_to_the_same_loss_as_the_default(option, tmp_path):
    n = 4
    ref = losses_of(Trainer(tiny_config(steps=n), tmp_path / "ref"), n)
    tr = Trainer(tiny_config(steps=n, **{option: True}), tmp_path / option)
    if option == "channels_last":
        convs = [m for m in tr.model.modules() if isinstance(m, torch.nn.Conv2d)]
        conv = max(convs, key=lambda m: m.weight[0].numel())  # (C>1, 3x3): formats differ
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        assert not conv.weight.is_contiguous()
    got = losses_of(tr, n)
    rel = rounding_bound(tr.model, option)
    assert rel < 0.05  # the bound says something: the loss moves by ~2 % per step here
    for k in range(n):
        if option == "bf16":
            # the weights stay float32: bf16 rounding does not accumulate in them, the bound
            # holds at every step
            allowed = rel
        else:
            # fp32 rounding differences move the weights apart; Adam amplifies them where a
            # gradient is near zero: allow the difference to double per step
            allowed = rel * 2**k
        assert abs(got[k] - ref[k]) <= allowed * abs(ref[k]), (k, got, ref)
    if option == "bf16":
        assert got[0] != ref[0]  # autocast did round
    assert got[-1] != got[0]  # it trained


def test_float32_heads_keep_the_embedding_in_float32_under_bf16():
    from instembed.engine.build import build_model_from_config

    model = build_model_from_config(tiny_config().model).eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = model(x)
        handles = speed.float32_heads(model)
        kept = model(x)
    assert plain.embedding.dtype == torch.bfloat16  # what autocast alone gives
    assert len(handles) >= 1
    assert {getattr(kept, k).dtype for k in ("embedding", "sigma", "seed")} == {torch.float32}
    for h in handles:
        h.remove()


def test_bf16_on_a_cpu_without_native_bf16_warns(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="instembed.engine.speed"):
        Trainer(tiny_config(bf16=True), tmp_path)
    assert "no native bf16" in caplog.text


@pytest.mark.parametrize("option", ["channels_last", "bf16"])
def test_checkpoints_stay_plain_and_resume_is_exact(option, tmp_path):
    cfg = tiny_config(steps=4, **{option: True})
    straight = Trainer(cfg, tmp_path / "a")
    straight.fit()
    state = ck.load_checkpoint(tmp_path / "a" / LAST)
    for k, v in state["model"].items():  # contiguous float32: loads into any configuration
        assert v.is_contiguous(), k
        assert not v.is_floating_point() or v.dtype == torch.float32, k
    first = Trainer(cfg, tmp_path / "b")
    first.fit(stop_at=2)
    del first
    torch.manual_seed(999)
    second = Trainer(cfg, tmp_path / "b", resume=True)
    second.fit()
    a, b = straight.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the option's checkpoint resumes in a default (fp32, contiguous) run
    plain = tiny_config(steps=5)
    cont = Trainer(plain, tmp_path / "a", resume=True)
    assert cont.step == 4 and cont.fit().step == 5


def test_compile_falls_back_to_eager_with_a_warning(tmp_path, monkeypatch, caplog):
    def broken(module, **kw):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", broken)
    torch.manual_seed(0)
    ref = losses_of(Trainer(tiny_config(), tmp_path / "ref"), 2)
    with caplog.at_level(logging.WARNING, logger="instembed.engine.speed"):
        tr = Trainer(tiny_config(compile=True), tmp_path / "c")
    assert "cannot compile" in caplog.text and "no C++ compiler" in caplog.text
    assert not tr.net.is_compiled
    assert losses_of(tr, 2) == ref  # eager: bit-identical to the default


def test_compile_failing_on_the_first_call_falls_back(caplog):
    calls = []

    def lazy(module, **kw):
        def run(*a, **k):
            calls.append(1)
            raise RuntimeError("backend compiler failed")

        return run

    net = torch.nn.Linear(3, 2)
    wrapped = speed.CompiledOrEager(net, compile_fn=lazy)
    x = torch.rand(4, 3)
    with caplog.at_level(logging.WARNING, logger="instembed.engine.speed"):
        y = wrapped(x)
    assert "backend compiler failed" in caplog.text and not wrapped.is_compiled
    assert torch.equal(y, net(x)) and torch.equal(wrapped(x), net(x))
    assert calls == [1]  # not retried


def test_compile_missing_falls_back(monkeypatch, caplog):
    monkeypatch.delattr(torch, "compile")
    with caplog.at_level(logging.WARNING, logger="instembed.engine.speed"):
        wrapped = speed.CompiledOrEager(torch.nn.Identity())
    assert "not available" in caplog.text
    assert torch.equal(wrapped(torch.ones(2)), torch.ones(2))


@pytest.mark.slow
def test_compiled_training_matches_the_default(tmp_path):
    n = 3
    ref = losses_of(Trainer(tiny_config(steps=n), tmp_path / "ref"), n)
    tr = Trainer(tiny_config(steps=n, compile=True), tmp_path / "c")
    got = losses_of(tr, n)
    if not tr.net.is_compiled:
        pytest.skip("torch.compile unavailable here (fell back to eager)")
    rel = rounding_bound(tr.model, "compile")  # fused kernels reorder sums in fp32
    for k in range(n):
        assert abs(got[k] - ref[k]) <= rel * 2**k * abs(ref[k]), (k, got, ref)

import errno
import random
from fractions import Fraction

import numpy as np
import pytest
import torch

from instembed.engine import checkpoint as ck

pytestmark = pytest.mark.usefixtures("one_thread")


def _net(width=4):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, width, 3), torch.nn.ReLU(), torch.nn.Conv2d(width, 2, 1)
    )


def test_save_load_round_trip_with_weights_only(tmp_path):
    net = _net()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    net(torch.randn(1, 1, 8, 8)).sum().backward()
    opt.step()
    path = ck.save_checkpoint(
        tmp_path / "last.pt",
        model_state=net.state_dict(),
        config_yaml="run:\n  steps: 3\n",
        step=7,
        optimizer=opt.state_dict(),
        rng=ck.capture_rng_state(),
        metrics={"AP": 0.5},
        best={"metric": "AP", "value": 0.5, "step": 7},
    )
    # an independent plain weights_only load succeeds: nothing but tensors and primitives inside
    raw = torch.load(path, weights_only=True)
    assert raw["step"] == 7 and raw["config"].startswith("run:")
    state = ck.load_checkpoint(path)
    other = _net(width=4)
    with torch.no_grad():
        for p in other.parameters():
            p.zero_()
    ck.load_model_state(other, state["model"])
    for a, b in zip(net.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    opt2 = torch.optim.AdamW(other.parameters(), lr=1e-2)
    opt2.load_state_dict(state["optimizer"])
    assert torch.equal(
        opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"]
    )
    assert not list(tmp_path.glob(".*.tmp"))


def test_incompatible_model_gives_clear_error(tmp_path):
    path = ck.save_checkpoint(
        tmp_path / "a.pt", model_state=_net(4).state_dict(), config_yaml="", step=0
    )
    state = ck.load_checkpoint(path)
    with pytest.raises(ck.CheckpointError, match=r"shape mismatch.*0\.weight"):
        ck.load_model_state(_net(6), state["model"], source=str(path))
    deeper = torch.nn.Sequential(*_net(4), torch.nn.Conv2d(2, 2, 1))
    with pytest.raises(ck.CheckpointError, match="missing 2 keys"):
        ck.check_compatible(deeper, state["model"])


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ck.save_checkpoint(path, model_state=_net().state_dict(), config_yaml="a", step=1)
    before = path.read_bytes()

    def disk_full(obj, fh):  # writes part of the file, then the disk is full
        fh.write(b"\x00" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck, "_write", disk_full)
    with pytest.raises(OSError, match="No space"):
        ck.save_checkpoint(path, model_state=_net().state_dict(), config_yaml="b", step=2)
    assert path.read_bytes() == before
    assert ck.load_checkpoint(path)["step"] == 1
    assert list(tmp_path.iterdir()) == [path]  # temporary file cleaned up


def test_rejects_foreign_and_pickled_files(tmp_path):
    p = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, p)
    with pytest.raises(ck.CheckpointError, match="format"):
        ck.load_checkpoint(p)

    # an arbitrary (non-tensor, non-primitive) object needs full unpickling -> refused
    q = tmp_path / "evil.pt"
    torch.save({"format": ck.FORMAT, "model": {}, "config": "", "step": 0, "x": Fraction(1, 3)}, q)
    with pytest.raises(ck.CheckpointError, match="not a loadable checkpoint"):
        ck.load_checkpoint(q)
    r = tmp_path / "torn.pt"
    r.write_bytes(b"PK\x03\x04 torn")
    with pytest.raises(ck.CheckpointError, match="torn.pt"):
        ck.load_checkpoint(r)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        ck.load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_round_trip_through_checkpoint(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)  # noqa: NPY002 - the legacy global state is what is captured
    random.seed(3)
    state = ck.capture_rng_state()
    path = ck.save_checkpoint(tmp_path / "r.pt", model_state={}, config_yaml="", step=0, rng=state)
    expected = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    torch.manual_seed(99)
    np.random.seed(99)  # noqa: NPY002 - the legacy global state is what is captured
    random.seed(99)
    ck.restore_rng_state(ck.load_checkpoint(path)["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1])
    assert expected[2] == got[2]


class _Arbitrary:
    """Any class: unpickling it would run the class's code, so weights_only refuses it."""

    def __init__(self):
        self.value = 3


def _assert_own_message(err, path):
    msg = str(err)
    assert str(path) in msg and "\n" not in msg
    # torch's advice (re-run with weights_only=False, allow-list globals) is never shown
    for advice in ("weights_only", "Weights only", "safe_globals", "add_safe_globals"):
        assert advice not in msg, msg


def test_pickled_arbitrary_class_gives_instembeds_own_message(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"format": ck.FORMAT, "model": {}, "config": "", "step": 0, "x": _Arbitrary()}, path)
    with pytest.raises(ck.CheckpointError) as info:
        ck.load_checkpoint(path)
    _assert_own_message(info.value, path)
    assert "_Arbitrary" in str(info.value)  # names what was refused

    import pickle

    plain = tmp_path / "plain.pkl"  # a plain pickle, not a torch file at all
    plain.write_bytes(pickle.dumps({"a": _Arbitrary()}, protocol=4))
    with pytest.raises(ck.CheckpointError) as info:
        ck.load_checkpoint(plain)
    _assert_own_message(info.value, plain)


def test_truncated_checkpoint_gives_instembeds_own_message(tmp_path):
    good = ck.save_checkpoint(
        tmp_path / "last.pt", model_state=_net().state_dict(), config_yaml="", step=1
    )
    data = good.read_bytes()
    for name, cut in (("half.pt", len(data) // 2), ("empty.pt", 0), ("tail.pt", len(data) - 10)):
        bad = tmp_path / name
        bad.write_bytes(data[:cut])
        with pytest.raises(ck.CheckpointError) as info:
            ck.load_checkpoint(bad)
        _assert_own_message(info.value, bad)
        reason = str(info.value).replace(str(bad), "")
        assert "truncated or corrupt" in reason and "miniz" not in reason  # our words


def test_cli_shows_one_line_for_a_foreign_checkpoint(tmp_path, capsys):
    from instembed.cli import main

    path = tmp_path / "foreign.pt"
    torch.save({"x": _Arbitrary()}, path)
    img = tmp_path / "img.png"
    from instembed.data.io import write_image

    write_image(img, np.zeros((1, 16, 16), np.float32))
    args = [
        "predict",
        str(img),
        "--model",
        str(path),
        "--out",
        str(tmp_path / "o"),
        "--device",
        "cpu",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(path) in err and "weights_only" not in err


def test_gray_weights_widened_to_colour_compute_the_gray_network():
    from instembed.models import build_model

    torch.manual_seed(0)
    kw = dict(heads={"embedding": 2, "seed": 1}, depth=2, width=4)
    gray_net = build_model("unet", 1, **kw).eval()
    colour_net = build_model("unet", 3, **kw).eval()
    state = ck.gray_to_colour(colour_net, gray_net.state_dict(), source="g.pt")
    ck.load_model_state(colour_net, state, source="g.pt")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        want = gray_net(x.mean(1, keepdim=True))  # the gray model's input: the channel mean
        got = colour_net(x)
        same = colour_net(x[:, :1].repeat(1, 3, 1, 1))  # a gray image, repeated
        want_same = gray_net(x[:, :1])
    for name in ("embedding", "seed"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(
            getattr(same, name), getattr(want_same, name), atol=1e-5, rtol=1e-4
        )
    # exactly one tensor widened: the first convolution (1 -> 3 input channels)
    widened = [k for k, v in state.items() if v.shape != gray_net.state_dict()[k].shape]
    assert len(widened) == 1 and state[widened[0]].shape[1] == 3


def test_gray_to_colour_refuses_other_differences():
    from instembed.models import build_model

    kw = dict(heads={"embedding": 2}, depth=2)
    colour = build_model("unet", 3, width=4, **kw)
    with pytest.raises(ValueError, match="x.pt: no 1-channel input convolution"):
        ck.gray_to_colour(colour, colour.state_dict(), source="x.pt")
    wider = build_model("unet", 1, width=8, **kw).state_dict()
    with pytest.raises(ValueError, match="only a 1-channel input convolution can be widened"):
        ck.gray_to_colour(colour, wider, source="y.pt")


@pytest.mark.parametrize("bilinear", [False, True])
def test_widened_unet_computes_the_narrow_network(bilinear):
    """A width-4 U-Net embedded into a width-6 one: the same outputs in eval and in training
    mode (batch statistics), and the new channels' outgoing weights get gradients at once."""
    from instembed.models import build_model

    torch.manual_seed(0)
    kw = dict(heads={"embedding": 2, "sigma": 2, "seed": 1}, depth=2, bilinear=bilinear)
    narrow = build_model("unet", 3, width=4, **kw)
    with torch.no_grad():  # running statistics away from their defaults
        for m in narrow.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 2)
                m.bias.uniform_(-1, 1)
    wide = build_model("unet", 3, width=6, **kw)
    state = ck.widen(wide, narrow.state_dict(), source="n.pt")
    ck.load_model_state(wide, state, source="n.pt")
    x = torch.rand(2, 3, 32, 32)
    for mode in ("eval", "train"):
        getattr(narrow, mode)()
        getattr(wide, mode)()
        with torch.no_grad():
            want, got = narrow(x), wide(x)
        for name in ("embedding", "sigma", "seed"):
            torch.testing.assert_close(
                getattr(got, name), getattr(want, name), atol=1e-5, rtol=1e-4
            )
    # the head reads the 2 new full-resolution channels with weight 0; they learn at step 1
    head = wide.decoders[0].head.weight
    assert head.shape[1] == 6 and torch.all(head[:, 4:] == 0)
    wide.train()
    out = wide(x)
    (out.embedding.sum() + out.seed.sum()).backward()
    assert head.grad[:, 4:].abs().sum() > 0
    # a decoder block's concatenated input: old upsampled channels at 0..1, old skip at 6..7
    first = wide.decoders[0].blocks[-1][0][0].weight  # (6, 12, 3, 3)
    old = narrow.decoders[0].blocks[-1][0][0].weight  # (4, 8, 3, 3)
    assert torch.equal(first[:4, :4], old[:, :4]) and torch.equal(first[:4, 6:10], old[:, 4:])
    assert torch.all(first[:4, 4:6] == 0) and torch.all(first[:4, 10:] == 0)


def test_widen_refuses_other_differences():
    from instembed.models import build_model

    kw = dict(heads={"embedding": 2})
    wide = build_model("unet", 1, width=8, depth=2, **kw)
    with pytest.raises(ValueError, match="a.pt: not the layout of the model"):
        ck.widen(wide, build_model("unet", 1, width=4, depth=3, **kw).state_dict(), source="a.pt")
    with pytest.raises(ValueError, match="b.pt: .* only channel counts may grow"):
        ck.widen(
            build_model("unet", 1, width=4, depth=2, **kw),
            wide.state_dict(),
            source="b.pt",
        )
    with pytest.raises(ValueError, match="c.pt: already as wide"):
        ck.widen(wide, wide.state_dict(), source="c.pt")

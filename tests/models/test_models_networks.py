"""Networks: shapes at odd sizes, no NaN, every parameter gets a gradient, receptive field."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from instembed.models import build_model
from instembed.structures import Outputs

pytestmark = pytest.mark.usefixtures("one_thread")


ALL_HEADS = {
    "embedding": 4,
    "seed": 1,
    "sigma": 2,
    "center": 1,
    "offset": 2,
    "semantic": 3,
    "class_embedding": 12,  # K = 3 classes x E = 4 dims
}
TINY = {
    "unet": {"depth": 2, "width": 4},
    "erfnet": {"widths": (4, 8, 16)},
    "enet": {"widths": (8, 16, 32)},  # bottleneck width ch // 4 >= 2
}


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("size", [(33, 35), (32, 32), (17, 40)])
def test_shapes_finite_and_every_parameter_gets_gradient(name, size):
    torch.manual_seed(0)
    model = build_model(
        name, 2, heads=ALL_HEADS, semiconv=True, coordconv=True, head_groups="auto", **TINY[name]
    )
    model.train()
    x = torch.randn(2, 2, *size)
    out = model(x, coords_origin=torch.tensor([[3, 7], [0, 0]]))
    assert isinstance(out, Outputs)
    h, w = size
    expected = {
        "embedding": (2, 4, h, w),
        "seed": (2, 1, h, w),
        "sigma": (2, 2, h, w),
        "center": (2, 1, h, w),
        "offset": (2, 2, h, w),
        "semantic": (2, 3, h, w),
        "class_embedding": (2, 3, 4, h, w),
    }
    got = {k: tuple(v.shape) for k, v in out.to_dict().items()}
    assert got == expected
    for k, v in out.to_dict().items():
        assert torch.isfinite(v).all(), k
    assert ((out.seed >= 0) & (out.seed <= 1)).all()
    assert (out.sigma > 0).all()
    # a random linear functional of every output reaches every parameter
    g = torch.Generator().manual_seed(1)
    total = sum((v * torch.randn(v.shape, generator=g)).sum() for v in out.to_dict().values())
    total.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_eval_mode_returns_same_fields():
    model = build_model("unet", 1, heads={"embedding": 3, "seed": 1}, depth=1, width=4)
    x = torch.randn(1, 1, 9, 11)
    f_train = set(model.train()(x).to_dict())
    f_eval = set(model.eval()(x).to_dict())
    assert f_train == f_eval == {"embedding", "seed"}


def test_unknown_name_lists_valid_names():
    from instembed.models import BACKBONES, MODELS

    with pytest.raises(ValueError, match="unknown model name 'resnet'") as err:
        build_model("resnet")
    msg = str(err.value)
    assert f"{sorted(MODELS)} (families)" in msg and f"{sorted(BACKBONES)} (backbones" in msg
    assert "'embedding'" in msg and "'unet'" in msg
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet'.*'unet'"):
        build_model("embedding", backbone="resnet")


def test_bad_heads_and_input_errors():
    with pytest.raises(ValueError, match="unknown head names"):
        build_model("unet", heads={"embeding": 8}, depth=1, width=2)
    with pytest.raises(ValueError, match="offset"):
        build_model("unet", heads={"offset": 3}, depth=1, width=2)
    with pytest.raises(ValueError, match="semiconv needs embedding dims"):
        build_model("unet", heads={"embedding": 1}, semiconv=True, depth=1, width=2)
    model = build_model("unet", 3, depth=1, width=2)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.zeros(1, 1, 8, 8))


def test_semiconv_model_adds_original_image_coordinates():
    # With every weight zero the network's Phi is 0, so Psi must be exactly u: the pixel at
    # row i, column j of a crop whose origin is (y0, x0) gets ((y0 + i) s, (x0 + j) s).
    s = 0.25
    model = build_model(
        "unet", 1, heads={"embedding": 3}, semiconv=True, coord_scale=s, depth=1, width=2
    )
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    out = model.eval()(torch.randn(2, 1, 5, 7), coords_origin=torch.tensor([[10, 20], [0, 0]]))
    e = out.embedding
    assert e[0, 0, 2, 3].item() == pytest.approx((10 + 2) * s)
    assert e[0, 1, 2, 3].item() == pytest.approx((20 + 3) * s)
    assert e[1, 0, 4, 6].item() == pytest.approx(4 * s)
    assert e[1, 1, 4, 6].item() == pytest.approx(6 * s)
    assert (e[:, 2] == 0).all()  # appearance dim gets no coordinate


def _theoretical_support(model: nn.Module, size: int) -> int:
    """Side of the input window that the centre output pixel depends on, measured by autograd.

    Max pools are swapped for average pools, weights made positive, biases 0.1, no norm: every
    activation is then positive, so ReLU passes every path and the gradient support is the
    whole theoretical receptive field.
    """
    for m in list(model.modules()):
        for cname, child in list(m.named_children()):
            if isinstance(child, nn.MaxPool2d):
                setattr(m, cname, nn.AvgPool2d(2))
    with torch.no_grad():
        for pname, p in model.named_parameters():
            p.copy_(p.abs() + 0.01 if "weight" in pname else torch.full_like(p, 0.1))
    model = model.double().eval()
    x = torch.ones(1, 1, size, size, dtype=torch.float64, requires_grad=True)
    out = model(x).embedding
    out[0, 0, size // 2, size // 2].backward()
    rows = (x.grad[0, 0].abs() > 0).any(1).nonzero()
    return int(rows.max() - rows.min() + 1)


@pytest.mark.parametrize("depth", [1, 2])
def test_unet_receptive_field_matches_gradient_support(depth):
    model = build_model("unet", 1, heads={"embedding": 2}, depth=depth, width=2, norm="none")
    rf = model.receptive_field
    # hand count, depth 1: 2 convs (4) + pool (1) + 2 convs at jump 2 (8) + up + 2 convs (4) = 18
    if depth == 1:
        assert rf == 18
    assert _theoretical_support(model, 4 * rf) == rf


@pytest.mark.parametrize("name", ["erfnet", "enet"])
def test_receptive_field_bounds_gradient_support(name):
    # ERFNet / ENet's theoretical field (> 1000 px) is too large to measure here; check that the
    # gradient support on a 96 x 96 input already reaches the image border (field > 96) and that
    # the reported field exceeds it.
    model = build_model(name, 1, heads={"embedding": 2}, norm="none", **TINY[name])
    assert _theoretical_support(model, 96) == 96
    assert model.receptive_field > 96


def test_head_groups_make_one_decoder_each():
    heads = {"embedding": 3, "seed": 1, "sigma": 1}
    single = build_model("erfnet", 1, heads=heads, head_groups="single", widths=(4, 8, 16))
    auto = build_model("erfnet", 1, heads=heads, widths=(4, 8, 16))  # ERFNet default: "auto"
    explicit = build_model(
        "unet", 1, heads=heads, head_groups=[("seed",), ("embedding", "sigma")], depth=1, width=2
    )
    assert len(single.decoders) == 1
    assert auto.groups == [("embedding", "sigma"), ("seed",)]
    assert explicit.groups == [("seed",), ("embedding", "sigma")]
    out = explicit(torch.randn(1, 1, 6, 6))
    assert out.seed.shape == (1, 1, 6, 6) and out.embedding.shape == (1, 3, 6, 6)
    with pytest.raises(ValueError, match="every head exactly once"):
        build_model("unet", 1, heads=heads, head_groups=[("seed",)], depth=1, width=2)


def test_sigma_head_starts_at_sigma_init():
    # the sigma channels' bias is log(sigma_init), so with zero weights sigma = sigma_init
    model = build_model("unet", 1, heads={"sigma": 2}, sigma_init=0.3, depth=1, width=2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "head.weight" in name:
                p.zero_()
    out = model.eval()(torch.randn(1, 1, 4, 4))
    torch.testing.assert_close(out.sigma, torch.full((1, 2, 4, 4), 0.3))


def _block_support(block: nn.Module, size: int = 41) -> int:
    """Gradient support (rows) of the centre output of one block, all activations positive."""
    with torch.no_grad():
        for pname, p in block.named_parameters():
            p.copy_(p.abs() + 0.01 if "weight" in pname else torch.full_like(p, 0.1))
    block = block.double().eval()
    ch = next(m for m in block.modules() if isinstance(m, nn.Conv2d)).in_channels
    x = torch.ones(1, ch, size, size, dtype=torch.float64, requires_grad=True)
    y = block(x)
    y[0, 0, y.shape[-2] // 2, y.shape[-1] // 2].backward()
    rows = (x.grad[0].abs().sum(0) > 0).any(1).nonzero()
    return int(rows.max() - rows.min() + 1)


@pytest.mark.parametrize("d", [1, 2, 4])
def test_block_receptive_fields_used_by_the_formulas(d):
    # ERFNet non-bottleneck-1D: a 3-tap conv then a 3-tap conv dilated by d along each axis:
    # 1 + 2 + 2 d rows. ENet dilated bottleneck: 1x1, 3x3 dilated d, 1x1: 1 + 2 d rows.
    from instembed.models.enet import Bottleneck
    from instembed.models.erfnet import NonBottleneck1D

    assert _block_support(NonBottleneck1D(2, 0.0, d, "none")) == 3 + 2 * d
    assert _block_support(Bottleneck(8, "dilated", 0.0, "none", d)) == 1 + 2 * d
    assert _block_support(Bottleneck(8, "asymmetric", 0.0, "none")) == 5

"""The lecture backbones (FCN-8s, SegNet, PSPNet, DeepLabV3+, HRNet): shapes at odd sizes with
every head, gradients, SegNet unpooling indices, ASPP/PPM branches, HRNet fusion, a training
smoke run with the discriminative loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from instembed.data.dataset import InstanceDataset, collate
from instembed.data.synth import make_samples
from instembed.losses import build_loss
from instembed.models import BACKBONES, build_model
from instembed.models.build import DEFAULT_HEAD_GROUPS
from instembed.models.deeplab import ASPP, DeepLabV3Plus
from instembed.models.hrnet import HRFusion, HRNet
from instembed.models.pspnet import PyramidPooling
from instembed.models.resnet_blocks import GLOBAL_RECEPTIVE_FIELD

pytestmark = pytest.mark.usefixtures("one_thread")


ALL_HEADS = {
    "embedding": 4,
    "seed": 1,
    "sigma": 2,
    "center": 1,
    "offset": 2,
    "semantic": 3,
    "class_embedding": 12,
}
_RESNET = {"widths": (4, 4, 8, 8), "blocks": (1, 1, 1, 1), "stem_width": 4}
TINY = {
    "fcn8s": {"widths": (4, 4, 8, 8, 8), "convs": (1, 1, 1, 1, 1), "fc_width": 8, "fc_kernel": 3},
    "segnet": {"widths": (4, 4, 8, 8, 8), "convs": (1, 1, 1, 1, 1)},
    "pspnet": {**_RESNET, "decoder_width": 8, "dropout": 0.0},
    "deeplabv3plus": {
        **_RESNET,
        "aspp_width": 8,
        "low_width": 4,
        "decoder_width": 8,
        "dropout": 0.0,
    },
    "hrnet": {
        "widths": (4, 4, 8, 8),
        "modules": (1, 1, 1),
        "blocks": 1,
        "stem_width": 4,
        "stage1_blocks": 1,
    },
}
CASES = [(name, {}) for name in TINY] + [("deeplabv3plus", {"output_stride": 8})]


def test_registered_with_head_groups():
    for name in TINY:
        assert name in BACKBONES and name in DEFAULT_HEAD_GROUPS


@pytest.mark.parametrize(("name", "extra"), CASES, ids=[f"{n}{e}" for n, e in CASES])
@pytest.mark.parametrize("size", [(37, 53), (64, 64), (70, 90)])
def test_shapes_finite_and_every_parameter_gets_gradient(name, extra, size):
    torch.manual_seed(0)
    model = build_model(
        name, 2, heads=ALL_HEADS, semiconv=True, head_groups="auto", **TINY[name], **extra
    )
    model.train()
    out = model(torch.randn(2, 2, *size), coords_origin=torch.tensor([[3, 7], [0, 0]]))
    h, w = size
    got = {k: tuple(v.shape) for k, v in out.to_dict().items()}
    assert got == {
        "embedding": (2, 4, h, w),
        "seed": (2, 1, h, w),
        "sigma": (2, 2, h, w),
        "center": (2, 1, h, w),
        "offset": (2, 2, h, w),
        "semantic": (2, 3, h, w),
        "class_embedding": (2, 3, 4, h, w),
    }
    for k, v in out.to_dict().items():
        assert torch.isfinite(v).all(), k
    g = torch.Generator().manual_seed(1)
    total = sum((v * torch.randn(v.shape, generator=g)).sum() for v in out.to_dict().values())
    total.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_size_divisors_and_receptive_fields():
    div = {"fcn8s": 32, "segnet": 32, "pspnet": 8, "deeplabv3plus": 16, "hrnet": 32}
    for name, d in div.items():
        model = build_model(name, heads={"embedding": 2}, **TINY[name])
        assert model.size_divisor == d, name
    assert build_model("deeplabv3plus", output_stride=8, **TINY["deeplabv3plus"]).size_divisor == 8
    assert build_model("segnet", widths=(4, 4), convs=(1, 1)).size_divisor == 4
    # global pooling: the whole input
    assert build_model("pspnet").receptive_field == GLOBAL_RECEPTIVE_FIELD
    assert build_model("deeplabv3plus").receptive_field == GLOBAL_RECEPTIVE_FIELD
    # FCN-8s by hand, convs (1,1,1,1,1), fc 3x3: the window [lo, hi] of a unit is [-1, 1] after
    # conv1, [-1, 2] after pool1 (jump 2), ..., [-31, 62] after pool5 (jump 32), [-63, 94] after
    # fc6; each x2 transposed conv (k 4, pad 1) adds [-J, J / 2] at the coarse jump J: [-95, 110],
    # [-111, 118]; the x8 one (k 16, pad 4) adds [-11, 4]: [-122, 122], 245 px
    assert build_model("fcn8s", **TINY["fcn8s"]).receptive_field == 245


def _supports(model: nn.Module, size: int, positions: int) -> list[int]:
    """Rows of the input that output (size // 2 + k, size // 2) depends on, k < positions
    (positive weights, average pools: every path carries gradient)."""
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
    res = []
    for k in range(positions):
        (g,) = torch.autograd.grad(out[0, 0, size // 2 + k, size // 2], x, retain_graph=True)
        rows = (g[0, 0].abs() > 0).any(1).nonzero()
        res.append(int(rows.max() - rows.min() + 1))
    return res


@pytest.mark.parametrize(("name", "size"), [("fcn8s", 320), ("hrnet", 448)])
def test_receptive_field_bounds_gradient_support(name, size):
    # the field depends on the output position modulo the upsampling factors (32 here); the
    # reported one is an upper bound over positions, and close to the measured maximum
    model = build_model(name, heads={"embedding": 1}, norm="none", **TINY[name])
    rf = model.receptive_field
    assert size > rf + 32
    measured = max(_supports(model, size, 32))
    assert rf >= measured >= 0.85 * rf, (rf, measured)


def test_segnet_unpooling_puts_values_at_recorded_indices():
    model = build_model("segnet", heads={"embedding": 2}, **TINY["segnet"])
    pool = model.backbone.encoder.stages[0].pool
    unpool = model.decoders[0].stages[-1].unpool  # the full-resolution decoder stage
    maxima = [(1, 0), (0, 3), (3, 1), (2, 2)]  # one per 2x2 window, chosen by hand
    x = torch.rand(1, 1, 4, 4) * 0.5
    for k, (r, c) in enumerate(maxima):
        x[0, 0, r, c] = 10.0 + k
    y, idx = pool(x)
    assert y.flatten().tolist() == [10.0, 11.0, 12.0, 13.0]
    assert idx.flatten().tolist() == [r * 4 + c for r, c in maxima]
    up = unpool(y, idx)[0, 0]
    nz = [tuple(p) for p in up.nonzero().tolist()]
    assert sorted(nz) == sorted(maxima)
    for k, (r, c) in enumerate(maxima):
        assert up[r, c] == 10.0 + k


def test_segnet_decoder_unpools_with_matching_encoder_indices():
    model = build_model("segnet", heads={"embedding": 2}, **TINY["segnet"]).eval()
    x = torch.randn(1, 1, 64, 64)
    _, enc_idx = model.backbone.encoder(x)
    seen = []
    hooks = [
        st.unpool.register_forward_hook(lambda m, inp, out: seen.append(inp[1]))
        for st in model.decoders[0].stages
    ]
    model(x)
    for h in hooks:
        h.remove()
    assert len(seen) == len(enc_idx) == 5
    for got, want in zip(seen, reversed(enc_idx)):  # deepest stage first
        assert torch.equal(got, want)


def test_aspp_branch_shapes_and_rates():
    aspp = ASPP(8, 5, rates=(1, 2, 3), dropout=0.0).eval()
    x = torch.randn(2, 8, 9, 11)
    assert len(aspp.branches) == 5  # 1x1, three dilated 3x3, image pooling
    for b in aspp.branches:
        assert b(x).shape == (2, 5, 9, 11)
    dil = [b[0].dilation[0] for b in list(aspp.branches)[1:4]]
    assert dil == [1, 2, 3]
    assert aspp.branches[-1].pooled(x).shape == (2, 5, 1, 1)
    img = aspp.branches[-1](x)
    assert torch.allclose(img, img[..., :1, :1].expand_as(img))  # image-level: constant
    assert aspp(x).shape == (2, 5, 9, 11)
    # rates scale with the output stride: (6, 12, 18) at 16, doubled at 8
    assert DeepLabV3Plus(1, output_stride=16).rates == (6, 12, 18)
    assert DeepLabV3Plus(1, output_stride=8).rates == (12, 24, 36)
    assert [b[0].dilation[0] for b in list(DeepLabV3Plus(1, 8).encoder.aspp.branches)[1:4]] == [
        12,
        24,
        36,
    ]


def test_ppm_branch_shapes():
    ppm = PyramidPooling(8, 3, (1, 2, 3, 6)).eval()
    x = torch.randn(2, 8, 13, 10)
    for b, bins in zip(ppm.branches, (1, 2, 3, 6)):
        assert b.pooled(x).shape == (2, 3, bins, bins)
        assert b(x).shape == (2, 3, 13, 10)
    y = ppm(x)
    assert ppm.out_channels == 8 + 4 * 3 and y.shape == (2, 20, 13, 10)
    assert torch.equal(y[:, :8], x)  # the feature map itself is concatenated


def test_hrnet_branch_and_fusion_shapes():
    model = HRNet(1, **TINY["hrnet"]).eval()
    xs = model.encoder(torch.randn(1, 1, 64, 96))
    assert [tuple(x.shape) for x in xs] == [
        (1, 4, 16, 24),
        (1, 4, 8, 12),
        (1, 8, 4, 6),
        (1, 8, 2, 3),
    ]
    widths = (3, 5, 7, 9)
    fusion = HRFusion(widths, "batch").eval()
    xs = [torch.randn(2, w, 16 // 2**i, 24 // 2**i) for i, w in enumerate(widths)]
    for i, row in enumerate(fusion.layers):
        for j, f in enumerate(row):  # every input resampled to branch i's shape
            assert f(xs[j]).shape == xs[i].shape, (i, j)
    assert [y.shape for y in fusion(xs)] == [x.shape for x in xs]


def test_hrnet_fusion_sums_resampled_branches():
    # identity-like weights (1x1 conv = identity, stride-2 3x3 conv = centre tap) and no norm:
    # branch j reaches branch i by nearest upsampling (j > i) or subsampling x[::s, ::s] (j < i);
    # on positive inputs every ReLU passes, so out[i] = sum_j resample(x_j) exactly.
    c = 3
    fusion = HRFusion((c, c, c, c), "none")
    with torch.no_grad():
        for m in fusion.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.zero_()
                k = m.kernel_size[0] // 2
                m.weight[:, :, k, k] = torch.eye(c)
                m.bias.zero_()
    xs = [torch.rand(2, c, 16 // 2**i, 24 // 2**i) + 0.1 for i in range(4)]
    out = fusion(xs)
    for i in range(4):
        want = torch.zeros_like(xs[i])
        for j in range(4):
            s = 2 ** abs(j - i)
            if j > i:
                want += F.interpolate(xs[j], scale_factor=s, mode="nearest")
            else:
                want += xs[j][..., ::s, ::s]
        torch.testing.assert_close(out[i], want)


@pytest.mark.parametrize("name", sorted(TINY))
def test_embedding_model_trains_with_discriminative_loss(name):
    torch.manual_seed(0)
    ds = InstanceDataset(make_samples("touching_cells", 2, size=(64, 64), seed=0))
    batch = collate([ds[i] for i in range(len(ds))])
    model = build_model(
        "embedding", backbone=name, in_channels=batch["image"].shape[1], heads={"embedding": 4}
    )
    model.train()
    loss_fn = build_loss("discriminative")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        total, _ = loss_fn(model(batch["image"], batch.get("coords_origin")), batch)
        total.backward()
        opt.step()
        losses.append(float(total.detach()))
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert min(losses[1:]) < losses[0] or losses[-1] < 10 * losses[0], losses

"""Panoptic-DeepLab targets and loss; semantic cross-entropy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from instembed.losses import build_loss, build_targets, center_offset_loss, semantic_ce
from instembed.structures import Outputs


def test_targets_by_hand():
    lab = torch.zeros(8, 9, dtype=torch.long)
    lab[2:5, 3:6] = 4  # 3x3 square, centre of mass (3, 4)
    lab[0:2, 0:2] = 9  # 2x2 square, centre of mass (0.5, 0.5)
    t = build_targets(
        "center_offset", lab, sigma=2.0, small_instance_area=5, small_instance_weight=3.0
    )
    heat, off = t["center_heatmap"][0], t["offset_target"]
    assert heat[3, 4].item() == pytest.approx(1.0)
    assert heat[3, 5].item() == pytest.approx(math.exp(-1 / (2 * 2.0**2)))  # 1 px from the peak
    assert off[:, 2, 3].tolist() == [1.0, 1.0]  # (3 - 2, 4 - 3)
    assert off[:, 4, 5].tolist() == [-1.0, -1.0]
    assert off[:, 1, 1].tolist() == [-0.5, -0.5]
    assert off[:, 7, 8].tolist() == [0.0, 0.0]  # background
    assert t["offset_weights"].sum().item() == 9 + 4
    # 2x2 instance (area 4 < 5) gets weight 3, the 3x3 one (area 9) weight 1
    assert t["semantic_weights"][0, 0].item() == 3.0 and t["semantic_weights"][3, 4].item() == 1.0
    with pytest.raises(ValueError, match="valid names"):
        build_targets("centre", lab)
    # numpy input and ignore
    ign = np.zeros((8, 9), bool)
    ign[3, 4] = True
    t2 = build_targets("center_offset", lab.numpy(), ignore=ign)
    assert t2["offset_weights"][3, 4] == 0 and t2["center_weights"][3, 4] == 0


def _targets(labels):
    per = [build_targets("center_offset", labels[i]) for i in range(labels.shape[0])]
    return {k: torch.stack([p[k] for p in per]) for k in per[0]}


def test_loss_hand_values():
    labels = torch.zeros(1, 6, 6, dtype=torch.long)
    labels[0, 1:4, 1:4] = 1
    t = _targets(labels)
    center = t["center_heatmap"].clone()
    offset = t["offset_target"].clone()
    _, terms = center_offset_loss(center, offset, t["center_heatmap"], t["offset_target"])
    assert terms["center"].item() == 0.0 and terms["offset"].item() == 0.0
    # centre off by 0.1 everywhere -> MSE 0.01; dy off by 1 on the 9 fg pixels -> L1 mean 1
    offset[:, 0] += 1.0
    total, terms = center_offset_loss(
        center + 0.1,
        offset,
        t["center_heatmap"],
        t["offset_target"],
        center_weights=t["center_weights"],
        offset_weights=t["offset_weights"],
    )
    assert terms["center"].item() == pytest.approx(0.01)
    assert terms["offset"].item() == pytest.approx(1.0)
    assert total.item() == pytest.approx(200 * 0.01 + 0.01 * 1.0)


def test_semantic_ce_ignore_weights_topk_by_hand():
    # 3 pixels, 2 classes, logits (0, 0) -> CE log 2 each; pixel 2 has logits (0, ln 3)
    # with target 0 -> CE = log(1 + 3) = log 4; pixel 1 ignored.
    logits = torch.tensor([[[[0.0, 0.0, 0.0]], [[0.0, 0.0, math.log(3)]]]])
    target = torch.tensor([[[1, 255, 0]]])
    total, _ = semantic_ce(logits, target)
    assert total.item() == pytest.approx((math.log(2) + math.log(4)) / 2)
    # top 50% of 2 valid pixels -> the harder one, log 4
    assert semantic_ce(logits, target, top_k=0.5)[0].item() == pytest.approx(math.log(4))
    # class weights (1, 3): weighted mean = (3 log 2 + 1 log 4) / (3 + 1)
    got = semantic_ce(logits, target, class_weights=[1.0, 3.0])[0].item()
    assert got == pytest.approx((3 * math.log(2) + math.log(4)) / 4)
    # pixel weights double pixel 0: (2 log 2 + log 4) / 2
    pw = torch.tensor([[[2.0, 1.0, 1.0]]])
    assert semantic_ce(logits, target, pixel_weights=pw)[0].item() == pytest.approx(
        (2 * math.log(2) + math.log(4)) / 2
    )
    with pytest.raises(ValueError, match="class ids outside"):
        semantic_ce(logits, torch.tensor([[[2, 0, 0]]]))


def test_module_builds_missing_targets_and_gradcheck():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (2, 7, 7), generator=g)
    center = torch.rand(2, 1, 7, 7, generator=g, dtype=torch.float64, requires_grad=True)
    offset = torch.randn(2, 2, 7, 7, generator=g, dtype=torch.float64, requires_grad=True)
    sem = torch.randn(2, 2, 7, 7, generator=g, dtype=torch.float64, requires_grad=True)
    out = Outputs(center=center, offset=offset, semantic=sem)
    loss = build_loss("center_offset")
    a, ta = loss(out, {"labels": labels})
    b, tb = loss(out, {"labels": labels, **_targets(labels)})
    torch.testing.assert_close(a, b)
    assert set(ta) == {"center", "offset", "semantic"}
    small = labels[:1, :5, :5]  # gradcheck on a 1 x 5 x 5 crop keeps the test fast
    t = _targets(small)

    def fn(c, o, s):
        return center_offset_loss(
            c,
            o,
            t["center_heatmap"].double(),
            t["offset_target"].double(),
            offset_weights=t["offset_weights"],
            semantic=s,
            semantic_target=(small > 0).long(),
            semantic_weights=t["semantic_weights"],
            top_k=1.0,
        )[0]

    crop = (slice(0, 1), slice(None), slice(0, 5), slice(0, 5))
    leaves = [v.detach()[crop].clone().requires_grad_(True) for v in (center, offset, sem)]
    assert torch.autograd.gradcheck(fn, tuple(leaves))


def test_batch_pools_pixels_and_zero_instances():
    # Documented: sums pool the batch, so with equal-size images and all-ones centre weights the
    # centre term is the mean of the single-image terms; the offset term is the mean of singles
    # weighted by their foreground pixel counts.
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 3, (2, 6, 6), generator=g)
    labels[1, :, 3:] = 0
    t = _targets(labels)
    center = torch.rand(2, 1, 6, 6, generator=g)
    offset = torch.randn(2, 2, 6, 6, generator=g)

    def run(sl):
        return center_offset_loss(
            center[sl],
            offset[sl],
            t["center_heatmap"][sl],
            t["offset_target"][sl],
            offset_weights=t["offset_weights"][sl],
        )[1]

    both, s0, s1 = run(slice(0, 2)), run(slice(0, 1)), run(slice(1, 2))
    torch.testing.assert_close(both["center"], (s0["center"] + s1["center"]) / 2)
    n0, n1 = t["offset_weights"][0].sum(), t["offset_weights"][1].sum()
    torch.testing.assert_close(both["offset"], (n0 * s0["offset"] + n1 * s1["offset"]) / (n0 + n1))
    # no instance at all: finite, offset term 0, gradient finite
    c = torch.rand(1, 1, 6, 6, requires_grad=True)
    o = torch.randn(1, 2, 6, 6, requires_grad=True)
    total, terms = build_loss("center_offset")(
        Outputs(center=c, offset=o), {"labels": torch.zeros(1, 6, 6, dtype=torch.long)}
    )
    gc, go = torch.autograd.grad(total, (c, o))
    assert torch.isfinite(total) and terms["offset"].item() == 0.0
    assert torch.isfinite(gc).all() and torch.isfinite(go).all()


def test_semantic_ce_module_uses_foreground_without_semantic():
    labels = torch.tensor([[[0, 1, 2]]])
    ignore = torch.tensor([[[False, False, True]]])
    logits = torch.zeros(1, 2, 1, 3)
    total, _ = build_loss("semantic_ce")(
        Outputs(semantic=logits), {"labels": labels, "ignore": ignore}
    )
    assert total.item() == pytest.approx(math.log(2))


def test_build_loss_error_lists_names():
    with pytest.raises(
        ValueError, match=r"valid names: \['bilateral', 'center_offset', 'discriminative'"
    ):
        build_loss("triplet")
    with pytest.raises(TypeError, match=r"unknown options \['deltav'\] for loss 'discriminative'"):
        build_loss("discriminative", deltav=1.0)


def targets_reference(lab, sigma):
    """Pixel loops: heatmap = max over instances of the Gaussian at the rounded centre of mass
    (round-half-even, as torch.round) in a window of half-width int(3 sigma + 1), offsets to
    the unrounded centre."""
    h, w = lab.shape
    heat = [[0.0] * w for _ in range(h)]
    off = [[[0.0] * w for _ in range(h)] for _ in range(2)]
    for k in sorted(set(lab.flatten().tolist()) - {0}):
        pts = [(y, x) for y in range(h) for x in range(w) if lab[y, x] == k]
        cy = sum(p[0] for p in pts) / len(pts)
        cx = sum(p[1] for p in pts) / len(pts)
        for y, x in pts:
            off[0][y][x], off[1][y][x] = cy - y, cx - x
        ry, rx = round(cy), round(cx)
        for y in range(h):
            for x in range(w):
                if abs(y - ry) <= int(3 * sigma + 1) and abs(x - rx) <= int(3 * sigma + 1):
                    g = math.exp(-((y - ry) ** 2 + (x - rx) ** 2) / (2 * sigma**2))
                    heat[y][x] = max(heat[y][x], g)
    return torch.tensor(heat), torch.tensor(off)


@pytest.mark.parametrize("n", [0, 1, 4])
def test_targets_match_loop_reference_and_ignore_ids(n):
    g = torch.Generator().manual_seed(n)
    lab = torch.randint(0, n + 1, (9, 11), generator=g)
    heat_ref, off_ref = targets_reference(lab.numpy(), 1.5)
    t = build_targets("center_offset", lab, sigma=1.5)
    torch.testing.assert_close(t["center_heatmap"][0], heat_ref)
    torch.testing.assert_close(t["offset_target"], off_ref)
    perm = torch.tensor([0, 3, 4, 1, 2])[: n + 1] if n == 4 else torch.arange(n + 1)
    t2 = build_targets("center_offset", perm[lab] * 7, sigma=1.5)  # other ids, same instances
    for k in t:
        torch.testing.assert_close(t[k], t2[k])


def test_module_zeroes_weights_of_ignored_pixels():
    # targets built without the ignore mask (as the data stage does); the module must still
    # drop ignored pixels: a centre error only at an ignored pixel costs nothing.
    labels = torch.zeros(1, 6, 6, dtype=torch.long)
    labels[0, 1:4, 1:4] = 1
    t = _targets(labels)
    center = t["center_heatmap"].clone()
    center[0, 0, 5, 5] += 1.0
    ignore = torch.zeros(1, 6, 6, dtype=torch.bool)
    ignore[0, 5, 5] = True
    out = Outputs(center=center, offset=t["offset_target"].clone())
    loss = build_loss("center_offset")
    total, _ = loss(out, {"labels": labels, "ignore": ignore, **t})
    assert total.item() == 0.0
    total, terms = loss(out, {"labels": labels, **t})
    assert terms["center"].item() == pytest.approx(1 / 36)

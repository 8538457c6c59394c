"""Metric-learning pair loss (Fathi et al. 2017): sigma(p,q), size weights, sampling, seediness."""

from __future__ import annotations

import math

import pytest
import torch

from instembed.losses import build_loss, metric_loss
from instembed.structures import Outputs


def reference(emb, labels, eps=1e-6):
    """All ordered pairs p != q, written with Python loops and math."""
    vals = []
    for b in range(emb.shape[0]):
        lab = labels[b].reshape(-1)
        x = emb[b].reshape(emb.shape[1], -1).T
        pts = [i for i in range(len(lab)) if lab[i] > 0]
        area = {int(k): int((lab == k).sum()) for k in torch.unique(lab)}
        num, den = 0.0, 0.0
        for p in pts:
            for q in pts:
                if p == q:
                    continue
                d2 = float(((x[p] - x[q]) ** 2).sum())
                s = 2 / (1 + math.exp(d2))
                same = lab[p] == lab[q]
                nll = -math.log(s) if same else -math.log(max(1 - s, eps))
                w = 1 / (area[int(lab[p])] * area[int(lab[q])])
                num += w * nll
                den += w
        vals.append(num / den if den else 0.0)
    return sum(vals) / len(vals)


def case(seed=0, b=2, e=3, h=4, w=5, n=3):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, e, h, w, generator=g, dtype=torch.float64),
        torch.randint(0, n + 1, (b, h, w), generator=g),
    )


def test_hand_values():
    # same instance, 1-D distance 1: sigma = 2 / (1 + e) -> loss log((1 + e) / 2)
    emb = torch.tensor([[[[0.0, 1.0]]]])
    total, _ = metric_loss(emb, torch.tensor([[[1, 1]]]), num_points=None)
    assert total.item() == pytest.approx(math.log((1 + math.e) / 2), rel=1e-6)
    # different instances at distance 1: 1 - sigma = (e - 1) / (e + 1)
    total, _ = metric_loss(emb, torch.tensor([[[1, 2]]]), num_points=None)
    assert total.item() == pytest.approx(-math.log((math.e - 1) / (math.e + 1)), rel=1e-6)


def test_size_weights_balance_instances():
    # Instance 1 has 3 pixels at 0, instance 2 one pixel at 1 (1-D). Same pairs: 6 ordered pairs
    # inside instance 1, weight 1/9 each, loss 0 (d = 0). Cross pairs: 6, weight 1/3 each, loss
    # L = -log((e-1)/(e+1)). Weighted mean = 6/3 L / (6/9 + 6/3) = 2 L / (8/3) = 0.75 L.
    emb = torch.tensor([[[[0.0, 0.0, 0.0, 1.0]]]])
    total, _ = metric_loss(emb, torch.tensor([[[1, 1, 1, 2]]]), num_points=None)
    assert total.item() == pytest.approx(0.75 * -math.log((math.e - 1) / (math.e + 1)), rel=1e-6)


def test_matches_loop_reference_and_batch_mean():
    emb, labels = case(1)
    got, _ = metric_loss(emb, labels, num_points=None)
    torch.testing.assert_close(got, torch.tensor(reference(emb, labels), dtype=torch.float64))
    singles = [metric_loss(emb[i : i + 1], labels[i : i + 1], num_points=None)[0] for i in range(2)]
    torch.testing.assert_close(got, (singles[0] + singles[1]) / 2)


def test_sampling_budget_reproducible_and_exact_when_large():
    emb, labels = case(2, h=8, w=8)
    exact, _ = metric_loss(emb, labels, num_points=None)
    big, _ = metric_loss(emb, labels, num_points=10_000)  # more than the pixels: all used
    torch.testing.assert_close(exact, big)
    a, _ = metric_loss(emb, labels, num_points=10, generator=torch.Generator().manual_seed(5))
    b, _ = metric_loss(emb, labels, num_points=10, generator=torch.Generator().manual_seed(5))
    assert a.item() == b.item() and a.item() != exact.item()


def test_gradcheck_permutation_zero_one():
    emb, labels = case(3, e=2, h=3, w=3)
    emb.requires_grad_(True)
    seed = torch.rand(2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    fn = lambda e, s: metric_loss(e, labels, num_points=None, seed=s)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (emb, seed))
    perm = torch.tensor([0, 2, 3, 1])
    torch.testing.assert_close(
        metric_loss(emb, labels, num_points=None)[0],
        metric_loss(emb, perm[labels], num_points=None)[0],
    )
    for n in (0, 1):
        lab = torch.zeros(1, 4, 4, dtype=torch.long)
        lab[0, 1:3, 1:3] = n
        e = torch.randn(1, 3, 4, 4, requires_grad=True)
        s = torch.rand(1, 1, 4, 4, requires_grad=True)
        total, _ = metric_loss(e, lab, seed=s)
        ge, gs = torch.autograd.grad(total, (e, s))
        assert torch.isfinite(total) and torch.isfinite(ge).all() and torch.isfinite(gs).all()


def test_seediness_target_is_iou_of_seed_mask():
    # Instances 1 (2 px) and 2 (2 px) share the embedding 0; sigma = 1 > 0.5 for every pair, so
    # every point's mask is all 4 points: IoU with its 2-px instance = 2/4 = 0.5. Background
    # (1 px) target 0. Seed 0.8 on fg: BCE = -(0.5 log 0.8 + 0.5 log 0.2); seed 0.2 on bg:
    # BCE = -log 0.8. L_seed = mean of the two parts.
    emb = torch.zeros(1, 2, 1, 5)
    labels = torch.tensor([[[1, 1, 2, 2, 0]]])
    seed = torch.tensor([[[[0.8, 0.8, 0.8, 0.8, 0.2]]]])
    _, t = metric_loss(emb, labels, num_points=None, seed=seed)
    fg = -(0.5 * math.log(0.8) + 0.5 * math.log(0.2))
    bg = -math.log(0.8)
    assert t["seed"].item() == pytest.approx((fg + bg) / 2, rel=1e-5)


def test_module_with_heads():
    emb, labels = case(4)
    sem = torch.randn(2, 2, 4, 5, dtype=torch.float64)
    loss = build_loss("metric", num_points=None)
    total, terms = loss(Outputs(embedding=emb, semantic=sem), {"labels": labels})
    assert set(terms) == {"embedding", "class"}
    ce = torch.nn.functional.cross_entropy(sem, (labels > 0).long())
    torch.testing.assert_close(
        total, torch.tensor(reference(emb, labels), dtype=torch.float64) + ce
    )

"""Semi-convolutional attractive loss (Novotny et al. 2018, eq. 5)."""

from __future__ import annotations

import itertools

import pytest
import torch

from instembed.losses import build_loss, semiconv_loss
from instembed.structures import Outputs


def reference(emb, labels, reduction="sum", rep_w=0.0, margin=1.0):
    """Per-image / per-instance loops straight from eq. 5 (+ optional repulsion)."""
    vals = []
    for b in range(emb.shape[0]):
        ids = [int(i) for i in torch.unique(labels[b]) if i > 0]
        per, mus = [], []
        for i in ids:
            xs = emb[b][:, labels[b] == i].T
            mu = xs.mean(0)
            mus.append(mu)
            per.append(sum(torch.linalg.norm(x - mu) for x in xs) / len(xs))
        att = (sum(per) if reduction == "sum" else sum(per) / len(per)) if per else 0.0
        rep = 0.0
        if len(ids) > 1:
            rep = sum(
                torch.relu(margin - torch.linalg.norm(mus[a] - mus[c])) ** 2
                for a, c in itertools.permutations(range(len(ids)), 2)
            ) / (len(ids) * (len(ids) - 1))
        vals.append(att + rep_w * rep)
    return sum(vals) / len(vals)


def case(seed=0, b=2, e=3, h=5, w=6, n=3):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, e, h, w, generator=g, dtype=torch.float64),
        torch.randint(0, n + 1, (b, h, w), generator=g),
    )


def test_hand_value():
    # instance 1: 1-D values 0 and 2, mean 1, unsquared distances 1 and 1 -> 1/2 (1 + 1) = 1;
    # instance 2: one pixel -> 0. Sum over segments = 1, mean = 0.5.
    emb = torch.tensor([[[[0.0, 2.0, 5.0, 9.0]]]])
    labels = torch.tensor([[[1, 1, 2, 0]]])
    assert semiconv_loss(emb, labels)[0].item() == pytest.approx(1.0)
    assert semiconv_loss(emb, labels, segment_reduction="mean")[0].item() == pytest.approx(0.5)
    # repulsion with margin 4: means 1 and 5 are 4 apart -> 0; margin 5 -> (5 - 4)^2 = 1
    _, t = semiconv_loss(emb, labels, repulsive_weight=1.0, margin=5.0)
    assert t["repel"].item() == pytest.approx(1.0)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_matches_loop_reference(reduction):
    emb, labels = case(1)
    got, _ = semiconv_loss(
        emb, labels, segment_reduction=reduction, repulsive_weight=0.5, margin=2.0
    )
    torch.testing.assert_close(got, torch.as_tensor(reference(emb, labels, reduction, 0.5, 2.0)))


def test_gradcheck_and_permutation_and_batch():
    emb, labels = case(2, e=2, h=3, w=4)
    emb.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: semiconv_loss(x, labels, repulsive_weight=1.0)[0], (emb,)
    )
    perm = torch.tensor([0, 3, 1, 2])
    torch.testing.assert_close(
        semiconv_loss(emb, labels)[0], semiconv_loss(emb, perm[labels] + 0)[0]
    )
    singles = [semiconv_loss(emb[i : i + 1], labels[i : i + 1])[0] for i in range(2)]
    torch.testing.assert_close(semiconv_loss(emb, labels)[0], (singles[0] + singles[1]) / 2)


@pytest.mark.parametrize("n", [0, 1])
def test_zero_one_instance(n):
    emb = torch.randn(1, 3, 4, 4, requires_grad=True)
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, :2, :2] = n
    total, _ = semiconv_loss(emb, labels, repulsive_weight=1.0)
    (g,) = torch.autograd.grad(total, emb)
    assert torch.isfinite(total) and torch.isfinite(g).all()


def test_module():
    emb, labels = case(3)
    total, terms = build_loss("semiconv")(Outputs(embedding=emb), {"labels": labels})
    torch.testing.assert_close(total, torch.as_tensor(reference(emb, labels)))
    assert set(terms) == {"attract"}

"""Steered bilateral kernel loss (Novotny et al. 2018, §3.4-3.5)."""

from __future__ import annotations

import math

import pytest
import torch

from instembed.losses import bilateral_loss, build_loss
from instembed.structures import Outputs


def reference(emb, labels, seed=None, sigma=1.0, eps=1e-6):
    """Loops: softmax of logit(seed) inside each instance, kernel BCE over every pixel."""
    vals = []
    for b in range(emb.shape[0]):
        lab = labels[b].reshape(-1)
        x = emb[b].reshape(emb.shape[1], -1).T
        ids = [int(i) for i in torch.unique(lab) if i > 0]
        per = []
        for k in ids:
            idx = [i for i in range(len(lab)) if lab[i] == k]
            if seed is None:
                a = [1 / len(idx)] * len(idx)
            else:
                s = seed[b].reshape(-1)
                logits = [math.log(float(s[i]) / (1 - float(s[i]))) for i in idx]
                m = max(logits)
                z = sum(math.exp(v - m) for v in logits)
                a = [math.exp(v - m) / z for v in logits]
            psi = sum(ai * x[i] for ai, i in zip(a, idx))
            if isinstance(sigma, torch.Tensor):
                sg = sum(ai * sigma[b].reshape(-1)[i] for ai, i in zip(a, idx))
            else:
                sg = sigma
            bce = 0.0
            for v in range(len(lab)):
                kern = torch.exp(-torch.linalg.norm(x[v] - psi) / sg)
                bce = bce - (
                    torch.log(kern) if lab[v] == k else torch.log(torch.clamp(1 - kern, min=eps))
                )
            per.append(bce / len(lab))
        vals.append(sum(per) / len(per) if per else 0.0)
    return sum(vals) / len(vals)


def case(seed=0, b=2, e=3, h=4, w=4, n=3):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, e, h, w, generator=g, dtype=torch.float64),
        torch.randint(0, n + 1, (b, h, w), generator=g),
        torch.rand(b, 1, h, w, generator=g, dtype=torch.float64) * 0.9 + 0.05,
    )


def test_hand_value():
    # Instance pixels both at 0 (1-D), background pixel at 1; uniform seed weights -> Psi_k = 0,
    # sigma = 1: fg kernel 1 (loss 0); bg kernel e^-1, loss -log(1 - e^-1). Mean over 3 pixels.
    emb = torch.tensor([[[[0.0, 0.0, 1.0]]]])
    labels = torch.tensor([[[1, 1, 0]]])
    total, _ = bilateral_loss(emb, labels, sigma=1.0)
    assert total.item() == pytest.approx(-math.log(1 - math.exp(-1)) / 3, rel=1e-6)
    # sigma = 2 halves the exponent: -log(1 - e^-0.5) / 3
    total, _ = bilateral_loss(emb, labels, sigma=2.0)
    assert total.item() == pytest.approx(-math.log(1 - math.exp(-0.5)) / 3, rel=1e-6)


def test_seed_steers_the_kernel_centre():
    # A seed near 1 at one pixel puts almost all soft-argmax weight there: the kernel centre is
    # that pixel's embedding, so the loss equals the uniform loss of a one-pixel "instance" there.
    emb = torch.tensor([[[[0.0, 3.0, 7.0]]]], dtype=torch.float64)
    labels = torch.tensor([[[1, 1, 0]]])
    seed = torch.tensor([[[[1 - 1e-9, 1e-9, 0.5]]]], dtype=torch.float64)
    got, _ = bilateral_loss(emb, labels, seed=seed, sigma=2.0, eps=1e-12)
    # centre 0: pixel 1 (fg, d=3): -log e^{-1.5} = 1.5; pixel 0: 0; pixel 2 (bg, d=7):
    # -log(1 - e^{-3.5}); mean over 3
    expected = (1.5 - math.log(1 - math.exp(-3.5))) / 3
    assert got.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("with_seed", [False, True])
@pytest.mark.parametrize("sigma_map", [False, True])
def test_matches_loop_reference(with_seed, sigma_map):
    emb, labels, seed = case(1)
    sigma = torch.rand(2, 1, 4, 4, dtype=torch.float64) + 0.5 if sigma_map else 1.3
    got, _ = bilateral_loss(emb, labels, seed=seed if with_seed else None, sigma=sigma)
    ref = reference(emb, labels, seed if with_seed else None, sigma)
    torch.testing.assert_close(got, torch.as_tensor(ref, dtype=torch.float64))


def test_gradcheck_permutation_batch():
    emb, labels, seed = case(2, e=2, h=3, w=3)
    sigma = (torch.rand(2, 1, 3, 3, dtype=torch.float64) + 0.5).requires_grad_(True)
    emb.requires_grad_(True)
    seed.requires_grad_(True)
    fn = lambda e, s, sg: bilateral_loss(e, labels, seed=s, sigma=sg)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (emb, seed, sigma))
    perm = torch.tensor([0, 3, 1, 2])
    torch.testing.assert_close(
        bilateral_loss(emb, labels, seed=seed)[0], bilateral_loss(emb, perm[labels], seed=seed)[0]
    )
    singles = [bilateral_loss(emb[i : i + 1], labels[i : i + 1])[0] for i in range(2)]
    torch.testing.assert_close(bilateral_loss(emb, labels)[0], (singles[0] + singles[1]) / 2)


@pytest.mark.parametrize("n", [0, 1])
def test_zero_one_instance_and_learnable_sigma(n):
    emb = torch.randn(1, 3, 4, 4, requires_grad=True)
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, :2, :2] = n
    loss = build_loss("bilateral", sigma_init=0.7)
    total, terms = loss(Outputs(embedding=emb), {"labels": labels})
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(emb.grad).all()
    assert loss.log_sigma.grad is not None and torch.isfinite(loss.log_sigma.grad)
    if n == 1:
        assert loss.log_sigma.grad != 0

"""Lovász hinge and the spatial embedding loss (Neven et al. 2019)."""

from __future__ import annotations

import math

import pytest
import torch

from instembed.losses import build_loss, lovasz_hinge_rows, spatial_embedding_loss
from instembed.structures import Outputs, pixel_coordinates


def lovasz_reference(logits, gt):
    """Lovász extension from its definition, with Python sets for the Jaccard loss."""
    errors = [max(1 - float(f) * (1 if g else -1), 0.0) for f, g in zip(logits, gt)]
    order = sorted(range(len(errors)), key=lambda i: -errors[i])
    gt_set = {i for i, g in enumerate(gt) if g}

    def jac(m):
        return len(m) / len(gt_set | m) if (gt_set | m) else 0.0

    total, prefix = 0.0, set()
    for i in order:
        before = jac(prefix)
        prefix = prefix | {i}
        total += errors[i] * (jac(prefix) - before)
    return total


def test_lovasz_binary_errors_is_scaled_jaccard_loss():
    # gt [1, 1, 0, 0], logits [1, -1, 1, -1]: pixel 1 is a false negative and pixel 2 a false
    # positive, each with hinge error 2; Jaccard loss of M = {1, 2} is |M| / |gt or M| = 2/3;
    # positive homogeneity -> loss = 2 * 2/3.
    got = lovasz_hinge_rows(
        torch.tensor([[1.0, -1.0, 1.0, -1.0]]), torch.tensor([[1, 1, 0, 0]]).bool()
    )
    assert got.item() == pytest.approx(4 / 3)


def test_lovasz_matches_definition():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 12, generator=g, dtype=torch.float64)
    gt = torch.rand(5, 12, generator=g) > 0.5
    got = lovasz_hinge_rows(logits, gt)
    ref = torch.tensor([lovasz_reference(logits[i], gt[i]) for i in range(5)], dtype=torch.float64)
    torch.testing.assert_close(got, ref)


def reference(emb, sigma, seed, labels, scale, center="centroid", ws=(1.0, 10.0, 1.0), fgw=1.0):
    """Per-image, per-instance loops from the paper's definitions."""
    b, _, h, w = emb.shape
    u = pixel_coordinates(b, (h, w), None, scale, dtype=emb.dtype)
    vals = []
    for i in range(b):
        lab = labels[i].reshape(-1)
        e = emb[i, :2].reshape(2, -1).T
        sg = sigma[i].reshape(sigma.shape[1], -1).T
        s = seed[i].reshape(-1)
        uu = u[i].reshape(2, -1).T
        ids = [int(k) for k in torch.unique(lab) if k > 0]
        inst, smooth = [], []
        seed_sum = sum(float(s[p]) ** 2 for p in range(len(lab)) if lab[p] == 0)
        for k in ids:
            m = lab == k
            sk = sg[m].mean(0)
            ck = uu[m].mean(0) if center == "centroid" else e[m].mean(0)
            sk2 = sk.expand(2) if sk.numel() == 1 else sk
            phi = torch.exp(-(((e - ck) ** 2) / (2 * sk2**2)).sum(1))
            inst.append(lovasz_reference(2 * phi - 1, m.tolist()))
            smooth.append(float(((sg[m] - sk) ** 2).sum(1).mean()))
            seed_sum += fgw * float(((s[m] - phi[m]) ** 2).sum())
        li = sum(inst) / len(inst) if inst else 0.0
        ls = sum(smooth) / len(smooth) if smooth else 0.0
        vals.append(ws[0] * li + ws[1] * ls + ws[2] * seed_sum / len(lab))
    return sum(vals) / len(vals)


def case(seed=0, b=2, h=5, w=6, n=3, s_dims=1):
    g = torch.Generator().manual_seed(seed)
    scale = 0.25
    u = pixel_coordinates(b, (h, w), None, scale, dtype=torch.float64)
    emb = u + 0.3 * torch.randn(b, 2, h, w, generator=g, dtype=torch.float64)
    sigma = 0.5 + torch.rand(b, s_dims, h, w, generator=g, dtype=torch.float64)
    seed_map = torch.rand(b, 1, h, w, generator=g, dtype=torch.float64)
    labels = torch.randint(0, n + 1, (b, h, w), generator=g)
    return emb, sigma, seed_map, labels, scale


def test_perfect_prediction_gives_zero_and_seed_hand_value():
    # one instance (4 px); its embeddings sit on its centroid, background embeddings far away:
    # phi = 1 inside, ~0 outside -> logits +-1 -> Lovász 0. Constant sigma -> smooth 0.
    scale = 1.0
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, 1:3, 1:3] = 1
    emb = torch.full((1, 2, 4, 4), 100.0, dtype=torch.float64)
    emb[0, :, 1:3, 1:3] = 1.5  # centroid of rows/cols 1..2 = 1.5
    sigma = torch.full((1, 1, 4, 4), 0.5, dtype=torch.float64)
    seed = labels.unsqueeze(1).double()  # 1 on fg, 0 on bg
    total, t = spatial_embedding_loss(emb, sigma, seed, labels, coord_scale=scale)
    assert total.item() == pytest.approx(0.0, abs=1e-12)
    # seed 0.5 everywhere, foreground weight 3: (12 bg * 0.25 + 3 * 4 fg * 0.25) / 16 = 6 / 16
    _, t = spatial_embedding_loss(
        emb, sigma, torch.full_like(seed, 0.5), labels, coord_scale=scale, foreground_weight=3.0
    )
    assert t["seed"].item() == pytest.approx(6 / 16)


@pytest.mark.parametrize("center", ["centroid", "mean_embedding"])
@pytest.mark.parametrize("s_dims", [1, 2])
def test_matches_loop_reference(center, s_dims):
    emb, sigma, seed, labels, scale = case(1, s_dims=s_dims)
    got, _ = spatial_embedding_loss(
        emb, sigma, seed, labels, coord_scale=scale, center=center, foreground_weight=2.0
    )
    ref = reference(emb, sigma, seed, labels, scale, center, fgw=2.0)
    torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float64))


def test_gradcheck_permutation_batch():
    emb, sigma, seed, labels, scale = case(2, h=3, w=4)
    for t in (emb, sigma, seed):
        t.requires_grad_(True)
    # the seed target phi is detached (as in the paper: the seed map regresses the score), so
    # check the instance + smoothness terms w.r.t. embedding and sigma, the seed term w.r.t. seed
    fn = lambda e, s: spatial_embedding_loss(e, s, seed, labels, coord_scale=scale, w_seed=0.0)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (emb, sigma))
    fn = lambda sd: spatial_embedding_loss(emb, sigma, sd, labels, coord_scale=scale)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (seed,))
    perm = torch.tensor([0, 3, 1, 2])
    a, _ = spatial_embedding_loss(emb, sigma, seed, labels, coord_scale=scale)
    b, _ = spatial_embedding_loss(emb, sigma, seed, perm[labels], coord_scale=scale)
    torch.testing.assert_close(a, b)
    singles = [
        spatial_embedding_loss(
            emb[i : i + 1], sigma[i : i + 1], seed[i : i + 1], labels[i : i + 1], coord_scale=scale
        )[0]
        for i in range(2)
    ]
    torch.testing.assert_close(a, (singles[0] + singles[1]) / 2)


def test_crop_with_coords_origin_equals_full_image_terms():
    # The centroid uses original-image coordinates: a crop with its origin gives the same loss
    # as the same pixels placed at the same coordinates (translation by the origin).
    emb, sigma, seed, labels, scale = case(3, b=1, h=6, w=6)
    full, _ = spatial_embedding_loss(emb, sigma, seed, labels, coord_scale=scale)
    shift = torch.tensor([[4, 8]])
    emb_shift = emb + torch.tensor([4.0, 8.0], dtype=torch.float64).view(1, 2, 1, 1) * scale
    crop, _ = spatial_embedding_loss(
        emb_shift, sigma, seed, labels, coord_scale=scale, coords_origin=shift
    )
    torch.testing.assert_close(full, crop)


@pytest.mark.parametrize("n", [0, 1])
def test_zero_one_instance_module(n):
    labels = torch.zeros(1, 6, 6, dtype=torch.long)
    labels[0, 2:4, 2:5] = n
    emb = torch.randn(1, 2, 6, 6, requires_grad=True)
    sigma = torch.rand(1, 1, 6, 6).add(0.5).requires_grad_(True)
    seed = torch.rand(1, 1, 6, 6, requires_grad=True)
    total, terms = build_loss("spatial")(
        Outputs(embedding=emb, sigma=sigma, seed=seed), {"labels": labels}
    )
    grads = torch.autograd.grad(total, (emb, sigma, seed))
    assert torch.isfinite(total) and all(torch.isfinite(g).all() for g in grads)
    assert set(terms) == {"instance", "smooth", "seed"}
    if n == 0:  # only the seed term: mean of s^2
        assert total.item() == pytest.approx(float((seed.detach() ** 2).mean()), rel=1e-6)
    assert not math.isnan(total.item())

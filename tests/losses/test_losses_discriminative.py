"""Discriminative loss (De Brabandere et al. 2017): hand values, loop reference, properties."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from instembed.losses import build_loss, discriminative_loss
from instembed.structures import Outputs


def reference(emb, labels, dv, dd, alpha, beta, gamma, norm=2, background="ignore", ignore=None):
    """Slow per-image, per-instance, per-pair loops, written straight from the paper."""
    per_image = []
    for b in range(emb.shape[0]):
        lab = labels[b].clone()
        valid = torch.ones_like(lab, dtype=torch.bool) if ignore is None else ~ignore[b]
        ids = [int(i) for i in torch.unique(lab[valid])]
        if background != "cluster":
            ids = [i for i in ids if i != 0]
        mus, var = [], 0.0
        for i in ids:
            xs = emb[b][:, (lab == i) & valid].T
            mu = xs.mean(0)
            mus.append(mu)
            var = var + sum(
                torch.relu(torch.linalg.norm(mu - x, ord=norm) - dv) ** 2 for x in xs
            ) / len(xs)
        c = len(ids)
        if c == 0:
            per_image.append((0.0, 0.0, 0.0, 0.0))
            continue
        dist = 0.0
        for a, bb in itertools.permutations(range(c), 2):
            dist = dist + torch.relu(2 * dd - torch.linalg.norm(mus[a] - mus[bb], ord=norm)) ** 2
        dist = dist / (c * (c - 1)) if c > 1 else 0.0
        reg = sum(torch.linalg.norm(m, ord=norm) for m in mus) / c
        bgt = 0.0
        if background == "push":
            xb = emb[b][:, (lab == 0) & valid].T
            if len(xb):
                bgt = (
                    sum(
                        sum(
                            torch.relu(2 * dd - torch.linalg.norm(m - x, ord=norm)) ** 2 for x in xb
                        )
                        / len(xb)
                        for m in mus
                    )
                    / c
                )
        per_image.append((var / c, dist, reg, bgt))
    n = emb.shape[0]
    var, dist, reg, bgt = (sum(t[k] for t in per_image) / n for k in range(4))
    total = alpha * var + beta * dist + gamma * reg + beta * bgt
    return total, var, dist, reg, bgt


def random_case(seed=0, b=2, e=3, h=6, w=7, n=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(b, e, h, w, generator=g, dtype=dtype)
    labels = torch.randint(0, n + 1, (b, h, w), generator=g)
    return emb, labels


def test_all_pixels_at_means_and_far_apart_gives_zero():
    # two instances with constant embeddings (0,0) and (3,0), 2 delta_d = 3 -> L_var = L_dist = 0
    emb = torch.zeros(1, 2, 2, 4)
    emb[0, 0, :, 2:] = 3.0
    labels = torch.tensor([[[1, 1, 2, 2], [1, 1, 2, 2]]])
    total, t = discriminative_loss(emb, labels, delta_v=0.5, delta_d=1.5, gamma=0.0)
    assert t["var"].item() == 0.0 and t["dist"].item() == 0.0 and total.item() == 0.0
    # L_reg = mean of ||mu|| = (0 + 3) / 2
    assert t["reg"].item() == pytest.approx(1.5)


def test_hand_values_var_dist_reg():
    # Instance 1: pixels at 0 and 2 (1-D embedding), mean 1, each at distance 1;
    #   with delta_v = 0.5: [1 - 0.5]^2 = 0.25 per pixel -> var_1 = 0.25.
    # Instance 2: one pixel at 2.5 -> var_2 = 0. L_var = (0.25 + 0) / 2 = 0.125.
    # Means 1 and 2.5 are d = 1.5 apart, 2 delta_d = 2: (2 - 1.5)^2 = 0.25 for each of the
    #   2 ordered pairs, divided by C (C - 1) = 2 -> L_dist = 0.25.
    # L_reg = (1 + 2.5) / 2 = 1.75. Total = 0.125 + 0.25 + 0.001 * 1.75.
    emb = torch.tensor([[[[0.0, 2.0, 2.5, 7.0]]]])
    labels = torch.tensor([[[1, 1, 2, 0]]])
    total, t = discriminative_loss(emb, labels, delta_v=0.5, delta_d=1.0)
    assert t["var"].item() == pytest.approx(0.125)
    assert t["dist"].item() == pytest.approx(0.25)
    assert t["reg"].item() == pytest.approx(1.75)
    assert total.item() == pytest.approx(0.125 + 0.25 + 0.00175)


def test_l1_norm_hand_value():
    # 2-D, one pixel at (1, 1), other instance at (0, 0): L1 distance 2, L2 sqrt(2).
    emb = torch.tensor([[[[1.0, 0.0]], [[1.0, 0.0]]]])
    labels = torch.tensor([[[1, 2]]])
    _, t1 = discriminative_loss(emb, labels, delta_d=1.5, norm=1)
    _, t2 = discriminative_loss(emb, labels, delta_d=1.5, norm=2)
    assert t1["dist"].item() == pytest.approx((3 - 2) ** 2)
    assert t2["dist"].item() == pytest.approx((3 - math.sqrt(2)) ** 2)
    assert t1["reg"].item() == pytest.approx(1.0)  # (2 + 0) / 2


@pytest.mark.parametrize("background", ["ignore", "cluster", "push"])
@pytest.mark.parametrize("norm", [1, 2])
def test_matches_loop_reference(background, norm):
    emb, labels = random_case(seed=3)
    ignore = torch.zeros_like(labels, dtype=torch.bool)
    ignore[:, 0, :3] = True
    kw = dict(delta_v=0.3, delta_d=1.2, alpha=1.0, beta=0.7, gamma=0.01)
    total, t = discriminative_loss(
        emb, labels, norm=norm, background=background, ignore=ignore, **kw
    )
    rt, rv, rd, rr, rb = reference(
        emb,
        labels,
        kw["delta_v"],
        kw["delta_d"],
        kw["alpha"],
        kw["beta"],
        kw["gamma"],
        norm,
        background,
        ignore,
    )
    torch.testing.assert_close(t["var"], torch.as_tensor(rv, dtype=emb.dtype))
    torch.testing.assert_close(t["dist"], torch.as_tensor(rd, dtype=emb.dtype))
    torch.testing.assert_close(t["reg"], torch.as_tensor(rr, dtype=emb.dtype))
    if background == "push":
        torch.testing.assert_close(t["bg"], torch.as_tensor(rb, dtype=emb.dtype))
    torch.testing.assert_close(total, torch.as_tensor(rt, dtype=emb.dtype))


@pytest.mark.parametrize("background", ["ignore", "cluster", "push"])
def test_gradcheck_float64(background):
    emb, labels = random_case(seed=5, b=2, e=2, h=3, w=4, n=3)
    emb.requires_grad_(True)

    def fn(e):
        return discriminative_loss(e, labels, delta_v=0.2, delta_d=1.0, background=background)[0]

    assert torch.autograd.gradcheck(fn, (emb,))


def test_permuting_instance_ids_changes_nothing():
    emb, labels = random_case(seed=7, n=5)
    perm = torch.tensor([0, 4, 2, 5, 1, 3])  # background stays 0
    relabelled = perm[labels] * 3  # non-sequential ids too
    a, ta = discriminative_loss(emb, labels)
    b, tb = discriminative_loss(emb, relabelled)
    torch.testing.assert_close(a, b)
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k])


@pytest.mark.parametrize("n", [0, 1])
def test_zero_and_one_instance_finite_with_gradient(n):
    emb = torch.randn(1, 4, 5, 5, requires_grad=True)
    labels = torch.zeros(1, 5, 5, dtype=torch.long)
    if n:
        labels[0, 1:3, 1:3] = 1
    for bg in ("ignore", "cluster", "push"):
        total, t = discriminative_loss(emb, labels, background=bg)
        (g,) = torch.autograd.grad(total, emb)
        assert torch.isfinite(total) and torch.isfinite(g).all()
        assert t["dist"].item() == 0.0 or bg == "cluster"
        if n == 0 and bg != "cluster":
            assert total.item() == 0.0


def test_batch_is_mean_of_single_images():
    emb, labels = random_case(seed=9, b=3)
    labels[1] = 0  # an image without instances counts as 0 in the mean
    total, terms = discriminative_loss(emb, labels, background="push")
    singles = [
        discriminative_loss(emb[i : i + 1], labels[i : i + 1], background="push") for i in range(3)
    ]
    torch.testing.assert_close(total, sum(s[0] for s in singles) / 3)
    for k in terms:
        torch.testing.assert_close(terms[k], sum(s[1][k] for s in singles) / 3)


def test_per_class_mode_equals_separate_losses_per_class():
    # Image with classes 1 and 2; per-class loss = mean over the two classes of the loss computed
    # on each class alone (other pixels ignored). Instances of different classes are not pushed.
    emb, labels = random_case(seed=11, b=1, n=4)
    sem = torch.where(labels % 2 == 1, 1, 2)
    sem[labels == 0] = 0
    total, _ = discriminative_loss(emb, labels, semantic=sem, per_class=True)
    per = []
    for k in (1, 2):
        lab_k = torch.where(sem == k, labels, 0)
        per.append(discriminative_loss(emb, lab_k)[0])
    torch.testing.assert_close(total, (per[0] + per[1]) / 2)


def test_per_class_embedding_uses_class_slice():
    # class_embedding (B, K, E, H, W): pixels of class k use slice k. Putting the class-1 slice
    # into a plain embedding must give the same loss when only class 1 is present.
    emb5 = torch.randn(1, 3, 2, 4, 5, dtype=torch.float64)
    labels = torch.randint(0, 3, (1, 4, 5))
    sem = torch.where(labels > 0, 1, 0)
    a, _ = discriminative_loss(emb5, labels, semantic=sem, per_class=True)
    b, _ = discriminative_loss(emb5[:, 1], labels)
    torch.testing.assert_close(a, b)


def test_three_instances_hand_derived_total_with_weights_ignore_and_push():
    # 2-D embeddings of 8 pixels (one row), derived by hand from the paper's definitions:
    #   instance 1: (0, 0), (2, 0)          -> mu_1 = (1, 0), ||mu_1 - x|| = 1, 1
    #   instance 2: (0, 3), (0, 3), (0, 6)  -> mu_2 = (0, 4), ||mu_2 - x|| = 1, 1, 2
    #   instance 3: (3, 4)                  -> mu_3 = (3, 4), distance 0
    #   background (label 0) at (1, 1); an ignored pixel of instance 1 at (100, 100)
    # delta_v = 0.5, delta_d = 2 (2 delta_d = 4), alpha = 2, beta = 0.5, gamma = 0.1.
    # L_var: var_1 = ((1-.5)^2 + (1-.5)^2) / 2 = 1/4; var_2 = (1/4 + 1/4 + (2-.5)^2) / 3 = 11/12;
    #   var_3 = 0 -> L_var = (1/4 + 11/12 + 0) / 3 = 7/18.
    # L_dist: ||mu_1-mu_2|| = sqrt(17) > 4 and ||mu_1-mu_3|| = sqrt(20) > 4 give 0;
    #   ||mu_2-mu_3|| = 3 gives (4-3)^2 = 1 for each of its 2 ordered pairs; / C(C-1) = 6 -> 1/3.
    # L_reg: (||mu_1|| + ||mu_2|| + ||mu_3||) / 3 = (1 + 4 + 5) / 3 = 10/3.
    # Total = 2 * 7/18 + 0.5 * 1/3 + 0.1 * 10/3 = 14/18 + 3/18 + 6/18 = 23/18.
    pts = [(0, 0), (2, 0), (0, 3), (0, 3), (0, 6), (3, 4), (1, 1), (100, 100)]
    emb = torch.tensor(pts, dtype=torch.float64).T.reshape(1, 2, 1, 8)
    labels = torch.tensor([[[1, 1, 2, 2, 2, 3, 0, 1]]])
    ignore = torch.zeros(1, 1, 8, dtype=torch.bool)
    ignore[0, 0, 7] = True
    kw = dict(delta_v=0.5, delta_d=2.0, alpha=2.0, beta=0.5, gamma=0.1, ignore=ignore)
    total, t = discriminative_loss(emb, labels, **kw)
    assert t["var"].item() == pytest.approx(7 / 18, rel=1e-12)
    assert t["dist"].item() == pytest.approx(1 / 3, rel=1e-12)
    assert t["reg"].item() == pytest.approx(10 / 3, rel=1e-12)
    assert total.item() == pytest.approx(23 / 18, rel=1e-12)
    # background "push": the background pixel (1, 1) is 1, sqrt(10), sqrt(13) from the means;
    # L_bg = ((4-1)^2 + (4-sqrt(10))^2 + (4-sqrt(13))^2) / 3, added with weight beta.
    bg = (9 + (4 - math.sqrt(10)) ** 2 + (4 - math.sqrt(13)) ** 2) / 3
    total_p, tp = discriminative_loss(emb, labels, background="push", **kw)
    assert tp["bg"].item() == pytest.approx(bg, rel=1e-12)
    assert total_p.item() == pytest.approx(23 / 18 + 0.5 * bg, rel=1e-12)


def test_hinges_vanish_inside_the_margins_leaving_gamma_reg():
    # Three pairs of pixels at c +- (0.4, 0) around c = (0, 0), (3, 0), (0, 4): every pixel is
    # 0.4 < delta_v = 0.5 from its mean, and the means are 3, 4, 5 >= 2 delta_d = 2.2 apart, so
    # L_var = L_dist = 0 and the loss is gamma * L_reg = 0.001 * (0 + 3 + 4) / 3 exactly.
    centres = [(0.0, 0.0), (3.0, 0.0), (0.0, 4.0)]
    pts = [(cy + s, cx) for cy, cx in centres for s in (-0.4, 0.4)]
    emb = torch.tensor(pts, dtype=torch.float64).T.reshape(1, 2, 1, 6)
    labels = torch.tensor([[[1, 1, 2, 2, 3, 3]]])
    total, t = discriminative_loss(emb, labels, delta_v=0.5, delta_d=1.1)
    assert t["var"].item() == 0.0 and t["dist"].item() == 0.0
    assert t["reg"].item() == pytest.approx(7 / 3, rel=1e-12)
    assert total.item() == pytest.approx(0.001 * 7 / 3, rel=1e-12)
    # pulling instance 1's pixels out to distance 0.9 costs (0.9 - 0.5)^2 = 0.16 each:
    # var_1 = 0.16, L_var = 0.16 / 3; the means (hence dist, reg) do not move
    emb[0, 0, 0, 0], emb[0, 0, 0, 1] = -0.9, 0.9
    total, t = discriminative_loss(emb, labels, delta_v=0.5, delta_d=1.1)
    assert t["var"].item() == pytest.approx(0.16 / 3, rel=1e-12)
    assert t["dist"].item() == 0.0
    assert total.item() == pytest.approx(0.16 / 3 + 0.001 * 7 / 3, rel=1e-12)


def test_module_reads_outputs_and_batch():
    emb, labels = random_case(seed=2)
    loss = build_loss("discriminative", delta_v=0.3, delta_d=1.0)
    ignore = labels == 2
    total, terms = loss(Outputs(embedding=emb), {"labels": labels, "ignore": ignore})
    ref, _ = discriminative_loss(emb, labels, delta_v=0.3, delta_d=1.0, ignore=ignore)
    torch.testing.assert_close(total, ref)
    assert set(terms) == {"var", "dist", "reg"}


def test_errors_name_the_problem():
    emb, labels = random_case()
    with pytest.raises(ValueError, match="background must be one of"):
        discriminative_loss(emb, labels, background="own")
    with pytest.raises(ValueError, match="embedding must be"):
        discriminative_loss(emb[..., :3], labels)
    with pytest.raises(ValueError, match="integer dtype"):
        discriminative_loss(emb, labels.float())
    with pytest.raises(ValueError, match="norm must be 1 or 2"):
        discriminative_loss(emb, labels, norm=3)

"""Spatial embedding loss on overlapping ground truth (``overlaps="full"``): a per-instance loop
from the module docstring's definitions, the identities with ``"ignore"``, and the batch path
from a mask stack through the dataset's item and collate into the loss module."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instembed.data.dataset import collate, sample_to_item
from instembed.data.sample import Sample
from instembed.losses import build_loss, lovasz_hinge_rows, spatial_embedding_loss
from instembed.structures import Outputs, pixel_coordinates

SCALE = 0.25


def stack_case(seed=0, h=6, w=7):
    """Two overlapping rectangles and a third apart; the label image the dataset builds from
    them (overlap -> 0 and ignored); random embedding / sigma / seed."""
    masks = torch.zeros(3, h, w, dtype=torch.bool)
    masks[0, 1:4, 1:5] = True
    masks[1, 2:6, 3:6] = True  # overlaps mask 0 on rows 2-3, cols 3-4 (4 px)
    masks[2, 0:2, 5:7] = True
    masks[2, 1, 5] = False  # keep 2 apart from 0 and 1 (0 reaches col 4 only)
    cover = masks.sum(0)
    labels = torch.zeros(1, h, w, dtype=torch.long)
    for k in range(3):
        labels[0][masks[k]] = k + 1
    labels[0][cover > 1] = 0
    ignore = (cover > 1)[None]
    g = torch.Generator().manual_seed(seed)
    u = pixel_coordinates(1, (h, w), None, SCALE, dtype=torch.float64)
    emb = u + 0.3 * torch.randn(1, 2, h, w, generator=g, dtype=torch.float64)
    sigma = 0.5 + torch.rand(1, 1, h, w, generator=g, dtype=torch.float64)
    seed_map = torch.rand(1, 1, h, w, generator=g, dtype=torch.float64)
    return masks, labels, ignore, emb, sigma, seed_map


def full_reference(masks, labels, emb, sigma, seed, fgw):
    """One image, every pixel valid (one loop per instance): bandwidth and centroid over the pixels of mask k alone
    (labels == k), Lovász against the whole mask k, seed target = max phi over a pixel's masks."""
    lab = labels[0].reshape(-1)
    u = pixel_coordinates(1, labels.shape[-2:], None, SCALE, dtype=emb.dtype)[0].reshape(2, -1).T
    e = emb[0, :2].reshape(2, -1).T
    sg = sigma[0].reshape(1, -1).T
    s = seed[0].reshape(-1)
    inst, smooth = [], []
    target = torch.zeros_like(s)
    for k in range(masks.shape[0]):
        own = lab == k + 1
        whole = masks[k].reshape(-1)
        sk = sg[own].mean(0)
        ck = u[own].mean(0)
        phi = torch.exp(-(((e - ck) ** 2) / (2 * sk.expand(2) ** 2)).sum(1))
        # the Lovász hinge itself is checked against its definition in test_losses_spatial_lovasz
        inst.append(float(lovasz_hinge_rows((2 * phi - 1)[None], whole[None])[0]))
        smooth.append(float(((sg[own] - sk) ** 2).sum(1).mean()))
        target = torch.where(whole, torch.maximum(target, phi), target)
    fg = masks.reshape(masks.shape[0], -1).any(0)
    seed_sum = float((s[~fg] ** 2).sum()) + fgw * float(((s[fg] - target[fg]) ** 2).sum())
    return sum(inst) / len(inst) + 10.0 * sum(smooth) / len(smooth) + seed_sum / len(lab)


def test_full_matches_the_loop_reference():
    masks, labels, ignore, emb, sigma, seed = stack_case(1)
    got, _ = spatial_embedding_loss(
        emb,
        sigma,
        seed,
        labels,
        ignore=ignore,
        coord_scale=SCALE,
        foreground_weight=2.0,
        overlaps="full",
        instance_masks=[masks],
    )
    ref = full_reference(masks, labels, emb, sigma, seed, fgw=2.0)
    torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float64))


def test_overlap_pixels_count_only_in_full_mode():
    masks, labels, ignore, emb, sigma, seed = stack_case(2)
    moved = emb.clone()
    moved[..., 2:4, 3:5] += 0.7  # the four overlap pixels only
    kw = dict(ignore=ignore, coord_scale=SCALE, instance_masks=[masks])
    a, _ = spatial_embedding_loss(emb, sigma, seed, labels, **kw)
    b, _ = spatial_embedding_loss(moved, sigma, seed, labels, **kw)
    torch.testing.assert_close(a, b)  # "ignore": those pixels are left out of every term
    c, _ = spatial_embedding_loss(emb, sigma, seed, labels, overlaps="full", **kw)
    d, _ = spatial_embedding_loss(moved, sigma, seed, labels, overlaps="full", **kw)
    assert abs(float(c - d)) > 1e-3


def test_full_equals_ignore_without_overlaps():
    masks, labels, _, emb, sigma, seed = stack_case(3)
    masks[1, 2:4, 3:5] = False  # mask 1 gives the overlap up: disjoint masks
    labels = torch.zeros_like(labels)
    for k in range(3):
        labels[0][masks[k]] = k + 1
    a, ta = spatial_embedding_loss(emb, sigma, seed, labels, coord_scale=SCALE)
    b, tb = spatial_embedding_loss(
        emb, sigma, seed, labels, coord_scale=SCALE, overlaps="full", instance_masks=[masks]
    )
    assert torch.equal(a, b) and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_bad_options_name_the_argument():
    masks, labels, ignore, emb, sigma, seed = stack_case()
    with pytest.raises(ValueError, match="overlaps must be"):
        spatial_embedding_loss(emb, sigma, seed, labels, overlaps="union")
    with pytest.raises(ValueError, match="needs the batch's instance_masks"):
        spatial_embedding_loss(emb, sigma, seed, labels, overlaps="full")
    with pytest.raises(ValueError, match=r"instance_masks\[0\]: expected \(N, 6, 7\)"):
        spatial_embedding_loss(
            emb, sigma, seed, labels, overlaps="full", instance_masks=[masks[:, :5]]
        )


def test_module_reads_the_mask_stack_of_a_batch():
    masks, labels, ignore, emb, sigma, seed = stack_case(4)
    sample = Sample(image=np.zeros((1, 6, 7), np.float32), instances=masks.numpy())
    batch = collate([sample_to_item(sample)])
    assert torch.equal(batch["labels"], labels) and torch.equal(batch["ignore"], ignore)
    out = Outputs(embedding=emb, sigma=sigma, seed=seed)
    got, _ = build_loss("spatial", coord_scale=SCALE, overlaps="full")(out, batch)
    ref = full_reference(masks, labels, emb, sigma, seed, fgw=1.0)
    torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float64))
    plain, _ = build_loss("spatial", coord_scale=SCALE)(out, batch)
    assert abs(float(got - plain)) > 1e-3

"""Whole-image object centres (instembed.data.centres): the medoid against a brute-force
reference, the approximate medoid within its bound, centres carried through crops / flips /
rotations / scaling, and the spatial loss with given centres against a hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from instembed.data.centres import approx_medoid, medoid, object_centres, with_centres
from instembed.data.dataset import InstanceDataset, collate, sample_to_item
from instembed.data.sample import Sample
from instembed.data.transforms import (
    Compose,
    ElasticDeform,
    RandomCrop,
    RandomFlip,
    RandomRot90,
    flip,
    relabel,
    rescale,
    rot90,
)
from instembed.losses.lovasz import lovasz_hinge_rows
from instembed.losses.spatial import spatial_embedding_loss


def brute_medoid(mask: np.ndarray) -> tuple[np.ndarray, float]:
    """Slow reference: loop over every pixel pair; returns (argmin pixel, min mean distance)."""
    pts = [tuple(p) for p in np.argwhere(mask)]
    best, best_cost = None, math.inf
    for p in pts:
        cost = sum(math.hypot(p[0] - q[0], p[1] - q[1]) for q in pts) / len(pts)
        if cost < best_cost - 1e-9:
            best, best_cost = p, cost
    return np.array(best, float), best_cost


def mean_dist(mask: np.ndarray, p) -> float:
    pts = np.argwhere(mask).astype(float)
    return float(np.sqrt(((pts - np.asarray(p, float)) ** 2).sum(1)).mean())


def c_shape(h: int = 40, w: int = 40, t: int = 5) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[5 : h - 5, 5 : 5 + t] = True  # spine
    m[5 : 5 + t, 5 : w - 5] = True  # top arm
    m[h - 5 - t : h - 5, 5 : w - 5] = True  # bottom arm
    return m


def test_medoid_of_c_shape_is_on_the_object_and_the_centroid_is_not():
    m = c_shape()
    ref, ref_cost = brute_medoid(m)
    got = medoid(m)
    np.testing.assert_array_equal(got, ref)
    assert m[int(got[0]), int(got[1])]
    # by symmetry of the C about row 19.5 the medoid sits on the spine (x in 5..9), mid-height
    assert 5 <= got[1] <= 9 and 17 <= got[0] <= 22
    cy, cx = np.argwhere(m).mean(0)
    assert not m[int(round(cy)), int(round(cx))]  # centroid (19.5, 16.4) lies in the gap
    assert mean_dist(m, got) == pytest.approx(ref_cost)


@pytest.mark.parametrize("seed", range(4))
def test_medoid_matches_brute_force_on_random_blobs(seed):
    rng = np.random.default_rng(seed)
    m = rng.random((14, 17)) < 0.35
    m[7, 8] = True
    ref, ref_cost = brute_medoid(m)
    got = medoid(m)
    assert mean_dist(m, got) == pytest.approx(ref_cost, abs=1e-9)
    np.testing.assert_array_equal(got, ref)  # ties broken by row-major order in both


@pytest.mark.parametrize("stride", [2, 3, 4])
def test_approx_medoid_is_within_its_bound(stride):
    bound = 3 * (stride - 1) * math.sqrt(2)
    for shape_seed in range(3):
        r = np.random.default_rng(shape_seed)
        m = np.zeros((60, 60), bool)
        # a thick random polyline (worm-like)
        y, x = 30.0, 10.0
        ang = r.uniform(-0.5, 0.5)
        for _ in range(70):
            ang += r.uniform(-0.25, 0.25)
            y, x = y + np.sin(ang) * 0.7, x + np.cos(ang) * 0.7
            yy, xx = np.ogrid[:60, :60]
            m |= (yy - y) ** 2 + (xx - x) ** 2 <= 6
        got = approx_medoid(m, stride)
        assert m[int(got[0]), int(got[1])]  # an object pixel
        best = mean_dist(m, medoid(m))
        gap = mean_dist(m, got) - best
        assert -1e-9 <= gap <= bound
    # stride 1 is the exact medoid
    m = c_shape()
    np.testing.assert_array_equal(approx_medoid(m, 1), medoid(m))


def test_object_centres_label_image_and_stack():
    lab = np.zeros((12, 12), np.int32)
    lab[1:4, 1:4] = 1  # 3x3 square: medoid = its middle (2, 2)
    lab[6:11, 8] = 3  # vertical bar rows 6..10: medoid (8, 8); id 2 absent
    c = object_centres(lab, "medoid")
    np.testing.assert_array_equal(c[0], [2, 2])
    assert np.isnan(c[1]).all()
    np.testing.assert_array_equal(c[2], [8, 8])
    stack = np.stack([lab == 1, lab == 3, np.zeros_like(lab, bool)])
    s = object_centres(stack, "image_centroid")
    np.testing.assert_allclose(s[:2], [[2, 2], [8, 8]])
    assert np.isnan(s[2]).all()
    with pytest.raises(ValueError, match="centre method"):
        object_centres(lab, "centroid")


# --------------------------------------------------------------------------- carried centres
def worm_sample(as_stack: bool = False) -> Sample:
    h, w = 48, 64
    lab = np.zeros((h, w), np.int32)
    lab[c_shape(40, 40).nonzero()] = 1  # C at rows 0..39, cols 0..39
    lab[42:46, 45:60] = 2
    img = np.random.default_rng(0).random((1, h, w)).astype(np.float32)
    if as_stack:
        return Sample(img, np.stack([lab == 1, lab == 2]))
    return Sample(img, lab)


def local_centres(sample: Sample) -> np.ndarray:
    return sample_to_item(sample)["centres"].numpy().astype(float)


def kept_rows(s: Sample) -> np.ndarray:
    """Rows (0-based) of the instances still present in a transformed, not relabelled sample."""
    if s.is_stack:
        return np.flatnonzero(s.instances.reshape(len(s.instances), -1).any(1))
    ids = np.unique(s.instances)
    return ids[ids > 0] - 1


def crop_at(s: Sample, y0: int, x0: int, h: int, w: int) -> Sample:
    """A crop at a chosen position, with the frame bookkeeping of RandomCrop."""
    (oy, ox) = s.meta.get("coords_origin", (0, 0))
    meta = {**s.meta, "coords_origin": (oy + y0, ox + x0), "frame_shape": s.shape}
    return Sample(
        s.image[:, y0 : y0 + h, x0 : x0 + w], s.instances[..., y0 : y0 + h, x0 : x0 + w], meta=meta
    )


def test_crop_keeps_the_whole_image_centre_in_crop_coordinates():
    s = with_centres(worm_sample(), "medoid")
    full = object_centres(s.instances, "medoid")  # (2, 2) in image pixels
    # crop (rows 20..44, cols 3..35): cuts the C (its spine rows 5..34, arms) -> another
    # centroid and medoid than the whole worm has
    out = RandomCrop((25, 33))(s, np.random.default_rng(0))
    (y0, x0) = out.meta["coords_origin"]
    got = local_centres(out)
    ids = np.unique(out.instances)
    ids = ids[ids > 0]
    np.testing.assert_allclose(got, full[ids - 1] - [y0, x0])
    # the per-crop medoid of the cut worm differs from the carried whole-image one
    cut = relabel(out).instances == 1
    assert np.abs(medoid(cut) - got[0]).max() > 1


@pytest.mark.parametrize("as_stack", [False, True])
@pytest.mark.parametrize("hflip,vflip", [(True, False), (False, True), (True, True)])
def test_centres_follow_flips_exactly(as_stack, hflip, vflip):
    """The centre is an object pixel (the medoid): after crop + flip it must still mark the same
    pixel of the same object, which we check by flipping a one-hot marker image alongside."""
    s = worm_sample(as_stack)
    c = object_centres(s.instances, "medoid")
    marker = np.zeros((len(c), *s.shape), np.float32)
    for k, (y, x) in enumerate(c):
        marker[k, int(y), int(x)] = 1
    s = with_centres(Sample(marker, s.instances), "medoid", centres=c)
    for crop_at_yx in [(0, 0), (10, 20), (23, 31)]:
        out = flip(crop_at(s, *crop_at_yx, 25, 33), horizontal=hflip, vertical=vflip)
        item = sample_to_item(out)
        got = item["centres"].numpy()
        kept = kept_rows(out)  # original row of each item row (ids are not renumbered before)
        assert len(got) == len(kept) >= 1
        for j, k in enumerate(kept):
            ys, xs = np.nonzero(out.image[k])
            if len(ys):  # the marker pixel is inside this crop: it sits at the carried centre
                np.testing.assert_allclose(got[j], [ys[0], xs[0]])
        oy, ox = item["coords_origin"].tolist()
        full = flip(s, horizontal=hflip, vertical=vflip)
        np.testing.assert_allclose(got + [oy, ox], full.meta["centres"][kept])


@pytest.mark.parametrize("k", [1, 2, 3])
def test_centres_follow_rot90_and_rescale(k):
    s = worm_sample()
    c = object_centres(s.instances, "medoid")
    marker = np.zeros((2, *s.shape), np.float32)
    for i, (y, x) in enumerate(c):
        marker[i, int(y), int(x)] = 1
    s = with_centres(Sample(marker, s.instances), "medoid", centres=c)
    out = rot90(RandomCrop((30, 50))(s, np.random.default_rng(k)), k)
    got = local_centres(out)
    seen = 0
    for j, i in enumerate(kept_rows(out)):
        ys, xs = np.nonzero(out.image[i])
        if len(ys):
            np.testing.assert_allclose(got[j], [ys[0], xs[0]])
            seen += 1
    assert seen >= 1
    # scaling by 2 (pixel-centre convention): local a -> 2 a + 0.5
    big = rescale(s, 2.0)
    np.testing.assert_allclose(local_centres(big), 2 * c + 0.5)


def test_elastic_moves_centre_with_the_pixels():
    s = worm_sample()
    c = object_centres(s.instances, "medoid")
    marker = np.zeros((2, *s.shape), np.float32)
    for i, (y, x) in enumerate(c):
        marker[i, int(y), int(x)] = 1
    s = with_centres(Sample(marker, s.instances), "medoid", centres=c)
    out = ElasticDeform(alpha=4.0, sigma=6.0, p=1.0)(s, np.random.default_rng(3))
    got = local_centres(out)
    for i in range(2):  # the interpolated marker's peak moves with the pixels (within 1 px)
        peak = np.unravel_index(np.argmax(out.image[i]), s.shape)
        assert np.abs(got[i] - peak).max() <= 1.0
    assert np.abs(got - c).max() > 0.1  # it did move


def test_dataset_computes_centres_once_and_batches_them():
    base = worm_sample()
    calls = []

    class Counting(list):
        def __getitem__(self, i):
            calls.append(i)
            return super().__getitem__(i)

    t = Compose([RandomCrop((24, 32)), RandomFlip(), RandomRot90()])
    ds = InstanceDataset(Counting([base]), transform=t, seed=1, center="medoid")
    full = object_centres(base.instances, "medoid")
    for e in range(3):
        ds.set_epoch(e)
        item = ds[0]
        assert item["centres"].shape == (item["instance_masks"].shape[0], 2)
    assert list(ds._centres) == [0] and len(calls) == 3
    np.testing.assert_allclose(ds._centres[0], full)
    batch = collate([ds[0], ds[0]])
    assert isinstance(batch["centres"], list) and len(batch["centres"]) == 2
    plain = InstanceDataset([base], transform=t, seed=1)
    assert "centres" not in plain[0]
    with pytest.raises(ValueError, match="center must be one of"):
        InstanceDataset([base], center="middle")


# --------------------------------------------------------------------------- loss
def test_spatial_loss_with_given_centres_matches_hand_computation():
    """1 x 1 x 4 image, two instances {0, 1} and {2}, one background-free row. Embedding = pixel
    coordinate (no offsets, coord_scale 1), sigma 1, seed 0.5; given centres x = 0 (instance 1)
    and x = 2.5 (instance 2, off its pixel). Coordinates origin (0, 3)."""
    emb = torch.zeros(1, 2, 1, 4)
    emb[0, 1, 0] = torch.arange(4.0) + 3  # x coordinate with origin x0 = 3; y = 0
    emb[0, 0, 0] = 0.0
    labels = torch.tensor([[[1, 1, 2, 0]]])
    sigma = torch.ones(1, 1, 1, 4)
    seed = torch.full((1, 1, 1, 4), 0.5)
    centres = [torch.tensor([[0.0, 0.0], [0.0, 2.5]])]
    origin = torch.tensor([[0, 3]])
    total, terms = spatial_embedding_loss(
        emb, sigma, seed, labels, coords_origin=origin, coord_scale=1.0, centres=centres
    )
    # by hand: pixel x (crop) 0..3, centres (crop) 0 and 2.5, phi = exp(-(x - c)^2 / 2)
    x = torch.arange(4.0)
    phi1 = torch.exp(-((x - 0.0) ** 2) / 2)
    phi2 = torch.exp(-((x - 2.5) ** 2) / 2)
    gt = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 0]], dtype=torch.bool)
    inst = lovasz_hinge_rows(torch.stack([2 * phi1 - 1, 2 * phi2 - 1]), gt).mean()
    own = torch.tensor([phi1[0], phi1[1], phi2[2], 0.0])
    seed_t = ((0.5 - own[:3]) ** 2).sum() + 0.5**2
    seed_t = seed_t / 4
    assert terms["smooth"] == pytest.approx(0.0)
    assert terms["instance"].item() == pytest.approx(inst.item(), rel=1e-6)
    assert terms["seed"].item() == pytest.approx(seed_t.item(), rel=1e-6)
    assert total.item() == pytest.approx(inst.item() + seed_t.item(), rel=1e-6)
    # the hand value with the centroids instead (x = 0.5 and 2) differs, and is what the loss
    # gives without centres (today's behaviour)
    _, plain = spatial_embedding_loss(
        emb, sigma, seed, labels, coords_origin=origin, coord_scale=1.0
    )
    phi1c, phi2c = torch.exp(-((x - 0.5) ** 2) / 2), torch.exp(-((x - 2.0) ** 2) / 2)
    inst_c = lovasz_hinge_rows(torch.stack([2 * phi1c - 1, 2 * phi2c - 1]), gt).mean()
    assert plain["instance"].item() == pytest.approx(inst_c.item(), rel=1e-6)
    assert abs(plain["instance"].item() - terms["instance"].item()) > 1e-3


def test_spatial_loss_rejects_missing_centre_rows():
    emb = torch.zeros(1, 2, 1, 3)
    labels = torch.tensor([[[1, 2, 0]]])
    with pytest.raises(ValueError, match="no centre row"):
        spatial_embedding_loss(
            emb,
            torch.ones(1, 1, 1, 3),
            torch.zeros(1, 1, 1, 3),
            labels,
            centres=[torch.zeros(1, 2)],
        )


def test_crop_then_flip_equals_flip_then_mirrored_crop_for_centres():
    s = with_centres(worm_sample(), "approx_medoid")
    H, W = s.shape
    y0, x0, h, w = 7, 11, 25, 33
    a = flip(crop_at(s, y0, x0, h, w), horizontal=True, vertical=True)
    b = crop_at(flip(s, horizontal=True, vertical=True), H - y0 - h, W - x0 - w, h, w)
    np.testing.assert_array_equal(a.instances, b.instances)
    assert a.meta["coords_origin"] == b.meta["coords_origin"]
    np.testing.assert_allclose(local_centres(a), local_centres(b))


def test_config_center_reaches_the_dataset_and_the_loss_reads_the_batch():
    from types import SimpleNamespace

    from instembed.engine.build import build_datasets
    from instembed.engine.config import config_from_dict
    from instembed.losses.spatial import SpatialEmbeddingLoss

    cfg = config_from_dict(
        {"data": {"synth": "dot_grid", "n_train": 2, "n_val": 1, "size": [32, 32]}}
    )
    assert "centres" not in build_datasets(cfg)[0][0]  # default: unchanged items
    cfg.data.center = "medoid"
    train, _ = build_datasets(cfg)
    items = [train[0], train[1]]
    for it in items:
        assert it["centres"].shape == (it["instance_masks"].shape[0], 2)
    batch = collate(items)
    b, (h, w) = 2, batch["labels"].shape[-2:]
    g = torch.Generator().manual_seed(0)
    out = SimpleNamespace(
        embedding=torch.randn(b, 2, h, w, generator=g) * 0.1,
        offset=None,
        sigma=torch.full((b, 1, h, w), 0.1),
        seed=torch.rand(b, 1, h, w, generator=g),
    )
    loss = SpatialEmbeddingLoss(coord_scale=1 / 16)
    _, terms = loss(out, batch)
    _, ref = spatial_embedding_loss(
        out.embedding,
        out.sigma,
        out.seed,
        batch["labels"],
        ignore=batch["ignore"],
        coords_origin=batch["coords_origin"],
        coord_scale=1 / 16,
        centres=batch["centres"],
    )
    assert terms["instance"].item() == pytest.approx(ref["instance"].item())

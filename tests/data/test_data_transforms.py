"""Augmentation properties: exact ids, areas, image/label alignment (marker pattern), coords."""

import numpy as np
import pytest
import torch

from instembed.data import transforms as T
from instembed.data.dataset import InstanceDataset, collate, sample_to_item
from instembed.data.sample import Sample
from instembed.data.synth import make_samples
from instembed.structures import IGNORE_INDEX


def marker_sample(h=37, w=53, seed=0) -> Sample:
    """Image channel 0 = y, channel 1 = x of each pixel (a marker pattern: every pixel says
    where it came from); labels: random rectangles with ids 3, 7, 12, ... (non-sequential)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    labels = np.zeros((h, w), np.int32)
    ids = [3, 7, 12, 20, 21]
    for k in ids:
        y0, x0 = rng.integers(0, h - 8), rng.integers(0, w - 8)
        labels[y0 : y0 + rng.integers(3, 9), x0 : x0 + rng.integers(3, 9)] = k
    semantic = (labels > 0).astype(np.int64) + 1
    classes = np.arange(1, 22) * 10  # classes[k - 1] describes id k (ids are not renumbered)
    return Sample(np.stack([yy, xx]), labels, semantic=semantic, classes=classes)


def source_of(out: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Decode the marker: the input pixel (y, x) each output pixel came from."""
    return np.rint(out.image[0]).astype(int), np.rint(out.image[1]).astype(int)


@pytest.mark.parametrize(
    "t",
    [
        T.RandomCrop((20, 30)),
        T.RandomFlip(1.0, 0.0),
        T.RandomFlip(0.0, 1.0),
        T.RandomFlip(1.0, 1.0),
        T.RandomRot90((1,)),
        T.RandomRot90((2,)),
        T.RandomRot90((3,)),
        T.Compose([T.RandomCrop(25), T.RandomFlip(), T.RandomRot90()], relabel=False),
    ],
    ids=repr,
)
def test_exact_transforms_keep_image_and_labels_aligned(t):
    s = marker_sample()
    for seed in range(5):
        out = t(s, np.random.default_rng(seed))
        sy, sx = source_of(out)
        # every output label / semantic pixel equals the input one at the pixel it came from
        assert np.array_equal(out.instances, s.instances[sy, sx])
        assert np.array_equal(out.semantic, s.semantic[sy, sx])
        assert set(np.unique(out.instances)) <= set(np.unique(s.instances))


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("hv", [(False, False), (True, False), (False, True), (True, True)])
def test_flips_and_rot90_preserve_every_instance_area(k, hv):
    s = marker_sample(seed=4)
    out = T.rot90(T.flip(s, *hv), k)
    # a flip/rotation is a permutation of pixels: per-id areas are unchanged
    assert np.array_equal(np.bincount(out.instances.ravel()), np.bincount(s.instances.ravel()))
    assert out.shape == (s.shape if k % 2 == 0 else s.shape[::-1])


def test_crop_then_flip_equals_flip_then_crop_with_same_coords():
    """The coordinate invariant: crop->flip/rot gives the same pixels and the same coords_origin
    as flip/rot of the full image followed by the crop at the mapped position."""
    s = marker_sample(h=40, w=60)
    crop = T.RandomCrop((16, 24))
    for seed in range(6):
        rng = np.random.default_rng(seed)
        c = crop(s, rng)
        (y0, x0), _ = T.frame(c)
        for k in range(4):
            for hv in [(False, False), (True, False), (False, True)]:
                a = T.rot90(T.flip(c, *hv), k)  # crop first
                full = T.rot90(T.flip(s, *hv), k)  # transform the whole frame first
                (ay, ax), frame_shape = T.frame(a)
                assert frame_shape == full.shape
                h, w = a.shape
                b_img = full.image[:, ay : ay + h, ax : ax + w]
                assert np.array_equal(a.image, b_img)
                assert np.array_equal(a.instances, full.instances[ay : ay + h, ax : ax + w])
        # and coords_origin of the plain crop is where the marker says it is
        assert (c.image[0, 0, 0], c.image[1, 0, 0]) == (y0, x0)


def test_rescale_labels_are_nearest_and_image_is_linear():
    s = marker_sample(h=30, w=40, seed=2)
    for factor in (0.5, 0.75, 1.6):
        out = T.rescale(s, factor)
        nh, nw = round(30 * factor), round(40 * factor)
        assert out.shape == (nh, nw)
        # slow reference: output pixel centre i+0.5 sits at (i+0.5)*H/nh in input pixel units;
        # its nearest input pixel is floor of that
        for i in range(nh):
            for j in range(nw):
                yi = min(int(np.floor((i + 0.5) * 30 / nh)), 29)
                xj = min(int(np.floor((j + 0.5) * 40 / nw)), 39)
                assert out.instances[i, j] == s.instances[yi, xj]
        # linear interpolation of the y ramp gives the sampled position itself (interior rows)
        ys = (np.arange(nh) + 0.5) * 30 / nh - 0.5
        inner = (ys >= 0) & (ys <= 29)
        assert np.allclose(out.image[0][inner, 0], ys[inner], atol=1e-4)
        assert set(np.unique(out.instances)) <= set(np.unique(s.instances))
        assert T.frame(out)[1] == (nh, nw)


def test_elastic_labels_follow_the_image_and_stay_a_subset():
    s = marker_sample(h=48, w=48, seed=3)
    out = T.ElasticDeform(alpha=5, sigma=6, p=1.0)(s, np.random.default_rng(0))
    assert set(np.unique(out.instances)) <= set(np.unique(s.instances))
    # the image marker holds the (fractional) source position; labels are the nearest pixel's
    src_y, src_x = out.image[0], out.image[1]
    # pixels pulled from outside the image are zeroed and ignored
    inside = ~out.ignore if out.ignore is not None else np.ones((48, 48), bool)
    yy, xx = np.mgrid[0:48, 0:48]
    moved = np.maximum(np.abs(src_y - yy), np.abs(src_x - xx))[inside]
    assert 0.5 < moved.max() <= 5 + 1e-4  # it did deform, by at most alpha per axis
    iy = np.clip(np.floor(src_y + 0.5).astype(int), 0, 47)
    ix = np.clip(np.floor(src_x + 0.5).astype(int), 0, 47)
    assert np.array_equal(out.instances[inside], s.instances[iy, ix][inside])


def test_crop_min_instances_and_padding():
    s = Sample(np.zeros((1, 100, 100), np.float32), np.zeros((100, 100), np.int32))
    s.instances[90:95, 5:10] = 1  # one small instance in a corner
    crop = T.RandomCrop(20, min_instances=1, tries=3)
    for seed in range(10):
        out = crop(s, np.random.default_rng(seed))
        assert out.num_instances == 1  # found by the fallback centred on an instance pixel
    small = Sample(np.ones((1, 10, 12), np.float32), np.ones((10, 12), np.int32))
    out = T.RandomCrop((16, 16))(small, np.random.default_rng(0))
    assert out.shape == (16, 16)
    assert out.ignore[10:].all() and out.ignore[:, 12:].all() and not out.ignore[:10, :12].any()
    assert out.image[0, 10:].sum() == 0 and (out.instances[10:] == 0).all()


def test_relabel_keeps_classes_in_step():
    s = marker_sample()
    out = T.relabel(T.RandomCrop((15, 15))(s, np.random.default_rng(1)))
    old_ids = np.unique(T.RandomCrop((15, 15))(s, np.random.default_rng(1)).instances)
    old_ids = old_ids[old_ids > 0]
    assert np.array_equal(np.unique(out.instances)[1:], np.arange(1, len(old_ids) + 1))
    assert np.array_equal(out.classes, old_ids * 10)  # class of old id k was 10 * k


def test_intensity_and_colour_jitter_leave_labels_alone():
    s = make_samples("street", 1, size=(32, 32), seed=0)[0]
    for t in (T.IntensityJitter(noise=0.05, gamma=(0.8, 1.2)), T.ColorJitter()):
        out = t(s, np.random.default_rng(0))
        assert out.instances is s.instances and out.semantic is s.semantic
        assert not np.array_equal(out.image, s.image) and out.image.dtype == np.float32


def test_build_transforms_from_config():
    c = T.build_transforms([{"name": "crop", "size": [8, 8]}, "flip", "rot90"])
    assert [type(t).__name__ for t in c.transforms] == ["RandomCrop", "RandomFlip", "RandomRot90"]
    with pytest.raises(ValueError, match="unknown transform 'blur'"):
        T.build_transforms(["blur"])


# ------------------------------------------------------------------------------ dataset


def test_dataset_item_contract_for_a_stack_with_overlaps():
    masks = np.zeros((2, 8, 8), bool)
    masks[0, 2:5, 1:7] = True  # 3 x 6 = 18 px
    masks[1, 1:7, 3:5] = True  # 6 x 2 = 12 px; overlap rows 2-4, cols 3-4 = 3 x 2 = 6 px
    s = Sample(np.zeros((1, 8, 8), np.float32), masks, classes=np.array([4, 9]))
    item = sample_to_item(s)
    assert item["labels"].dtype == torch.int64 and item["ignore"].dtype == torch.bool
    assert int(item["ignore"].sum()) == 6
    assert int((item["labels"] == 1).sum()) == 18 - 6
    assert int((item["labels"] == 2).sum()) == 12 - 6
    assert item["coords_origin"].tolist() == [0, 0]
    assert item["classes"].tolist() == [4, 9]


def test_dataset_is_deterministic_with_a_seed_and_collates():
    samples = make_samples("touching_cells", 6, size=(48, 48), seed=0)
    tf = T.Compose([T.RandomCrop(32), T.RandomFlip(), T.RandomRot90()])
    a = InstanceDataset(samples, transform=tf, seed=5)
    b = InstanceDataset(samples, transform=tf, seed=5)
    for i in range(len(a)):
        assert torch.equal(a[i]["image"], b[i]["image"])
        assert torch.equal(a[i]["coords_origin"], b[i]["coords_origin"])
    a.set_epoch(1)
    assert any(not torch.equal(a[i]["image"], b[i]["image"]) for i in range(len(a)))
    batch = collate([a[i] for i in range(4)])
    assert batch["image"].shape == (4, 1, 32, 32)
    assert batch["labels"].shape == (4, 32, 32) and batch["semantic"].dtype == torch.int64
    assert isinstance(batch["classes"], list) and len(batch["classes"]) == 4
    for b_i in range(4):  # labels are sequential 1..N with N = len(classes)
        ids = torch.unique(batch["labels"][b_i])
        assert ids[ids > 0].tolist() == list(range(1, len(batch["classes"][b_i]) + 1))
    with pytest.raises(ValueError, match="share a size"):
        collate([sample_to_item(samples[0]), a[0]])


def test_dataloader_with_workers_gives_the_same_batches_as_in_process():
    samples = make_samples("dot_grid", 4, size=(32, 32), seed=0)
    ds = InstanceDataset(samples, transform=T.Compose([T.RandomCrop(24), T.RandomFlip()]), seed=1)
    dl0 = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    dl2 = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate, num_workers=2)
    for x, y in zip(dl0, dl2):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["labels"], y["labels"])


def test_crop_pads_semantic_with_void_and_unknown_targets_fail_at_construction():
    s = marker_sample()
    out = T.RandomCrop((50, 60))(s, np.random.default_rng(0))  # pads 37x53 -> 50x60
    assert out.semantic.shape == (50, 60)
    assert (out.semantic[37:] == IGNORE_INDEX).all() and (
        out.semantic[:, 53:] == IGNORE_INDEX
    ).all()
    assert (out.semantic[:37, :53] != IGNORE_INDEX).any()
    with pytest.raises(ValueError, match=r"unknown target name.*'centre'.*center_offset"):
        InstanceDataset([s], targets=("centre",))  # before any item is read


def test_separable_resize_equals_scipy_map_coordinates():
    from scipy import ndimage as ndi

    a = np.random.default_rng(0).random((2, 30, 40)).astype(np.float32)
    for nh, nw in ((45, 24), (12, 80)):
        ys = (np.arange(nh) + 0.5) * 30 / nh - 0.5
        xs = (np.arange(nw) + 0.5) * 40 / nw - 0.5
        grid = np.meshgrid(ys, xs, indexing="ij")
        ref = np.stack([ndi.map_coordinates(c, grid, order=1, mode="nearest") for c in a])
        assert np.allclose(T._linear_resample(a, ys, xs), ref, atol=1e-5)


def test_dataset_adds_the_requested_targets():
    # center_offset targets of a hand-built label image against a numpy reference written from
    # the documented definition (not instembed.targets, which the data set itself calls):
    #   id 4: rows 1-5 x cols 2-4 (15 px), centre of mass (3, 3)
    #   id 9: rows 7-8 x cols 8-10 plus (9, 8) (7 px), centre (54/7, 62/7) -> rounded (8, 9)
    h, w = 12, 14
    labels = np.zeros((h, w), np.int32)
    labels[1:6, 2:5] = 4
    labels[7:9, 8:11] = 9
    labels[9, 8] = 9
    s = Sample(np.zeros((1, h, w), np.float32), labels)
    kw = {"sigma": 2.0, "small_instance_area": 10, "small_instance_weight": 2.5}
    item = InstanceDataset([s], targets={"center_offset": kw})[0]

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    centres = {4: (3.0, 3.0), 9: (54 / 7, 62 / 7)}
    peaks = {4: (3, 3), 9: (8, 9)}
    radius = int(3 * 2.0 + 1)  # window of half-width 7 px
    heat = np.zeros((h, w))
    offset = np.zeros((2, h, w))
    sem_w = np.ones((h, w))
    for k, (cy, cx) in centres.items():
        m = labels == k
        offset[0][m] = cy - yy[m]
        offset[1][m] = cx - xx[m]
        ry, rx = peaks[k]
        window = (np.abs(yy - ry) <= radius) & (np.abs(xx - rx) <= radius)
        g = np.exp(-((yy - ry) ** 2 + (xx - rx) ** 2) / (2 * 2.0**2)) * window
        heat = np.maximum(heat, g)
    sem_w[labels == 9] = 2.5  # 7 px < small_instance_area 10; id 4 (15 px) keeps weight 1
    expected = {
        "center_heatmap": heat[None],
        "offset_target": offset,
        "offset_weights": (labels > 0).astype(np.float64),
        "center_weights": np.ones((h, w)),
        "semantic_weights": sem_w,
    }
    for k, ref in expected.items():
        assert k in item, k
        assert tuple(item[k].shape) == ref.shape, k
        np.testing.assert_allclose(item[k].double().numpy(), ref, atol=1e-6, err_msg=k)
    # spot values by hand: the heat map peaks at 1 on each rounded centre, and is exp(-1/8)
    # one pixel away; the offset of pixel (1, 2) of id 4 is (3 - 1, 3 - 2)
    assert item["center_heatmap"][0, 3, 3] == 1 and item["center_heatmap"][0, 8, 9] == 1
    assert float(item["center_heatmap"][0, 3, 4]) == pytest.approx(np.exp(-1 / 8))
    assert item["offset_target"][:, 1, 2].tolist() == [2.0, 1.0]

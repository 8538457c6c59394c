"""Synthetic generators: exact counts and areas, determinism, overlaps only where promised."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from instembed.data.synth import KINDS, STREET_STUFF, STREET_THINGS, disc_offsets, make_samples


def test_dot_grid_counts_and_areas_derived_by_hand():
    (s,) = make_samples("dot_grid", 1, size=(64, 64), seed=0, radius=4, spacing=14, offset=(5, 5))
    # centres on rows/cols 5, 19, 33, 47, 61; a dot needs centre + 4 <= 63, so 61 is dropped:
    # 4 x 4 = 16 dots.
    assert s.num_instances == 16
    # digital disc of radius 4: |dy|=0 -> 9 px, 1 -> 7 (x2), 2 -> 7 (x2), 3 -> 5 (x2), 4 -> 1 (x2)
    # = 9 + 14 + 14 + 10 + 2 = 49 px per dot
    areas = np.bincount(s.instances.ravel())[1:]
    assert areas.tolist() == [49] * 16
    assert len(disc_offsets(4)) == 49
    assert s.image.shape == (1, 64, 64) and s.image.dtype == np.float32
    assert s.image.sum() == 16 * 49  # foreground 1.0, background 0.0, no noise
    # every dot has exactly the same pixel shape (the point of the coloring dilemma)
    crops = [s.instances[y - 5 : y + 6, x - 5 : x + 6] > 0 for y, x in s.meta["centers"]]
    assert all((c == crops[0]).all() for c in crops)
    assert sorted({tuple(c) for c in s.meta["centers"].tolist()})[0] == (5, 5)


def test_dot_grid_random_offset_and_jitter_keep_dots_identical_and_apart():
    samples = make_samples("dot_grid", 6, size=(96, 96), seed=3, radius=3.5, spacing=13, jitter=1)
    offsets = {s.meta["offset"] for s in samples}
    assert len(offsets) > 1  # the grid origin moves from image to image
    for s in samples:
        areas = np.bincount(s.instances.ravel())[1:]
        assert (areas == len(disc_offsets(3.5))).all()
        # dots never touch: 8-connected components of the foreground = instances
        _, n = ndi.label(s.instances > 0, structure=np.ones((3, 3)))
        assert n == s.num_instances


def test_dot_grid_too_dense_is_an_error():
    with pytest.raises(ValueError, match="spacing"):
        make_samples("dot_grid", 1, size=(64, 64), radius=5, spacing=8)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_generators_are_deterministic_and_index_stable(kind):
    a = make_samples(kind, 3, size=(64, 72), seed=11)
    b = make_samples(kind, 3, size=(64, 72), seed=11)
    c = make_samples(kind, 5, size=(64, 72), seed=11)  # sample i does not depend on n
    d = make_samples(kind, 3, size=(64, 72), seed=12)
    for x, y, z in zip(a, b, c):
        for arr in ("image", "instances", "semantic"):
            assert np.array_equal(getattr(x, arr), getattr(y, arr))
            assert np.array_equal(getattr(x, arr), getattr(z, arr))
    assert not all(np.array_equal(x.image, y.image) for x, y in zip(a, d))
    for s in a:
        assert s.image.shape[-2:] == (64, 72) and s.image.dtype == np.float32
        assert s.classes is not None and len(s.classes) == s.num_instances


@pytest.mark.parametrize(
    "kind, kw, key",
    [
        ("touching_cells", {"n_cells": 9}, None),
        ("leaf_rosettes", {"n_leaves": 7}, None),
        ("worms", {"n_worms": 5}, None),
        ("street", {"n_cars": 2, "n_people": 2, "n_signs": 1}, None),
    ],
)
def test_requested_instance_counts_are_exact_and_each_instance_is_one_region(kind, kw, key):
    expected = sum(kw.values())
    for s in make_samples(kind, 4, size=(96, 96), seed=5, **kw):
        assert s.num_instances == expected
        masks = s.instances if s.is_stack else [s.instances == k for k in range(1, expected + 1)]
        for m in masks:
            assert m.sum() > 0
            _, ncomp = ndi.label(m)  # 4-connectivity
            assert ncomp == 1


def test_touching_cells_share_borders():
    for s in make_samples("touching_cells", 4, size=(96, 96), seed=2, n_cells=8):
        lab = s.instances
        # a shared border: two different non-zero ids 4-adjacent somewhere
        h = (lab[:, 1:] != lab[:, :-1]) & (lab[:, 1:] > 0) & (lab[:, :-1] > 0)
        v = (lab[1:, :] != lab[:-1, :]) & (lab[1:, :] > 0) & (lab[:-1, :] > 0)
        assert h.any() or v.any()


def test_overlaps_only_where_the_kind_promises_them():
    for kind in ("dot_grid", "touching_cells", "leaf_rosettes", "street"):
        for s in make_samples(kind, 2, size=(64, 64), seed=1):
            assert not s.is_stack  # one id per pixel, no overlap possible
    for s in make_samples("worms", 4, size=(96, 96), seed=1):
        assert s.is_stack and s.instances.dtype == bool
        # worm 1 is always drawn through a point of worm 0
        assert (s.instances[0] & s.instances[1]).any()
        assert s.overlap_mask().sum() > 0
        assert np.array_equal(s.semantic > 0, s.instances.any(0))


def test_street_semantics_and_classes_agree():
    for s in make_samples("street", 3, size=(96, 128), seed=4):
        assert s.image.shape[0] == 3
        assert set(np.unique(s.semantic)) <= set(STREET_STUFF) | set(STREET_THINGS)
        assert set(np.unique(s.semantic[s.instances == 0])) <= set(STREET_STUFF)
        for k, c in enumerate(s.classes, start=1):
            assert c in STREET_THINGS
            assert (s.semantic[s.instances == k] == c).all()


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="unknown synthetic kind 'dots'"):
        make_samples("dots", 1)
    with pytest.raises(ValueError, match="size"):
        make_samples("dot_grid", 1, size=(4, 4))
    with pytest.raises(ValueError, match="could not place 60"):
        make_samples("touching_cells", 1, size=(32, 32), n_cells=60)
    with pytest.raises(TypeError):
        make_samples("worms", 1, colour="red")

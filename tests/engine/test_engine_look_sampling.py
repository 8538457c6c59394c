"""Per-look sampling: the look rule (instembed.data.looks) on hand-made images and on DSB2018,
and the group-weighted StepSampler: frequencies within binomial tolerance, deterministic and
resumable streams, one pass over each group per group epoch, disjoint ranks."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from instembed.data.looks import LOOKS, check_look_weights, image_look, sample_looks
from instembed.data.sample import Sample
from instembed.engine.config import ConfigError, DataConfig, config_from_dict
from instembed.engine.distributed import DistInfo
from instembed.engine.sampling import StepSampler, train_sampler


def fluorescence(rng) -> np.ndarray:
    img = rng.normal(10, 2, (64, 64))  # dark background
    img[10:20, 10:20] = 200  # bright nuclei
    img[40:50, 30:44] = 180
    return np.repeat(img[..., None], 3, -1).clip(0, 255)  # stored as gray RGB


def brightfield(rng) -> np.ndarray:
    img = rng.normal(220, 3, (64, 64))  # light background
    img[10:20, 10:20] = 60  # dark nuclei
    return img.clip(0, 255)


def he_like(rng) -> np.ndarray:
    img = np.empty((64, 64, 3))
    img[:] = (235, 200, 225)  # pink background (eosin)
    img[10:30, 10:30] = (90, 40, 140)  # purple nuclei (haematoxylin)
    return img + rng.normal(0, 2, img.shape)


def test_image_look_on_hand_made_images():
    rng = np.random.default_rng(0)
    assert image_look(fluorescence(rng)) == "fluorescence"
    assert image_look(brightfield(rng)) == "brightfield"
    assert image_look(he_like(rng)) == "he"
    # channel-first layouts and an alpha channel give the same answers
    assert image_look(np.moveaxis(he_like(rng), -1, 0), channels_last=False) == "he"
    rgba = np.concatenate(
        [brightfield(rng)[..., None].repeat(3, -1), np.full((64, 64, 1), 255)], -1
    )
    assert image_look(rgba) == "brightfield"
    # gray inverted fluorescence (bright background) is bright-field by the rule
    assert image_look(255 - fluorescence(rng)[..., 0]) == "brightfield"


@pytest.mark.slow  # reads 173 PNGs (about 8 s of CPU)
def test_looks_of_the_staged_dsb2018_subset(shared_data):
    """SOURCE.md of the staged subset lists 127 fluorescence, 30 colour (stained tissue) and 16
    bright-field images; the 30 colour ones are the 256 x 320 'colour' group."""
    from instembed.data.io import read_image

    root = Path(shared_data("dsb2018")) / "stage1_train"
    counts = dict.fromkeys(LOOKS, 0)
    for d in sorted(root.iterdir()):
        img = read_image(next((d / "images").glob("*.png")))
        counts[image_look(img)] += 1
    assert counts == {"fluorescence": 127, "he": 30, "brightfield": 16}


def test_sample_looks_falls_back_to_the_sample_image():
    rng = np.random.default_rng(1)
    samples = [
        Sample(np.moveaxis(f(rng), -1, 0).astype(np.float32), np.zeros((64, 64), np.int32))
        for f in (lambda r: he_like(r), lambda r: brightfield(r)[..., None].repeat(3, -1))
    ]
    assert sample_looks(samples) == ["he", "brightfield"]


# --------------------------------------------------------------------------- sampler
GROUPS = ["fluorescence"] * 14 + ["he"] * 4 + ["brightfield"] * 2
WEIGHTS = {"fluorescence": 1.0, "he": 1.0, "brightfield": 2.0}


def take(sampler, n: int) -> list[tuple[int, int]]:
    return list(itertools.islice(iter(sampler), n))


def test_look_frequencies_match_the_weights_within_binomial_tolerance():
    n_draws = 20_000
    s = StepSampler(len(GROUPS), seed=3, dist=DistInfo(), groups=GROUPS, weights=WEIGHTS)
    drawn = [GROUPS[i] for i, _ in take(s, n_draws)]
    total = sum(WEIGHTS.values())
    for look, w in WEIGHTS.items():
        p = w / total
        tol = 4.5 * math.sqrt(n_draws * p * (1 - p))  # 4.5 binomial std: P(false fail) < 1e-5
        assert abs(drawn.count(look) - n_draws * p) <= tol, (look, drawn.count(look))
    # the test can fail: the plain sampler draws the looks 0.7 / 0.2 / 0.1, far outside
    plain = [GROUPS[i] for i, _ in take(StepSampler(len(GROUPS), 3, DistInfo()), n_draws)]
    p = WEIGHTS["brightfield"] / total
    assert abs(plain.count("brightfield") - n_draws * p) > 10 * math.sqrt(n_draws * p * (1 - p))


def test_zero_or_missing_weight_never_draws_that_look():
    s = StepSampler(len(GROUPS), 0, DistInfo(), groups=GROUPS, weights={"he": 1, "brightfield": 0})
    assert {GROUPS[i] for i, _ in take(s, 500)} == {"he"}


def test_each_group_epoch_visits_every_image_of_the_group_once():
    s = StepSampler(len(GROUPS), 5, DistInfo(), groups=GROUPS, weights=WEIGHTS)
    seq = [i for i, _ in take(s, 3000)]
    for look in WEIGHTS:
        members = [i for i, g in enumerate(GROUPS) if g == look]
        mine = [i for i in seq if GROUPS[i] == look]
        n = len(members)
        for e in range(len(mine) // n):
            assert sorted(mine[e * n : (e + 1) * n]) == members


@pytest.mark.parametrize("start", [0, 1, 777, 4096, 4096 + 13, 9000])
def test_stream_is_deterministic_and_resumable(start):
    full = take(StepSampler(len(GROUPS), 11, DistInfo(), groups=GROUPS, weights=WEIGHTS), 9300)
    again = take(StepSampler(len(GROUPS), 11, DistInfo(), groups=GROUPS, weights=WEIGHTS), 9300)
    assert full == again
    resumed = StepSampler(len(GROUPS), 11, DistInfo(), start=start, groups=GROUPS, weights=WEIGHTS)
    assert take(resumed, 300) == full[start : start + 300]
    other = take(StepSampler(len(GROUPS), 12, DistInfo(), groups=GROUPS, weights=WEIGHTS), 300)
    assert [i for i, _ in other] != [i for i, _ in full[:300]]


def test_ranks_split_each_group_epoch():
    groups = ["fluorescence"] * 8 + ["he"] * 6
    weights = {"fluorescence": 1.0, "he": 1.0}
    seqs = [
        [i for i, _ in take(StepSampler(14, 2, DistInfo(rank=r, world=2), 0, groups, weights), 400)]
        for r in (0, 1)
    ]
    for look in weights:
        members = [i for i, g in enumerate(groups) if g == look]
        half = len(members) // 2
        first = [[i for i in seq if groups[i] == look][:half] for seq in seqs]
        assert set(first[0]).isdisjoint(first[1])
        assert sorted(first[0] + first[1]) == members
    # the rank's items seeds differ (augmentation), the look draws are independent per rank
    assert seqs[0] != seqs[1]


def test_weights_need_images_of_each_weighted_look():
    with pytest.raises(ValueError, match="no image of group"):
        StepSampler(3, 0, DistInfo(), groups=["he"] * 3, weights={"he": 1, "brightfield": 1})
    with pytest.raises(ValueError, match="unknown look 'phase'"):
        check_look_weights({"phase": 1.0})
    with pytest.raises(ValueError, match="all weights are 0"):
        check_look_weights({"he": 0})


def test_train_sampler_classifies_the_training_images_once():
    rng = np.random.default_rng(2)
    kinds = [fluorescence, he_like, fluorescence, brightfield]
    samples = [
        Sample(np.moveaxis(f(rng), -1, 0).astype(np.float32), np.zeros((64, 64), np.int32))
        if f is not brightfield
        else Sample(brightfield(rng)[None].astype(np.float32), np.zeros((64, 64), np.int32))
        for f in kinds
    ]

    class Dataset:
        def __init__(self):
            self.samples = samples

        def __len__(self):
            return len(samples)

    ds = Dataset()
    plain = train_sampler(ds, DataConfig(), 0, DistInfo())
    assert plain.weights is None and not hasattr(ds, "looks")
    dc = DataConfig(look_weights={"brightfield": 1.0})
    s = train_sampler(ds, dc, 0, DistInfo())
    assert ds.looks == ["fluorescence", "he", "fluorescence", "brightfield"]
    assert {i for i, _ in take(s, 50)} == {3}
    with pytest.raises(ValueError, match="data.look_weights"):
        train_sampler(ds, DataConfig(look_weights={"dark": 1.0}), 0, DistInfo())


def test_config_accepts_center_and_look_weights_and_defaults_are_unchanged():
    cfg = config_from_dict({})
    assert cfg.data.center == "centroid" and cfg.data.look_weights is None
    cfg = config_from_dict(
        {"data": {"center": "medoid", "look_weights": {"he": 2, "brightfield": 1.5}}}
    )
    assert cfg.data.center == "medoid" and cfg.data.look_weights == {"he": 2, "brightfield": 1.5}
    with pytest.raises(ConfigError, match="data.center"):
        config_from_dict({"data": {"center": "middle"}})
    with pytest.raises(ConfigError, match="data.look_weights: unknown look 'phase'"):
        config_from_dict({"data": {"look_weights": {"phase": 1}}})
    with pytest.raises(ConfigError, match=r"data.look_weights.he: expected a finite number >= 0"):
        config_from_dict({"data": {"look_weights": {"he": -1}}})

"""``min_range``: a floor on the percentile range of the percentile normalisations,
``(x - lo) / max(hi - lo, min_range)`` in raw intensity units (``data.reader_params.min_range``).

Expected values are derived by hand (images whose 1st / 99.8th percentiles fall on whole sorted
indices) or from the unfloored normalisation, which an image above the floor must equal bit for
bit. The same floor must reach every place that normalises with the model's setting: the
readers, ``instembed.segment``, ``instembed predict``, the whole-image statistics of the
block-wise path, and the config check.
"""

from __future__ import annotations

import numpy as np
import pytest

from instembed.data import io
from instembed.data.lazy import StatsAccumulator, open_lazy, window_stats
from instembed.data.normalize import (
    check_min_range,
    model_normalization,
    normalize_image,
    percentile_normalize,
)
from instembed.data.readers import open_dataset
from instembed.engine.config import ConfigError, load_config

pytestmark = pytest.mark.usefixtures("one_thread")

BAD = [-1, -0.5, float("nan"), float("inf"), "x", True, [150]]


def _noise_field(seed: int = 0, channels: int = 1) -> np.ndarray:
    """(channels, 3, 167): per channel 501 uint16 pixels (an "empty field") whose percentiles
    fall on whole sorted indices:
    numpy 'linear' puts the 1st percentile at index 0.01 * 500 = 5 and the 99.8th at
    0.998 * 500 = 499. Sorted: six 100s, then 494 values rising from 100 to 140, then one hot
    pixel of 1000 -> lo = 100, hi = 140 (range 40)."""
    v = np.concatenate([np.full(6, 100), 100 + np.arange(494) * 41 // 494, [1000]])
    assert v[499] == 140 and v.size == 501
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(v).reshape(3, 167) for _ in range(channels)]).astype(np.uint16)


# --------------------------------------------------------------------------- the formula
def test_a_range_below_the_floor_is_divided_by_the_floor():
    x = _noise_field()
    xf = x.astype(np.float64)
    np.testing.assert_array_equal(percentile_normalize(x), ((xf - 100) / 40).astype(np.float32))
    got = percentile_normalize(x, min_range=200)
    np.testing.assert_array_equal(got, ((xf - 100) / 200).astype(np.float32))
    assert got.dtype == np.float32
    assert got.min() == 0.0 and got.max() == pytest.approx(4.5)  # the hot pixel: 900 / 200
    assert float(np.percentile(got, 99.8)) == pytest.approx(0.2)  # 40 / 200, not 1
    # a floor below the range changes nothing
    np.testing.assert_array_equal(percentile_normalize(x, min_range=39.5), percentile_normalize(x))
    np.testing.assert_array_equal(normalize_image(x, "percentile", 200), got)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint8, np.float32, np.float64])
def test_an_image_above_the_floor_is_unchanged_bit_for_bit(dtype):
    rng = np.random.default_rng(4)
    scale = 1.0 if dtype == np.uint8 else 16.0
    x = (rng.gamma(2.0, 30.0, (2, 37, 29)).clip(0, 250) * scale).astype(dtype)
    lo, hi = np.percentile(x.astype(np.float64), [1, 99.8], axis=(1, 2))
    floor = 0.9 * float((hi - lo).min())  # just under both channels' ranges
    assert floor > 50
    for mode in ("percentile", "percentile_darkbg"):
        want = normalize_image(x, mode)
        assert np.array_equal(normalize_image(x, mode, floor), want)
        assert np.array_equal(normalize_image(x, mode, 0), want)
        assert np.array_equal(normalize_image(x, mode, None), want)
    # range / none do not use it
    for mode in ("range", "none"):
        assert np.array_equal(normalize_image(x, mode, 1e6), normalize_image(x, mode))


def test_histogram_and_float_percentiles_agree_with_the_floor():
    # uint16 takes the histogram path, float32 numpy's percentile: the same numbers
    x = _noise_field(1, 2)
    x[1] = x[1] * 7  # channel 1: lo 700, hi 980, range 280
    for floor in (0, 150, 200, 1000):
        a = percentile_normalize(x, min_range=floor)
        b = percentile_normalize(x.astype(np.float32), min_range=floor)
        assert np.array_equal(a, b), floor


def test_the_floor_is_per_channel():
    x = _noise_field(2, 2).astype(np.float64)
    x[1] = (x[1] - 100) * 25 + 3000  # channel 1: lo 3000, hi 4000 (range 1000)
    x = x.astype(np.uint16)
    got = percentile_normalize(x, min_range=200)
    xf = x.astype(np.float64)
    np.testing.assert_array_equal(got[0], ((xf[0] - 100) / 200).astype(np.float32))
    np.testing.assert_array_equal(got[1], ((xf[1] - 3000) / 1000).astype(np.float32))
    np.testing.assert_array_equal(got[1], percentile_normalize(x)[1])  # above its floor
    # one percentile for the whole image (per_channel=False): lo 100, hi from the mix
    whole = percentile_normalize(x, per_channel=False, min_range=1e5)
    lo = np.percentile(xf, 1)
    np.testing.assert_allclose(whole, (xf - lo) / 1e5, rtol=1e-6)


def test_darkbg_decides_on_the_floored_image():
    # a bright field (most pixels at the top of a range of 40): unfloored, its median maps
    # near 1 and the image is inverted; floored at 200 it stays below 0.5 and is kept
    v = np.concatenate([np.full(6, 100), np.full(494, 140), [141]]).astype(np.uint16)
    x = np.random.default_rng(5).permutation(v).reshape(1, 3, 167)
    xf = x.astype(np.float64)
    np.testing.assert_array_equal(
        normalize_image(x, "percentile_darkbg"), (1.0 - ((xf - 100) / 40).astype(np.float32))
    )
    np.testing.assert_array_equal(
        normalize_image(x, "percentile_darkbg", 200), ((xf - 100) / 200).astype(np.float32)
    )
    # floored at 60: median (140 - 100) / 60 = 0.67 > 0.5 -> inverted after the floor
    np.testing.assert_array_equal(
        normalize_image(x, "percentile_darkbg", 60), 1.0 - ((xf - 100) / 60).astype(np.float32)
    )


@pytest.mark.parametrize("bad", BAD, ids=repr)
def test_an_invalid_min_range_is_refused_naming_it(bad):
    x = _noise_field()
    with pytest.raises(ValueError, match=r"min_range: expected a finite number >= 0.*got"):
        normalize_image(x, "percentile", bad)
    with pytest.raises(ValueError, match="min_range"):
        percentile_normalize(x, min_range=bad)
    with pytest.raises(ValueError, match=r"data\.reader_params\.min_range: .* got"):
        model_normalization({"normalize": "percentile", "min_range": bad})
    with pytest.raises(ConfigError, match=r"data\.reader_params\.min_range"):
        load_config(overrides=[f"data.reader_params.min_range={bad!r}"])


def test_valid_values_and_the_model_defaults():
    assert check_min_range(None) == 0.0 and check_min_range(np.uint16(150)) == 150.0
    assert model_normalization({}) == ("percentile", 0.0)
    assert model_normalization(None) == ("percentile", 0.0)
    got = model_normalization({"normalize": "percentile_darkbg", "min_range": 150})
    assert got == ("percentile_darkbg", 150.0)
    cfg = load_config(overrides=["data.reader_params={normalize: percentile, min_range: 150}"])
    assert cfg.data.reader_params["min_range"] == 150


# --------------------------------------------------------------------------- readers
def _dim_image(seed: int = 0) -> np.ndarray:
    """40 x 48 uint16: camera noise 134 +- 20 and one dim blob (+30)."""
    rng = np.random.default_rng(seed)
    img = 134 + rng.integers(-20, 21, (40, 48))
    img[10:18, 12:22] += 30
    return img.astype(np.uint16)


def test_a_reader_with_min_range_gives_the_floored_image(tmp_path, caplog, image_folder):
    img = _dim_image()
    root = image_folder(tmp_path / "d", img)
    floored = open_dataset(root, format="folder", normalize="percentile", min_range=150)[0].image
    plain = open_dataset(root, format="folder", normalize="percentile")[0].image
    assert np.array_equal(floored, normalize_image(img[None], "percentile", 150))
    lo = np.percentile(img.astype(np.float64), 1)
    np.testing.assert_allclose(floored[0], (img - lo) / 150, rtol=1e-6)
    assert float(plain.max()) >= 1.0 > 0.6 > float(floored.max())
    with pytest.raises(ValueError, match=r"min_range: .* got -1"):
        open_dataset(root, format="folder", min_range=-1)
    # readers with their own default normalisation forward it too (via **kw)
    r = open_dataset(root, format="folder", normalize="range", min_range=150)
    assert r.min_range == 150.0 and "has no effect with normalize='range'" in caplog.text
    assert np.array_equal(io.load_image(root / "images" / "a.tif", "percentile", min_range=150)[0],
                          floored)  # fmt: skip


# --------------------------------------------------------------------------- the model's
@pytest.fixture
def seen(monkeypatch):
    """The images the Predictor's network pass is given (``Predictor.outputs``: whole images
    segmented by ``__call__`` and napari's dense layers go through it), in order."""
    from instembed.engine.predict import Predictor

    images: list[np.ndarray] = []
    outputs = Predictor.outputs

    def spy(self, image):
        images.append(np.array(image))
        return outputs(self, image)

    monkeypatch.setattr(Predictor, "outputs", spy)
    return images


def test_predict_and_segment_apply_the_models_min_range(tmp_path, seen, image_folder, tiny_run):
    import instembed
    from instembed.cli import main
    from instembed.napari._core import dense_outputs

    img = _dim_image(1)
    root = image_folder(tmp_path / "d", img)
    path = root / "images" / "a.tif"
    run = tiny_run(tmp_path, {"normalize": "percentile", "channels": 1, "min_range": 150})
    reader = open_dataset(root, format="folder", normalize="percentile", channels=1,
                          min_range=150)  # fmt: skip
    want = reader[0].image  # what training saw
    assert float(want.max()) < 0.6  # floored: the unfloored image reaches above 1

    out = instembed.segment(path, str(run), device="cpu")
    assert out.meta["min_range"] == 150.0
    instembed.segment(img, str(run), device="cpu")  # an array: the same steps
    assert main(["predict", str(path), "--model", str(run), "--out", str(tmp_path / "o"),
                 "--no-progress", "--no-overlay"]) == 0  # fmt: skip
    dense_outputs(img, str(run), device="cpu")  # the napari seed / embedding layers
    assert len(seen) == 4
    for i, got in enumerate(seen):
        assert np.array_equal(got, want), i
    # an explicit min_range overrides the model's; 0 turns it off
    instembed.segment(img, str(run), device="cpu", min_range=0)
    assert np.array_equal(seen[-1], normalize_image(img[None], "percentile"))
    with pytest.raises(ValueError, match="segment: min_range: .* got -3"):
        instembed.segment(img, str(run), device="cpu", min_range=-3)


def test_a_model_without_min_range_normalises_as_before(tmp_path, seen, tiny_run):
    import instembed

    img = _dim_image(2)
    run = tiny_run(tmp_path, {"normalize": "percentile"})
    out = instembed.segment(img, str(run), device="cpu")
    assert "min_range" not in out.meta
    assert np.array_equal(seen[0], percentile_normalize(img[None]))


# --------------------------------------------------------------------------- whole-image stats
@pytest.mark.parametrize("mode", ["percentile", "percentile_darkbg"])
@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_window_statistics_give_the_floored_whole_image_normalisation(mode, dtype):
    x = _noise_field(3, 2).astype(np.float64)
    x[1] = (x[1] - 100) * 25 + 3000  # channel 0 range 40 (floored), channel 1 range 1000
    x = x.astype(dtype)
    lazy = open_lazy(x)
    acc = StatsAccumulator()
    for y0, y1 in ((0, 2), (2, 3)):
        for x0, x1 in ((0, 80), (80, 167)):
            acc.add(window_stats(lazy, y0, y1, x0, x1, 1))
    norm = acc.norm(mode, min_range=200)
    assert norm.min_range == 200.0
    want = normalize_image(x, mode, 200)
    assert np.array_equal(norm.apply(x), want)
    assert not np.array_equal(want, normalize_image(x, mode))  # the floor did act
    assert np.array_equal(norm.apply(x[1:], channel=1), want[1:])  # one channel's window
    assert np.array_equal(norm.prepare(x, 2, channel=None), want)
    with pytest.raises(ValueError, match="min_range"):
        acc.norm(mode, min_range=float("nan"))


# --------------------------------------------------------------------------- real data
def test_bbbc039_empty_field_stays_dark_and_nuclei_images_are_unchanged(shared_data):
    import os

    root = shared_data("bbbc039") / "cell nuclei"
    # an empty field's mask PNG compresses best: the smallest files, checked by reading them
    masks = sorted((root / "masks").glob("*.png"), key=lambda p: (os.path.getsize(p), p.name))
    empty = masks[0]
    assert not io.read_image(empty)[..., 0].any()  # no nucleus at all
    image = root / "images" / f"{empty.stem}.tif"
    plain = io.load_image(image, "percentile")[0]
    floored = io.load_image(image, "percentile", min_range=150)[0]
    assert float(np.percentile(plain, 99.8)) == pytest.approx(1.0, abs=1e-6)  # noise -> 0..1
    assert float(np.percentile(floored, 99.8)) < 0.3
    # images with nuclei (the sparsest ones: fewest nuclei, the smallest ranges) are unchanged
    with_nuclei = [m for m in masks[:8] if io.read_image(m)[..., 0].any()][:3]
    assert len(with_nuclei) == 3
    for m in with_nuclei:
        image = root / "images" / f"{m.stem}.tif"
        a = io.load_image(image, "percentile")[0]
        assert np.array_equal(io.load_image(image, "percentile", min_range=150)[0], a), m.name

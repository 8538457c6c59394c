"""``"percentile_unsaturated"``: the 1 / 99.8 percentile normalisation whose high percentile is
not set by a saturation plateau. When the 99.8th percentile of a channel equals its maximum M
and some pixels lie below M, the 99.8th percentile of the pixels below M is used instead.

Expected values come from hand derivations (images built value by value, whose sorted order is
known) or from :func:`_reference`, a slow per-channel rewrite of the rule on the explicitly
selected subset ``v[v < v.max()]``. Below the plateau the mode must equal ``"percentile"`` bit
for bit. The mode must reach every place that normalises: readers, ``load_image``,
``instembed.segment``, the whole-image statistics of the block-wise path and the TorchScript
normalisation of the bioimage.io package.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from instembed.data import io
from instembed.data.lazy import StatsAccumulator, open_lazy, window_stats
from instembed.data.normalize import (
    NORMALIZATIONS,
    model_normalization,
    normalize_image,
    percentile_normalize,
)
from instembed.data.readers import open_dataset
from instembed.engine.bioimageio import Normalize

pytestmark = pytest.mark.usefixtures("one_thread")

MODE = "percentile_unsaturated"


def _reference(x: np.ndarray, min_range: float = 0.0) -> np.ndarray:
    """The rule, channel by channel, on float64 copies of the float32 pixels."""
    x32 = np.asarray(x).astype(np.float32)
    out = np.empty(x32.shape, np.float32)
    for c, ch in enumerate(x32):
        v = ch.ravel().astype(np.float64)
        lo, hi = np.percentile(v, [1.0, 99.8])
        top = v.max()
        if hi == top and (v < top).any():
            hi = np.percentile(v[v < top], 99.8)
        out[c] = (ch - lo) / max(hi - lo, min_range, 1e-6)
    return out


def _nuclei(saturated: int = 50, seed: int = 0) -> np.ndarray:
    """(100, 100) uint16, 10000 pixels, shuffled: 10000 - 2000 - ``saturated`` background
    pixels 100 + i % 21, 2000 "nuclei" pixels 500 + r // 4 (r = 0..1999: 500..999, four of
    each) and ``saturated`` pixels at the camera maximum 4095."""
    back = 100 + np.arange(10000 - 2000 - saturated) % 21
    nuc = 500 + np.arange(2000) // 4
    v = np.concatenate([back, nuc, np.full(saturated, 4095)])
    return np.random.default_rng(seed).permutation(v).reshape(100, 100).astype(np.uint16)


# --------------------------------------------------------------------------- the rule by hand
def test_a_saturation_plateau_no_longer_sets_the_high_percentile():
    # 50 pixels (0.5 %) at 4095. numpy 'linear' over all 10000 pixels puts the 99.8th
    # percentile at sorted index 0.998 * 9999 = 9979.002, inside the plateau (indices
    # 9950..9999): hi = 4095. The 1st percentile, index 99.99, is background: lo = 100.
    # Below 4095 (9950 pixels) the 99.8th is at 0.998 * 9949 = 9929.102: nuclei ranks
    # 9929 - 7950 = 1979 and 1980, values 500 + 494 = 994 and 995 -> hi = 994.102.
    img = _nuclei()
    x = img[None]
    xf = x.astype(np.float64)
    below = img[img < 4095].astype(np.float64)
    assert below.size == 9950
    assert np.percentile(xf, 99.8) == 4095.0 and np.percentile(xf, 1) == 100.0
    hi = np.percentile(below, 99.8)
    assert hi == pytest.approx(994.102, abs=1e-9)

    plain = normalize_image(x, "percentile")
    np.testing.assert_array_equal(plain, ((xf - 100) / 3995).astype(np.float32))
    got = normalize_image(x, MODE)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, ((xf - 100) / (hi - 100)).astype(np.float32))
    np.testing.assert_array_equal(got, _reference(x))
    # a nucleus pixel of 800: 700 / 894.102 instead of 700 / 3995 (4.47 x brighter)
    assert got[x == 800][0] == pytest.approx(700 / 894.102, rel=1e-6)
    assert plain[x == 800][0] == pytest.approx(700 / 3995, rel=1e-6)
    # the saturated pixels are not clipped: (4095 - 100) / 894.102
    assert got.max() == pytest.approx(3995 / 894.102, rel=1e-6) and got.max() > 4
    # the same numbers through percentile_normalize's keyword
    np.testing.assert_array_equal(percentile_normalize(x, unsaturated=True), got)
    assert MODE in NORMALIZATIONS


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.float64])
def test_the_float_path_takes_the_same_rule(dtype):
    # float pixels go through numpy's percentile on the subset, not the histogram
    x = _nuclei(seed=1)[None].astype(dtype)
    got = normalize_image(x, MODE)
    np.testing.assert_allclose(got, _reference(x), rtol=1e-6)
    np.testing.assert_allclose(got, normalize_image(x.astype(np.uint16), MODE), rtol=1e-6)
    assert got[x == 800][0] == pytest.approx(700 / 894.102, rel=1e-6)


def test_the_uint8_histogram_path():
    # 1000 pixels: 1 % at 255; below it 20 zeros and 970 values 1 + j // 5 (1..194). All
    # pixels: the 99.8th at index 0.998 * 999 = 997.002 is 255, the 1st at index 9.99 is 0.
    # Below 255 (990 pixels): index 0.998 * 989 = 987.022, j = 967 and 968, both 194.
    v = np.concatenate([np.zeros(20), 1 + np.arange(970) // 5, np.full(10, 255)])
    v = np.random.default_rng(2).permutation(v).astype(np.uint8).reshape(1, 20, 50)
    vf = v.astype(np.float64)
    got = normalize_image(v, MODE)
    np.testing.assert_array_equal(got, (vf / 194).astype(np.float32))
    np.testing.assert_array_equal(got, _reference(v))
    np.testing.assert_array_equal(normalize_image(v, "percentile"), (vf / 255).astype(np.float32))
    np.testing.assert_array_equal(normalize_image(v.astype(np.float32), MODE), got)


# --------------------------------------------------------------------------- unchanged cases
@pytest.mark.parametrize("dtype", [np.uint16, np.uint8, np.float32])
def test_a_plateau_below_the_high_percentile_changes_nothing(dtype):
    # 5 pixels (0.05 %) at the maximum: the 99.8th (index 9979.002) lies below them
    img = _nuclei(saturated=5, seed=3)
    if dtype == np.uint8:
        img = np.minimum(img // 4, 255)  # 4095 // 4 -> 255 clipped: still 5 at the top
        assert (img == 255).sum() == 5
    x = img[None].astype(dtype)
    assert np.percentile(x.astype(np.float64), 99.8) < x.max()
    np.testing.assert_array_equal(normalize_image(x, MODE), normalize_image(x, "percentile"))


def test_random_float_images_and_constant_channels_are_unchanged():
    rng = np.random.default_rng(4)
    for i in range(12):
        shape = (int(rng.integers(1, 4)), *(int(s) for s in rng.integers(1, 60, 2)))
        x = (rng.random(shape) * [1.0, 300.0, 1e-3][i % 3]).astype([np.float32, np.float64][i % 2])
        for floor in (0.0, 50.0):
            want = normalize_image(x, "percentile", floor)
            np.testing.assert_array_equal(normalize_image(x, MODE, floor), want, err_msg=str(i))
    for dt in (np.uint8, np.uint16, np.float32):
        const = np.full((2, 5, 7), 40, dt)  # no pixel below the maximum: as "percentile", 0
        got = normalize_image(const, MODE)
        np.testing.assert_array_equal(got, normalize_image(const, "percentile"))
        assert not got.any()


def test_per_channel_only_the_saturated_channel_changes():
    sat = _nuclei(seed=5)
    clean = _nuclei(saturated=5, seed=6)
    x = np.stack([clean, sat, (clean // 2 + 7).astype(np.uint16)])
    plain, got = normalize_image(x, "percentile"), normalize_image(x, MODE)
    np.testing.assert_array_equal(got[[0, 2]], plain[[0, 2]])
    assert not np.array_equal(got[1], plain[1])
    np.testing.assert_array_equal(got, _reference(x))
    np.testing.assert_allclose(normalize_image(x.astype(np.float32), MODE), got, rtol=1e-6)
    # per_channel=False: one lo / hi for the pooled pixels; 55 of 30000 at 4095 (0.18 %) lie
    # above the 99.8th (index 29939.002 of 0..29999): as the plain pooled normalisation
    pooled = percentile_normalize(x, per_channel=False, unsaturated=True)
    np.testing.assert_array_equal(pooled, percentile_normalize(x, per_channel=False))
    both = np.stack([sat, sat])  # 100 of 20000 at 4095 (0.5 %): the rule on the pool
    want = _reference(both.reshape(1, 2, -1)).reshape(both.shape)
    np.testing.assert_allclose(percentile_normalize(both, per_channel=False, unsaturated=True),
                               want, rtol=1e-6)  # fmt: skip


def test_min_range_still_floors_the_range():
    # hi - lo = 894.102 after the plateau is set aside: a floor of 2000 divides by 2000, one of
    # 500 changes nothing
    x = _nuclei(seed=7)[None]
    xf = x.astype(np.float64)
    np.testing.assert_array_equal(
        normalize_image(x, MODE, 2000), ((xf - 100) / 2000).astype(np.float32)
    )
    np.testing.assert_array_equal(normalize_image(x, MODE, 500), normalize_image(x, MODE))
    np.testing.assert_array_equal(normalize_image(x, MODE, 2000), _reference(x, 2000))
    assert model_normalization({"normalize": MODE, "min_range": 150}) == (MODE, 150.0)


# --------------------------------------------------------------------------- every path
def test_readers_and_load_image(tmp_path, image_folder):
    img = _nuclei(seed=8)
    root = image_folder(tmp_path / "d", img)
    want = _reference(img[None])
    got = open_dataset(root, format="folder", normalize=MODE)[0].image
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(io.load_image(root / "images" / "a.tif", MODE)[0], want)
    floored = open_dataset(root, format="folder", normalize=MODE, min_range=2000)[0].image
    np.testing.assert_array_equal(floored, _reference(img[None], 2000))


def test_segment_applies_the_models_mode(tmp_path, monkeypatch, tiny_run):
    import instembed
    from instembed.engine.predict import Predictor

    seen: list[np.ndarray] = []
    outputs = Predictor.outputs
    monkeypatch.setattr(Predictor, "outputs", lambda self, im: seen.append(np.array(im)) or
                        outputs(self, im))  # fmt: skip
    run = tiny_run(tmp_path, {"normalize": MODE, "channels": 1})
    img = _nuclei(seed=9)[:48, :40]
    assert (img == 4095).sum() >= 5  # 1920 px: the 99.8th (index 1915.162) on the plateau
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, img)
    out = instembed.segment(path, str(run), device="cpu")
    assert out.meta["normalize"] == MODE
    instembed.segment(img, str(run), device="cpu")
    want = _reference(img[None])
    assert not np.array_equal(want, normalize_image(img[None], "percentile"))
    assert len(seen) == 2
    for got in seen:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_window_statistics_give_the_whole_image_normalisation(dtype):
    # 2 channels, only channel 1 with a plateau; windows of a 2 x 2 grid, every pixel sampled
    x = np.stack([_nuclei(saturated=5, seed=10), _nuclei(seed=11)]).astype(dtype)
    lazy = open_lazy(x)
    for floor in (0.0, 2000.0):
        acc = StatsAccumulator()
        for y0, y1 in ((0, 37), (37, 100)):
            for x0, x1 in ((0, 60), (60, 100)):
                acc.add(window_stats(lazy, y0, y1, x0, x1, 1))
        norm = acc.norm(MODE, min_range=floor)
        assert norm.mode == MODE and not norm.invert
        want = normalize_image(x, MODE, floor)
        np.testing.assert_array_equal(norm.apply(x), want)
        np.testing.assert_allclose(want, _reference(x, floor), rtol=1e-6)
        np.testing.assert_array_equal(norm.apply(x[1:], channel=1), want[1:])
        assert not np.array_equal(want, normalize_image(x, "percentile", floor))
        assert norm.hi[1, 0, 0] == pytest.approx(994.102, abs=1e-9)  # the plateau set aside
        assert norm.hi[0, 0, 0] < 4095


def test_compiled_normalisation_equals_numpy_bit_for_bit():
    rng = np.random.default_rng(12)
    plateau = set()
    for floor in (0.0, 300.0):
        norm = torch.jit.script(Normalize(MODE, min_range=floor))
        for i in range(18):
            dt = [np.uint8, np.uint16, np.float32, np.int16, np.float64][i % 5]
            top = 255 if dt == np.uint8 else 4095
            c, h, w = int(rng.integers(1, 4)), *(int(s) for s in rng.integers(3, 40, 2))
            x = rng.integers(0, top // 3, (c, h, w)).astype(np.float64)
            if dt in (np.float32, np.float64) and i % 2:
                x = x + rng.random(x.shape)  # no ties below the plateau
            for ch in range(c):
                frac = [0.0, 0.001, 0.01, 0.3][(i + ch) % 4]
                x[ch].flat[: max(int(frac * h * w), int(frac > 0))] = top  # a plateau at top
            if i % 7 == 0:
                x[-1] = top  # a constant channel
            x = rng.permuted(x.reshape(c, -1), axis=1).reshape(c, h, w).astype(dt)
            want = normalize_image(x, MODE, floor)
            got = norm(torch.from_numpy(x)).numpy()
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, want, err_msg=f"{dt} {x.shape} {floor}")
            plateau.add(not np.array_equal(want, normalize_image(x, "percentile", floor)))
    assert plateau == {True, False}  # the rule acted on some images, not on others
    # the hand image: the compiled module finds hi = 994.102 too
    x = _nuclei(seed=13)[None]
    np.testing.assert_array_equal(torch.jit.script(Normalize(MODE))(torch.from_numpy(x)).numpy(),
                                  _reference(x))  # fmt: skip


# --------------------------------------------------------------------------- real data
def test_bbbc039_image_with_a_saturated_streak(shared_data):
    # IXMtest_L11_s4: 0.21 % of the pixels at 4095 (a bright artifact); its 99.8th percentile
    # is 4095, below the plateau 1177
    root = shared_data("bbbc039") / "cell nuclei" / "images"
    path = next(root.glob("IXMtest_L11_s4_*.tif"))
    raw = io.read_image(path).astype(np.float64)
    assert np.percentile(raw, 99.8) == 4095 and np.percentile(raw[raw < 4095], 99.8) == 1177
    lo = np.percentile(raw, 1)
    got = io.load_image(path, MODE)[0][0]
    np.testing.assert_allclose(got, (raw - lo) / (1177 - lo), rtol=1e-6)
    plain = io.load_image(path, "percentile")[0][0]
    assert float(got[raw == 1177][0]) == pytest.approx(1.0)
    assert float(plain[raw == 1177][0]) < 0.3  # the nuclei 3.5 x dimmer under "percentile"

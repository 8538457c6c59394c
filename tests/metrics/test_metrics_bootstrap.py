"""Paired bootstrap (instembed.metrics.bootstrap) against hand cases and scipy.stats.bootstrap."""

import numpy as np
import pytest
from scipy import stats

from instembed.metrics.bootstrap import paired_bootstrap


def test_equal_differences_give_a_point_interval():
    # every image gains exactly 0.1: every resample's mean difference is 0.1
    a = np.array([0.5, 0.7, 0.9, 0.3])
    r = paired_bootstrap(a, a - 0.1, n_boot=500)
    assert r.diff == pytest.approx(0.1)
    assert r.low == pytest.approx(0.1) and r.high == pytest.approx(0.1)
    assert r.p_not_better == 0.0 and r.n_images == 4


def test_one_image_gain_is_not_significant():
    # 35 images, one goes 0 -> 1 (a single-object image), the rest unchanged: the mean gains
    # 1/35, and a resample leaves that image out with probability (34/35)^35 = 0.362
    b = np.full(35, 0.7)
    b[7] = 0.0
    a = b.copy()
    a[7] = 1.0
    r = paired_bootstrap(a, b, n_boot=20000, seed=1)
    assert r.diff == pytest.approx(1 / 35)
    assert r.low == 0.0  # the lower bound is a resample without image 7
    assert r.p_not_better == pytest.approx((34 / 35) ** 35, abs=0.01)


def test_interval_matches_scipy_paired_percentile_bootstrap():
    rng = np.random.default_rng(3)
    b = rng.uniform(0.4, 0.9, 30)
    a = b + rng.normal(0.02, 0.05, 30)
    ours = paired_bootstrap(a, b, n_boot=40000, seed=2)
    ref = stats.bootstrap(
        (a, b),
        lambda x, y, axis=-1: np.mean(x - y, axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=40000,
        method="percentile",
        confidence_level=0.95,
        random_state=np.random.default_rng(5),
    ).confidence_interval
    assert ours.diff == pytest.approx(np.mean(a - b))
    # two Monte Carlo estimates of the same quantiles: close, not equal
    assert ours.low == pytest.approx(ref.low, abs=0.002)
    assert ours.high == pytest.approx(ref.high, abs=0.002)


@pytest.mark.parametrize(
    "a, b, kw, message",
    [
        ([1, 2], [1], {}, "same images"),
        ([1], [1], {}, "at least 2 images"),
        ([1, np.nan], [1, 2], {}, "finite"),
        ([1, 2], [1, 2], {"n_boot": 0}, "n_boot"),
        ([1, 2], [1, 2], {"level": 1.0}, "level"),
    ],
)
def test_bad_input_is_refused(a, b, kw, message):
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(a, b, **kw)

"""Object sizes (instembed.data.sizes): equivalent diameters, the training size range, and the
auto / diameter resize factors, against hand-derived values."""

import math

import numpy as np
import pytest

from instembed.data.sample import Sample
from instembed.data.sizes import (
    agrees,
    auto_scale,
    auto_search,
    check_sizes,
    closer_to_median,
    diameter_scale,
    equivalent_diameters,
    image_diameter,
    training_sizes,
)


def _d(area: float) -> float:  # equivalent diameter by hand
    return 2 * math.sqrt(area / math.pi)


def test_equivalent_diameters_of_a_label_image_and_a_stack():
    lab = np.zeros((30, 30), np.int32)
    lab[0:10, 0:10] = 1  # 100 px
    lab[20:22, 20:28] = 3  # 16 px; id 2 absent: skipped
    np.testing.assert_allclose(equivalent_diameters(lab), [_d(100), _d(16)])
    stack = np.zeros((3, 12, 12), bool)
    stack[0, :5, :5] = True  # 25 px
    stack[2, 2:11, 2:11] = True  # 81 px, overlaps the first: each mask counted whole
    np.testing.assert_allclose(equivalent_diameters(stack), [_d(25), _d(81)])  # empty skipped
    # a disc of radius r has equivalent diameter close to 2 r
    yy, xx = np.mgrid[:101, :101]
    disc = ((yy - 50) ** 2 + (xx - 50) ** 2 <= 30**2).astype(np.int32)
    assert abs(image_diameter(disc) - 60) < 0.2
    assert math.isnan(image_diameter(np.zeros((5, 5), np.int32)))
    with pytest.raises(ValueError, match=r"\(H, W\) or a mask stack"):
        equivalent_diameters(np.zeros(5, np.int32))


def test_image_diameter_is_the_median_over_objects():
    lab = np.zeros((40, 40), np.int32)
    lab[0:2, 0:2] = 1  # 4 px
    lab[10:20, 10:20] = 2  # 100 px
    lab[30:39, 30:39] = 3  # 81 px
    assert image_diameter(lab) == pytest.approx(_d(81))


def _sample(areas: list[int]) -> Sample:
    lab = np.zeros((64, 64), np.int32)
    for i, a in enumerate(areas, start=1):  # one row strip of a px per object
        lab[4 * i, :a] = i
    return Sample(image=np.zeros((1, 64, 64), np.float32), instances=lab)


def test_training_sizes_are_percentiles_of_the_per_image_medians():
    a, b, c = _d(10), _d(30), _d(50)
    samples = [_sample([10]), _sample([20, 30, 40]), _sample([]), _sample([50, 50])]
    low, median, high = training_sizes(samples)  # the empty image is left out
    # numpy's linear percentiles of [a, b, c]: rank 0.05 * 2 = 0.1, 1, 1.9
    assert low == pytest.approx(a + 0.1 * (b - a), abs=0.01)
    assert median == pytest.approx(b, abs=0.01)
    assert high == pytest.approx(b + 0.9 * (c - b), abs=0.01)
    assert training_sizes([_sample([])]) is None


@pytest.mark.parametrize(
    "bad", [[1, 2], [3, 2, 4], [0, 1, 2], [1, float("nan"), 3], "123", "auto", 5]
)
def test_check_sizes_refuses_what_is_not_low_median_high(bad):
    with pytest.raises(ValueError, match=r"data.object_diameter: expected \[low, median, high\]"):
        check_sizes(bad)


def test_check_sizes_accepts_three_ordered_numbers():
    assert check_sizes((5, 5, 9)) == [5.0, 5.0, 9.0]
    assert check_sizes(None) is None


def test_auto_scale_by_hand():
    sizes = [10.0, 20.0, 40.0]
    assert auto_scale(25.0, sizes) == 1.0  # inside the range
    assert auto_scale(45.0, sizes) == pytest.approx(20 / 45)  # above it, and 2.25x the median
    assert auto_scale(60.0, sizes) == pytest.approx(20 / 60)
    assert auto_scale(1000.0, sizes) == 0.25  # 50x: clipped
    # below the range: never enlarged (noise fragments look like small objects)
    assert auto_scale(5.0, sizes) == 1.0
    assert auto_scale(2.0, sizes) == 1.0
    # a narrow range: above it, but within 1.25x of the median -> left alone
    narrow = [33.6, 35.8, 36.5]
    assert auto_scale(37.8, narrow) == 1.0
    assert auto_scale(54.0, narrow) == pytest.approx(35.8 / 54)
    assert auto_scale(float("nan"), sizes) == 1.0  # nothing found
    assert auto_scale(60.0, None) == 1.0  # no recorded sizes


def test_auto_scale_ratio_boundary():
    # above [10, 35], but not more than 1.25x the median 30 (37.5): left alone
    assert auto_scale(37.5, [10.0, 30.0, 35.0]) == 1.0
    assert auto_scale(37.6, [10.0, 30.0, 35.0]) == pytest.approx(30 / 37.6)
    # more than 1.25x the median 20, but inside the range [10, 40]: left alone
    assert auto_scale(35.0, [10.0, 20.0, 40.0]) == 1.0
    assert auto_scale(40.5, [10.0, 20.0, 40.0]) == pytest.approx(20 / 40.5)


class TableSegment:
    """A stand-in for the segmentation of one image: the size measured at each factor is
    read from ``sizes_at`` (a function of the factor); it records the factors it was given."""

    def __init__(self, sizes_at):
        self.sizes_at, self.factors = sizes_at, []

    def __call__(self, factor):
        self.factors.append(factor)
        return f"result at {factor:.4f}", self.sizes_at(factor)


def test_auto_search_steps_down_while_the_fragments_are_too_large():
    # BBBC039-like: training median 28, range [26, 30]; objects of 56 px shatter into pieces
    # of 0.7x their size while they are more than 1.5x the median (42 px), are found whole below
    sizes = [26.0, 28.0, 30.0]

    def fragments(factor):
        size = 56.0 * factor
        return 0.7 * size if size > 42.0 else size

    seg = TableSegment(fragments)
    result, factor, trail = auto_search(seg, sizes)
    # pass 1: 39.2 px (> 35 = 1.25 x 28) -> factor 28 / 39.2 = 0.7143
    # pass 2: 56 x 0.7143 = 40 px, found whole -> 40 > 35 -> factor 0.7143 x 28 / 40 = 0.5
    # pass 3: 28 px, the median: kept (the search would stop here anyway)
    f2 = 28 / 39.2
    f3 = f2 * 28 / 40.0
    assert seg.factors == pytest.approx([1.0, f2, f3])
    assert f3 == pytest.approx(0.5)
    assert factor == pytest.approx(0.5) and result == "result at 0.5000"
    assert [v for pair in trail for v in pair] == pytest.approx([1.0, 39.2, f2, 40.0, f3, 28.0])


def test_auto_search_keeps_the_pass_closest_to_the_median():
    sizes = [26.0, 28.0, 30.0]
    # one step lands at 31 px (not more than 1.25 x 28 = 35: the search stops) and is kept
    seg = TableSegment(lambda f: 42.0 if f == 1.0 else 46.5 * f)
    result, factor, trail = auto_search(seg, sizes)
    assert len(trail) == 2 and factor == pytest.approx(28 / 42)
    assert trail[1][1] == pytest.approx(31.0)  # closer to 28 than 42
    # the shrunk pass shatters into 10 px pieces: farther from 28 than 42 px -> scale 1 kept;
    # 10 px is below the range, so the search stops (never enlarges)
    seg = TableSegment(lambda f: 42.0 if f == 1.0 else 10.0)
    result, factor, trail = auto_search(seg, sizes)
    assert factor == 1.0 and result == "result at 1.0000" and len(trail) == 2
    # 80 px -> 28 / 80 = 0.35 -> 50 px there -> 0.35 x 28 / 50 = 0.196, clipped to 0.25 ->
    # nothing found there (NaN): the best of the first two is kept
    seg = TableSegment(lambda f: {1.0: 80.0}.get(f, 50.0 if f > 0.3 else float("nan")))
    result, factor, trail = auto_search(seg, sizes)
    assert [round(f, 4) for f, _ in trail] == [1.0, 0.35, 0.25]
    assert math.isnan(trail[2][1]) and factor == pytest.approx(0.35)


def test_auto_search_limits():
    sizes = [26.0, 28.0, 30.0]
    # inside the range, or nothing found, or no recorded sizes: one pass at scale 1
    for size_at, rec in (
        (lambda f: 29.0, sizes),
        (lambda f: 35.0, sizes),  # above the range, but not more than 1.25 x 28
        (lambda f: float("nan"), sizes),
        (lambda f: 90.0, None),
    ):
        seg = TableSegment(size_at)
        result, factor, trail = auto_search(seg, rec)
        assert factor == 1.0 and len(trail) == 1 and seg.factors == [1.0]
        assert result == "result at 1.0000"
    # always far too large: clipped at 1/4 after two steps (28/400 clipped, then unchanged)
    seg = TableSegment(lambda f: 400.0)
    _, factor, trail = auto_search(seg, sizes)
    assert seg.factors == [1.0, 0.25] and factor == 1.0  # 400 px at 0.25 is no closer
    # the number of passes
    seg = TableSegment(lambda f: 60.0 * f**0.5)
    auto_search(seg, sizes, passes=2)
    assert len(seg.factors) == 2
    with pytest.raises(ValueError, match="at least 1 segmentation"):
        auto_search(seg, sizes, passes=0)


def test_closer_to_median():
    sizes = [10.0, 20.0, 40.0]
    assert closer_to_median(25.0, 60.0, sizes) is True  # |log 25/20| < |log 60/20|
    assert closer_to_median(8.0, 60.0, sizes) is True  # 20/8 = 2.5 < 60/20 = 3
    assert closer_to_median(6.0, 60.0, sizes) is False  # 20/6 = 3.33 > 3
    assert closer_to_median(4.0, 8.0, sizes) is False  # shattered further: 5 > 2.5
    assert not closer_to_median(float("nan"), 60.0, sizes)


def test_diameter_scale():
    assert diameter_scale(40, [10, 20, 30]) == pytest.approx(0.5)
    assert diameter_scale(1, [10, 20, 30]) == 4.0  # clipped
    with pytest.raises(ValueError, match="no recorded training object size"):
        diameter_scale(40, None)
    for bad in (0, -3, float("inf"), "x"):
        with pytest.raises(ValueError, match="expected an object diameter in pixels > 0"):
            diameter_scale(bad, [10, 20, 30])


def test_auto_search_from_a_size_models_start():
    sizes = [26.0, 28.0, 30.0]  # agreement band: 28 / 1.25 = 22.4 .. 28 x 1.25 = 35
    # objects of 56 px; the size model says so: start at 0.5, found whole at 28 px: one pass
    seg = TableSegment(lambda f: 56.0 * f)
    result, factor, trail = auto_search(seg, sizes, start=0.5)
    assert seg.factors == [0.5] and factor == 0.5 and result == "result at 0.5000"
    # a start to enlarge (objects of 14 px, start 2): 28 px there, kept
    seg = TableSegment(lambda f: 14.0 * f)
    assert auto_search(seg, sizes, start=2.0)[1] == 2.0 and seg.factors == [2.0]
    # the size model was wrong (objects are 28 px; it said 61.9): at 0.452 they measure 12.7 px,
    # outside the band -> start over at 1, where they are within the range: two passes, scale 1
    seg = TableSegment(lambda f: 28.0 * f)
    result, factor, trail = auto_search(seg, sizes, start=28 / 61.9)
    assert seg.factors == pytest.approx([28 / 61.9, 1.0]) and factor == 1.0
    assert result == "result at 1.0000" and len(trail) == 2
    # the restart is not counted in the passes: objects of 60 px that shatter to 42 px at
    # scale 1 still get their steps after a wrong start at 2
    seg = TableSegment(lambda f: 60.0 * f if 60.0 * f <= 42 else 0.7 * 60.0 * f)
    result, factor, trail = auto_search(seg, sizes, start=2.0, passes=3)
    assert len(seg.factors) == 4 and seg.factors[:2] == [2.0, 1.0]


def test_agrees():
    sizes = [26.0, 28.0, 30.0]
    assert agrees(22.4, sizes) and agrees(35.0, sizes) and agrees(28.0, sizes)
    assert not agrees(22.3, sizes) and not agrees(35.1, sizes)
    assert not agrees(float("nan"), sizes) and not agrees(28.0, None)

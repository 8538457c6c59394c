"""tune_thresholds' incumbent rule: keep the thresholds in use unless beaten by more than ε.

Most tests replace the clustering + evaluation (``instembed.engine.tune.evaluate_outputs``) by
a hand-written score table keyed by the thresholds, so every expected choice below follows
from the table by hand. All scores are multiples of 1/32, exact in binary floating point, so
the "gain == keep_within" boundary is tested exactly.
"""

import itertools
import logging
import math

import pytest

import instembed.engine.tune as tune
from conftest import two_object_scene
from instembed.engine.config import ClusterConfig
from instembed.engine.tune import METRICS, tune_thresholds

GRID = {"seed_thresh": [0.6, 0.7, 0.8], "fg_thresh": [0.3, 0.5]}
# (fg_thresh, seed_thresh) -> (AP_dsb@0.5, COCO AP). (0.3, 0.8) and (0.5, 0.7) tie on AP_dsb at
# 26/32; COCO AP (8/32 against 16/32) makes (0.5, 0.7), the later of the two in grid order, the
# best setting. (0.4, 0.875) is off the grid (an incumbent the grid does not try).
TABLE = {
    (0.3, 0.6): (16 / 32, 4 / 32),
    (0.3, 0.7): (24 / 32, 12 / 32),
    (0.3, 0.8): (26 / 32, 8 / 32),
    (0.5, 0.6): (20 / 32, 6 / 32),
    (0.5, 0.7): (26 / 32, 16 / 32),
    (0.5, 0.8): (22 / 32, 10 / 32),
    (0.4, 0.875): (25 / 32, 14 / 32),
}
BEST = {"fg_thresh": 0.5, "seed_thresh": 0.7}


def _metrics(fg, seed):
    ap_dsb, ap = TABLE[(fg, seed)]
    # the other summary keys: distinct, recognisable values derived from the same two numbers
    m = {k: ap_dsb / 2 for k in METRICS}
    m.update({"AP_dsb@0.5": ap_dsb, "AP": ap, "PQ": ap_dsb - ap, "TP@0.5": fg * 10 + seed})
    return m


@pytest.fixture
def table(monkeypatch):
    """Replaces the evaluation by TABLE; returns the list of (fg, seed) evaluated, in order."""
    calls = []

    def fake_evaluate(outputs, samples, cc):
        key = (cc.params["fg_thresh"], cc.params["seed_thresh"])
        calls.append(key)
        return _metrics(*key)

    monkeypatch.setattr(tune, "evaluate_outputs", fake_evaluate)
    return calls


CC = ClusterConfig(method="seeded", params={"fg_thresh": 0.5, "seed_thresh": 0.9, "min_size": 4})
SAMPLES = [object()]  # the fake evaluation never looks at them


def _expected_row(fg, seed, **extra):
    m = _metrics(fg, seed)
    return {"params": {"fg_thresh": fg, "seed_thresh": seed}, **{k: m[k] for k in METRICS}, **extra}


# ------------------------------------------------------------------ (1) best beats incumbent
@pytest.mark.parametrize("keep_within", [0.0, 1 / 32, 2 / 32 - 1 / 1024])
def test_best_replaces_the_incumbent_when_it_gains_more_than_keep_within(table, keep_within):
    # incumbent (0.3, 0.7): 24/32; best (0.5, 0.7): 26/32; gain 2/32 > keep_within
    res = tune_thresholds(
        [None], SAMPLES, CC, grid=GRID, incumbent={"fg_thresh": 0.3, "seed_thresh": 0.7},
        keep_within=keep_within,
    )  # fmt: skip
    assert res.params == BEST
    assert res.metrics == _metrics(0.5, 0.7)
    assert len(res.rows) == 6 and len(table) == 6  # the incumbent is on the grid: no extra row


# ----------------------------------------------------------- (2) gain within ε: incumbent kept
@pytest.mark.parametrize("keep_within", [2 / 32, 3 / 32, 1.0])
def test_incumbent_kept_with_its_own_metrics_when_the_gain_is_within(table, keep_within, caplog):
    caplog.set_level(logging.INFO, logger="instembed.engine.tune")
    res = tune_thresholds(
        [None], SAMPLES, CC, grid=GRID, incumbent={"fg_thresh": 0.3, "seed_thresh": 0.7},
        keep_within=keep_within,
    )  # fmt: skip
    assert res.params == {"fg_thresh": 0.3, "seed_thresh": 0.7}
    assert res.metrics["AP_dsb@0.5"] == 24 / 32 and res.metrics["AP"] == 12 / 32
    assert res.metrics == _metrics(0.3, 0.7)
    # the grid's rows, in grid order; only the incumbent's is marked
    expected = [_expected_row(f, s) for f in (0.3, 0.5) for s in (0.6, 0.7, 0.8)]
    expected[1]["incumbent"] = True
    assert res.rows == expected
    assert sorted(table) == sorted(k for k in TABLE if k != (0.4, 0.875))  # each once
    # the log line names both numbers: the incumbent's 0.75 and the best's 0.8125
    kept = [r.getMessage() for r in caplog.records if "incumbent" in r.getMessage()]
    assert any("0.7500" in msg and "0.8125" in msg for msg in kept), kept


def test_incumbent_filled_from_cluster_params(table):
    """Only seed_thresh given: fg_thresh comes from cluster.params (0.5): incumbent (0.5, 0.6),
    20/32; best 26/32; gain 6/32. Within 6/32 it stays, within 5/32 it goes."""
    inc = {"seed_thresh": 0.6}
    res = tune_thresholds([None], SAMPLES, CC, grid=GRID, incumbent=inc, keep_within=6 / 32)
    assert res.params == {"fg_thresh": 0.5, "seed_thresh": 0.6}
    assert res.metrics == _metrics(0.5, 0.6)
    res = tune_thresholds([None], SAMPLES, CC, grid=GRID, incumbent=inc, keep_within=5 / 32)
    assert res.params == BEST
    assert inc == {"seed_thresh": 0.6} and CC.params["fg_thresh"] == 0.5  # inputs untouched


def test_metric_tie_at_zero_goes_to_the_incumbent(table):
    """(0.3, 0.8) ties with the best on AP_dsb (26/32) but loses on COCO AP; as the incumbent
    its gain is 0 <= keep_within 0, so it stays."""
    inc = {"fg_thresh": 0.3, "seed_thresh": 0.8}
    res = tune_thresholds([None], SAMPLES, CC, grid=GRID, incumbent=inc, keep_within=0.0)
    assert res.params == inc and res.metrics["AP"] == 8 / 32


# ------------------------------------------------------- (3) incumbent off the grid: extra row
def test_incumbent_off_the_grid_is_scored_once_as_an_extra_row(table):
    # incumbent (0.4, 0.875): 25/32; best 26/32; gain 1/32
    inc = {"fg_thresh": 0.4, "seed_thresh": 0.875}
    seen = []
    res = tune_thresholds(
        [None], SAMPLES, CC, grid=GRID, incumbent=inc, keep_within=1 / 32,
        progress=lambda done, total: seen.append((done, total)),
    )  # fmt: skip
    assert res.params == inc
    assert res.metrics == _metrics(0.4, 0.875)
    assert len(res.rows) == 7
    assert res.rows[-1] == _expected_row(0.4, 0.875, incumbent=True)
    assert all("incumbent" not in r for r in res.rows[:-1])
    assert table.count((0.4, 0.875)) == 1 and len(table) == 7
    assert seen == [(i, 7) for i in range(1, 8)]
    table.clear()
    res = tune_thresholds([None], SAMPLES, CC, grid=GRID, incumbent=inc, keep_within=1 / 64)
    assert res.params == BEST and res.metrics == _metrics(0.5, 0.7)
    assert len(res.rows) == 7 and table.count((0.4, 0.875)) == 1


def test_off_grid_incumbent_from_cluster_params_wins_outright(table):
    """Grid (fg 0.3, seed 0.6 / 0.7); incumbent: seed 0.875 given, fg 0.4 from cluster.params:
    25/32 beats both grid settings (16/32, 24/32), so it is chosen even with keep_within 0."""
    cc = ClusterConfig(method="seeded", params={"fg_thresh": 0.4, "seed_thresh": 0.6})
    grid = {"fg_thresh": [0.3], "seed_thresh": [0.6, 0.7]}
    res = tune_thresholds([None], SAMPLES, cc, grid=grid, incumbent={"seed_thresh": 0.875})
    assert res.params == {"fg_thresh": 0.4, "seed_thresh": 0.875}
    assert [r["params"]["seed_thresh"] for r in res.rows] == [0.6, 0.7, 0.875]


# --------------------------------------------------------------- (4) default: the old choice
def test_without_incumbent_rows_and_choice_match_a_slow_reference(table):
    res = tune_thresholds([None], SAMPLES, CC, grid=GRID)
    res0 = tune_thresholds([None], SAMPLES, CC, grid=GRID, incumbent=None, keep_within=0.0)
    # reference: every grid point in grid order (keys sorted: fg_thresh, then seed_thresh),
    # the argmax over the table restricted to the grid by (AP_dsb@0.5, then COCO AP)
    points = list(itertools.product(GRID["fg_thresh"], GRID["seed_thresh"]))
    best_point = max(points, key=lambda p: TABLE[p])
    assert best_point == (0.5, 0.7)  # the AP tie-break at 26/32, as TABLE's comment says
    for r in (res, res0):
        assert r.rows == [_expected_row(*p) for p in points]
        assert r.params == {"fg_thresh": best_point[0], "seed_thresh": best_point[1]}
        assert r.metrics == _metrics(*best_point)
    # keep_within without an incumbent changes nothing
    res1 = tune_thresholds([None], SAMPLES, CC, grid=GRID, keep_within=1.0)
    assert (res1.params, res1.rows) == (res.params, res.rows)


# ------------------------------------------------------------------------ (5) bad arguments
@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"keep_within": -0.01}, ["keep_within", ">= 0", "-0.01"]),
        ({"keep_within": math.nan}, ["keep_within", ">= 0", "nan"]),
        ({"keep_within": "0.1"}, ["keep_within", "number", "'0.1'"]),
        ({"incumbent": {"seed_thrsh": 0.8}}, ["incumbent", "seed_thrsh", "fg_thresh", "min_size"]),
        ({"incumbent": [0.3, 0.8]}, ["incumbent", "dict", "list"]),
    ],
)
def test_bad_arguments_raise_before_any_evaluation(table, kwargs, words):
    with pytest.raises(ValueError) as err:
        tune_thresholds([None], SAMPLES, CC, grid=GRID, **kwargs)
    for w in words:
        assert w in str(err.value), (w, str(err.value))
    assert table == []


def test_incumbent_without_a_value_for_a_grid_key_is_refused(table):
    cc = ClusterConfig(method="seeded", params={"min_size": 4})  # no fg_thresh anywhere
    with pytest.raises(ValueError, match=r"incumbent.*\['fg_thresh'\]"):
        tune_thresholds([None], SAMPLES, cc, grid=GRID, incumbent={"seed_thresh": 0.7})
    assert table == []


# ------------------------------------------------------- with the real clustering and metrics
def test_real_clustering_keeps_the_incumbent_within_half_an_image():
    """Two square objects, embeddings at (0, 0) and (4, 0), seed scores 0.95 (A) and 0.65 (B).
    seed_thresh 0.7 finds A only: TP 1, FN 1, AP_dsb 1/2; 0.6 finds both: AP_dsb 1. With the
    incumbent 0.7 the gain of 0.6 is 1/2: kept within 0.5, replaced within 0.4."""
    out, sample = two_object_scene()
    cc = ClusterConfig("seeded", {"fg_thresh": 0.5, "prob_thresh": 0.5, "min_size": 4})
    grid = {"seed_thresh": [0.7, 0.6]}
    inc = {"seed_thresh": 0.7}
    kept = tune_thresholds([out], [sample], cc, grid=grid, incumbent=inc, keep_within=0.5)
    assert kept.params == inc
    assert kept.metrics["AP_dsb@0.5"] == pytest.approx(0.5)
    assert (kept.metrics["TP@0.5"], kept.metrics["FN@0.5"]) == (1, 1)
    assert [r.get("incumbent", False) for r in kept.rows] == [True, False]
    moved = tune_thresholds([out], [sample], cc, grid=grid, incumbent=inc, keep_within=0.4)
    assert moved.params == {"seed_thresh": 0.6}
    assert moved.metrics["AP_dsb@0.5"] == pytest.approx(1.0)
    assert (moved.metrics["TP@0.5"], moved.metrics["FN@0.5"]) == (2, 0)

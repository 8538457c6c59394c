"""The recorded train/val splits of instembed.data.splits: deterministic, disjoint, reproducible."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from instembed.data.splits import (
    SEED,
    VAL_IDS,
    make_split,
    split_dataset,
    split_indices,
    val_ids,
)


def test_make_split_counts_disjoint_and_sorted():
    names = [f"img{i:03d}" for i in range(50)][::-1]  # unsorted input
    train, val = make_split(names)
    # round(0.2 * 50) = 10 validation names, the other 40 training
    assert len(val) == 10 and len(train) == 40
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(names)
    assert train == sorted(train) and val == sorted(val)


def test_make_split_is_the_documented_permutation():
    # independent re-derivation of steps 1-3 of the module docstring
    names = ["c", "a", "e", "b", "d"]
    ordered = sorted(names)
    perm = np.random.default_rng(SEED).permutation(5)
    expected_val = sorted(ordered[i] for i in perm[:1])  # round(0.2 * 5) = 1
    assert make_split(names)[1] == expected_val
    # the input order does not matter, the seed does
    assert make_split(names[::-1]) == make_split(names)
    other = [make_split([f"n{i}" for i in range(30)], seed=s)[1] for s in (1, 2, 3)]
    assert len({tuple(v) for v in other}) > 1


def test_make_split_rejects_bad_input():
    with pytest.raises(ValueError, match="val_fraction"):
        make_split(["a", "b"], val_fraction=1.0)
    with pytest.raises(ValueError, match="unique"):
        make_split(["a", "a"])
    with pytest.raises(ValueError, match="no recorded split"):
        val_ids("cvppp")


def test_recorded_val_counts():
    # 20 % of the shared copies: 150 -> 30, 50 -> 10, 173 -> round(34.6) = 35
    assert {k: len(v) for k, v in VAL_IDS.items()} == {"bbbc039": 30, "bbbc010": 10, "dsb2018": 35}
    for ids in VAL_IDS.values():
        assert list(ids) == sorted(set(ids))


def test_split_indices_on_items_and_strict_check():
    ids = val_ids("bbbc010")
    others = ["Z01", "Z02", "Z03"]
    reader = SimpleNamespace(items=[SimpleNamespace(name=n) for n in [*others, *ids]], root="r")
    train, val = split_indices(reader, "bbbc010")
    assert train == [0, 1, 2] and val == list(range(3, 3 + len(ids)))
    partial = SimpleNamespace(items=reader.items[:5], root="r")
    with pytest.raises(ValueError, match="recorded bbbc010 validation ids are not in"):
        split_indices(partial, "bbbc010")
    assert split_indices(partial, "bbbc010", strict=False) == ([0, 1, 2], [3, 4])


@pytest.mark.parametrize("name", ["bbbc039", "bbbc010", "dsb2018"])
def test_recorded_split_reproduces_on_shared_data(shared_data, name):
    from instembed.data.readers import open_dataset

    reader = open_dataset(shared_data(name), validate="none")
    names = [item.name for item in reader.items]
    train, val = make_split(names)
    assert tuple(val) == VAL_IDS[name]
    tr_view, val_view = split_dataset(reader, name)
    assert val_view.names == val and sorted(tr_view.names) == train
    assert len(tr_view) + len(val_view) == len(reader)

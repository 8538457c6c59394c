"""``data.split``: the engine reads the recorded train/val split of instembed.data.splits."""

import numpy as np
import pytest
from PIL import Image

from instembed.data.splits import val_ids
from instembed.engine.build import load_samples
from instembed.engine.config import DataConfig


@pytest.mark.data
def test_recorded_split_of_bbbc039(shared_data):
    root = shared_data("bbbc039")
    dc = DataConfig(path=str(root), format="bbbc039", split="bbbc039")
    train, val = load_samples(dc, seed=0)
    # the recorded split: the val items are exactly the recorded ids, the rest (150 - 30) train
    assert sorted(val.names) == sorted(val_ids("bbbc039"))
    assert len(val) == len(val_ids("bbbc039")) == 30
    assert len(train) == 150 - 30
    assert not set(train.names) & set(val.names)
    # independent of data.val_fraction (which only applies without a split)
    dc2 = DataConfig(path=str(root), format="bbbc039", split="bbbc039", val_fraction=0.5)
    assert load_samples(dc2, seed=0)[1].names == val.names


def test_split_of_another_data_set_is_a_clear_error(tmp_path):
    # a generic folder whose names are not the recorded BBBC039 ids
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "images" / f"{name}.png")
        lab = np.zeros((8, 8), np.uint8)
        lab[2:4, 2:4] = 1
        Image.fromarray(lab).save(tmp_path / "labels" / f"{name}.png")
    dc = DataConfig(path=str(tmp_path), format="folder", split="bbbc039")
    with pytest.raises(ValueError, match=r"data\.split: .*validation ids are not in this data set"):
        load_samples(dc, seed=0)
    with pytest.raises(ValueError, match=r"data\.split: no recorded split for data set 'cvppp'"):
        load_samples(DataConfig(path=str(tmp_path), format="folder", split="cvppp"), seed=0)

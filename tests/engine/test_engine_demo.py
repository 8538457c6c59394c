import json

import pytest

from instembed.engine.config import config_to_dict
from instembed.engine.demo import demo_config


def test_demo_models_differ_only_in_semiconv():
    a = config_to_dict(demo_config(semiconv=False, steps=10))
    b = config_to_dict(demo_config(semiconv=True, steps=10))
    assert a["model"]["params"].pop("semiconv") is False
    assert b["model"]["params"].pop("semiconv") is True
    assert a == b
    # the loss margin 2 * delta_d must fit between neighbouring dot centres, which are
    # spacing * coord_scale = 1 embedding unit apart for the semi-conv model
    m = demo_config(True, 10)
    assert (
        2 * m.loss.params["delta_d"]
        < m.data.synth_params["spacing"] * m.model.params["coord_scale"]
    )


@pytest.mark.slow
def test_demo_shows_the_coloring_dilemma(tmp_path):
    import torch

    from instembed.cli import main

    n = torch.get_num_threads()
    try:
        assert main(["demo", "--out", str(tmp_path), "--steps", "300"]) == 0
    finally:
        torch.set_num_threads(n)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["semiconv"]["ARI"] > 0.95 and metrics["semiconv"]["AP"] > 0.8
    assert metrics["conv"]["ARI"] < 0.2 and metrics["conv"]["AP"] < 0.1
    report = (tmp_path / "report.md").read_text()
    assert "segmentation.png" in report and (tmp_path / "embedding_space.png").is_file()

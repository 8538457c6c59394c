"""Clustering-threshold tuning (instembed.engine.tune, ``instembed tune``)."""

import shutil

import numpy as np
import pytest
import torch

from instembed.data.sample import Sample
from instembed.engine.config import ClusterConfig
from instembed.engine.tune import default_grid, evaluate_outputs, tune_thresholds
from instembed.structures import Outputs


def _scene():
    """Two square objects whose embeddings sit at (0, 0) and (4, 0); object A's seed score is
    0.95, object B's only 0.65: a seed threshold of 0.7 misses B, 0.6 finds it."""
    h, w = 16, 20
    gt = np.zeros((h, w), np.int32)
    gt[2:8, 2:8] = 1
    gt[9:15, 11:17] = 2
    emb = torch.zeros(2, h, w)
    emb[0][torch.from_numpy(gt == 2)] = 4.0
    seed = torch.zeros(h, w)
    seed[torch.from_numpy(gt == 1)] = 0.95
    seed[torch.from_numpy(gt == 2)] = 0.65
    out = Outputs(embedding=emb[None], seed=seed[None, None], sigma=torch.ones(1, 1, h, w))
    sample = Sample(image=np.zeros((1, h, w), np.float32), instances=gt)
    return out, sample


def test_tuning_picks_the_threshold_that_finds_both_objects():
    out, sample = _scene()
    cc = ClusterConfig(
        method="seeded", params={"fg_thresh": 0.5, "seed_thresh": 0.9, "min_size": 4}
    )
    grid = {"seed_thresh": [0.8, 0.7, 0.6], "prob_thresh": [0.5]}
    res = tune_thresholds([out], [sample], cc, grid=grid)
    assert len(res.rows) == 3
    by_thresh = {r["params"]["seed_thresh"]: r["AP_dsb@0.5"] for r in res.rows}
    assert by_thresh[0.8] == pytest.approx(0.5) and by_thresh[0.7] == pytest.approx(0.5)
    assert by_thresh[0.6] == pytest.approx(1.0)  # TP 2 / (TP + FP + FN) = 2 / 2
    assert res.params == {"prob_thresh": 0.5, "seed_thresh": 0.6}
    # the reported metrics are those of an independent evaluation with the chosen parameters
    again = evaluate_outputs(
        [out], [sample], ClusterConfig(method="seeded", params={**cc.params, **res.params})
    )
    assert again == res.metrics
    assert cc.params["seed_thresh"] == 0.9  # the input config is left alone


def test_default_grids_and_errors():
    _, sample = _scene()
    stack = Sample(image=sample.image, instances=np.stack([sample.instances == 1] * 2))
    assert "overlap_thresh" not in default_grid("seeded", [sample])
    assert None in default_grid("seeded", [stack])["overlap_thresh"]
    assert set(default_grid("meanshift")) == {"bandwidth"}
    assert default_grid("kmeans") == {}
    out, _ = _scene()
    cc = ClusterConfig(method="seeded", params={"min_size": 4})
    with pytest.raises(ValueError, match="at least one"):
        tune_thresholds([], [], cc)
    with pytest.raises(ValueError, match="unknown metric"):
        tune_thresholds([out], [sample], cc, grid={"seed_thresh": [0.6]}, metric="nope")


def test_tune_cli_writes_a_checkpoint_with_the_chosen_thresholds(shared_data, tmp_path, capsys):
    """The shipped nuclei model on the StarDist example image, tuned between two seed
    thresholds; the written checkpoint predicts with the better one."""
    from instembed.cli import main
    from instembed.data.readers import open_dataset
    from instembed.engine.predict import Predictor
    from instembed.metrics import evaluate_image

    src = shared_data("stardist_example") / "stardist" / "data" / "images"
    (tmp_path / "d" / "images").mkdir(parents=True)
    (tmp_path / "d" / "labels").mkdir()
    shutil.copy(src / "img2d.tif", tmp_path / "d" / "images" / "a.tif")
    shutil.copy(src / "mask2d.tif", tmp_path / "d" / "labels" / "a.tif")
    args = ["tune", "--model", "bbbc039-nuclei", "--data", str(tmp_path / "d")]
    args += [
        "--format",
        "folder",
        "--grid",
        "seed_thresh=0.3,0.97",
        "--out",
        str(tmp_path / "t.pt"),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "chosen:" in printed and "seed_thresh" in printed

    tuned = Predictor.from_spec(tmp_path / "t.pt")
    sample = open_dataset(tmp_path / "d", format="folder", **tuned.cfg.data.reader_params)[0]
    scores = {}
    for t in (0.3, 0.97):
        p = Predictor.from_spec("bbbc039-nuclei")
        p.cluster.params["seed_thresh"] = t
        pred = p(sample.image)
        scores[t] = evaluate_image(sample.instances, pred.labels, scores=pred.scores)["AP_dsb@0.5"]
    best = max(scores, key=scores.get)
    assert scores[0.3] != scores[0.97]
    assert tuned.cluster.params["seed_thresh"] == best
    assert main(args[:-1] + [str(tmp_path / "t.yaml")]) != 0
    assert "--out must name a .pt file" in capsys.readouterr().err

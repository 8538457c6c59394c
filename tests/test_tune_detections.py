"""``instembed tune`` on a Mask R-CNN run: the ``detections`` post-processing's grid (score
threshold, NMS IoU, mask threshold) is searched and the setting with the best metric on the
annotated images is chosen, through the CLI.

The checkpoint is a real (untrained) ``maskrcnn`` model; its raw detections are replaced by a
fixed set (``Predictor.outputs`` monkeypatched) whose best setting is known by hand:

* ground truth: objects A (rows 2..9, cols 2..9) and B (rows 18..27, cols 16..27);
* detections (soft masks of probability 0.8 inside): A (score 0.9), A' = A shifted by 3 columns
  (score 0.85; mask IoU with A = 40 / 88 = 0.45), B (score 0.6), C, a false positive on empty
  background (score 0.4).

AP_dsb@0.5 = TP / (TP + FP + FN) per setting (a thresholded mask of probability 0.8 at
``mask_thresh`` 0.9 is empty, so nothing is found there):

* score 0.7: A, A' -> NMS 0.3 drops A' (0.45 > 0.3): TP 1, FN 1 -> 1/2; NMS 0.5 / 0.7 keep A'
  (IoU with A 0.45 but it matches nothing else): TP 1, FP 1, FN 1 -> 1/3;
* score 0.5: A, A', B -> NMS 0.3: TP 2 -> **1**; NMS 0.5 / 0.7: TP 2, FP 1 -> 2/3;
* score 0.3: + C -> NMS 0.3: TP 2, FP 1 -> 2/3; NMS 0.5 / 0.7: TP 2, FP 2 -> 1/2;
* mask_thresh 0.9: 0 everywhere.

The unique best is score_thresh 0.5, nms_iou 0.3, mask_thresh 0.5.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from instembed.structures import Instances, Outputs

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
H = W = 32
A = (slice(2, 10), slice(2, 10))
A_SHIFT = (slice(2, 10), slice(5, 13))
B = (slice(18, 28), slice(16, 28))
C = (slice(20, 26), slice(2, 8))


def _mask(region) -> torch.Tensor:
    m = torch.zeros(H, W)
    m[region] = 0.8
    return m


def _detections() -> Outputs:
    regions = [A, A_SHIFT, B, C]
    masks = torch.stack([_mask(r) for r in regions])
    boxes = torch.tensor(
        [[r[1].start, r[0].start, r[1].stop, r[0].stop] for r in regions], dtype=torch.float32
    )
    scores = torch.tensor([0.9, 0.85, 0.6, 0.4])
    return Outputs(instances=[Instances(masks=masks, scores=scores, boxes=boxes)])


def test_hand_values_of_the_scene():
    """The mask IoU of A and A' that the expected choice rests on, and the best setting's
    metric from the metrics primitives on its predictions (A and B)."""
    from instembed.cluster.detections import filter_detections, mask_iou
    from instembed.metrics import evaluate_image

    inst = _detections().instances[0]
    iou = mask_iou(inst.masks[:2] >= 0.5)
    assert float(iou[0, 1]) == pytest.approx(40 / 88)  # 8 x 5 overlap, 64 + 64 - 40 union
    best = filter_detections(inst, score_thresh=0.5, nms_iou=0.3, mask_thresh=0.5)
    assert best.scores.tolist() == pytest.approx([0.9, 0.6])
    gt = np.zeros((H, W), np.int32)
    gt[A], gt[B] = 1, 2
    m = evaluate_image(gt, best.labels.numpy(), scores=best.scores.numpy())
    assert m["AP_dsb@0.5"] == 1.0


def test_tune_cli_picks_the_best_detection_thresholds(tmp_path, monkeypatch, capsys):
    from instembed.cli import main
    from instembed.data.io import write_image, write_labels
    from instembed.engine.checkpoint import save_checkpoint
    from instembed.engine.config import config_to_yaml, load_config
    from instembed.engine.predict import Predictor
    from instembed.models.build import build_model

    cfg = load_config(CONFIGS / "touching_cells_maskrcnn.yaml")
    model = build_model(cfg.model.name, in_channels=1, **cfg.model.params)
    ckpt = save_checkpoint(tmp_path / "run.pt", model_state=model.state_dict(),
                           config_yaml=config_to_yaml(cfg), step=1)  # fmt: skip
    (tmp_path / "d" / "images").mkdir(parents=True)
    (tmp_path / "d" / "labels").mkdir()
    gt = np.zeros((H, W), np.int32)
    gt[A], gt[B] = 1, 2
    write_image(tmp_path / "d" / "images" / "a.tif", np.full((1, H, W), 0.5, np.float32))
    write_labels(tmp_path / "d" / "labels" / "a.tif", gt)

    seen = []

    def fixed_outputs(self, image):
        assert self.model.__class__.__name__ == "MaskRCNN"  # the run's model was loaded
        seen.append(tuple(np.asarray(image).shape[-2:]))
        return _detections()

    monkeypatch.setattr(Predictor, "outputs", fixed_outputs)
    out = tmp_path / "tuned.pt"
    rows = tmp_path / "rows.json"
    args = ["tune", "--model", str(ckpt), "--data", str(tmp_path / "d"), "--format", "folder",
            "--grid", "score_thresh=0.3,0.5,0.7", "nms_iou=0.3,0.5,0.7", "mask_thresh=0.5,0.9",
            "--metric", "AP_dsb@0.5", "--no-progress", "--out", str(out), "--json",
            str(rows)]  # fmt: skip
    assert main(args) == 0
    assert seen == [(H, W)]
    printed = capsys.readouterr().out
    assert "method detections" in printed
    chosen = {"score_thresh": 0.5, "nms_iou": 0.3, "mask_thresh": 0.5}
    result = json.loads(rows.read_text())
    assert result["chosen"] == chosen
    assert result["metrics"]["AP_dsb@0.5"] == 1.0
    got = {(r["params"]["score_thresh"], r["params"]["nms_iou"], r["params"]["mask_thresh"]):
           r["AP_dsb@0.5"] for r in result["rows"]}  # fmt: skip
    expected = {}
    for nms in (0.3, 0.5, 0.7):
        low = nms == 0.3  # only NMS at 0.3 removes A' (IoU 0.45 with A)
        expected[(0.7, nms, 0.5)] = 1 / 2 if low else 1 / 3
        expected[(0.5, nms, 0.5)] = 1.0 if low else 2 / 3
        expected[(0.3, nms, 0.5)] = 2 / 3 if low else 1 / 2
        for s in (0.3, 0.5, 0.7):
            expected[(s, nms, 0.9)] = 0.0
    assert got == pytest.approx(expected)
    tuned = Predictor.from_spec(out)
    assert tuned.cluster.method == "detections"
    assert {k: tuned.cluster.params[k] for k in chosen} == chosen

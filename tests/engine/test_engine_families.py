"""A new model family plugs in through the registries alone.

A toy "detector" (fixed boxes, one learnable score) is registered in ``MODELS`` and its loss in
``LOSSES`` from this test; it then goes through ``instembed train`` (the Trainer), ``predict``,
``evaluate`` and the writers with no engine change. It also checks that the model receives the
batch's per-image targets in training (what a proposal model samples its RoIs from).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from instembed.data.io import write_image, write_labels
from instembed.data.sample import Sample
from instembed.engine.config import config_from_dict
from instembed.losses.build import LOSSES, register_loss
from instembed.models.build import MODEL_PARAM_TYPES, MODELS, register_model
from instembed.structures import Instances, Outputs

SIZE = (24, 32)
# two fixed squares (y0, y1, x0, x1) that touch at column 14 and a third one apart
BOXES = [(2, 10, 4, 14), (2, 10, 14, 22), (14, 22, 20, 30)]


def _fixed_masks() -> torch.Tensor:
    m = torch.zeros(len(BOXES), *SIZE)
    for k, (y0, y1, x0, x1) in enumerate(BOXES):
        m[k, y0:y1, x0:x1] = 0.9  # soft masks: the post-processing thresholds them
    return m


class ToyDetector(nn.Module):
    """Always proposes BOXES; one learnable logit per box gives the scores."""

    in_channels = 1

    def __init__(self, in_channels: int = 1, init: float = -2.0) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.full((len(BOXES),), float(init)))
        self.seen_targets: list[int] = []

    def forward(self, image, coords_origin=None, targets=None) -> Outputs:
        if targets is not None:  # training: the ground truth reaches the model
            self.seen_targets.append(sum(int(t["masks"].shape[0]) for t in targets))
        scores = torch.sigmoid(self.logits)
        masks = _fixed_masks().to(image.device)
        inst = [Instances(masks=masks, scores=scores) for _ in range(image.shape[0])]
        return Outputs(instances=inst, aux={"logits": self.logits})


class ToyLoss(nn.Module):
    """BCE pushing every box's score to 1 (each box is an object in the toy data)."""

    def __init__(self) -> None:
        super().__init__()

    def forward(self, outputs: Outputs, batch: dict):
        logits = outputs.aux["logits"]
        total = nn.functional.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        return total, {"bce": total.detach()}


@pytest.fixture
def toy_family():
    register_model("toy_detector", ToyDetector, {"init": float})
    register_loss("toy_bce", ToyLoss)
    yield
    for table, key in ((MODELS, "toy_detector"), (MODEL_PARAM_TYPES, "toy_detector")):
        table.pop(key, None)
    LOSSES.pop("toy_bce", None)


def _toy_samples(n: int) -> list[Sample]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        lab = np.zeros(SIZE, np.int32)
        for k, (y0, y1, x0, x1) in enumerate(BOXES, start=1):
            lab[y0:y1, x0:x1] = k
        image = (lab > 0).astype(np.float32)[None] + 0.05 * rng.random((1, *SIZE), np.float32)
        out.append(Sample(image=image.astype(np.float32), instances=lab))
    return out


def _config(tmp_path):
    return config_from_dict(
        {
            "model": {"name": "toy_detector", "params": {"init": -2.0}},
            "loss": {"name": "toy_bce"},
            "cluster": {"method": "detections", "params": {"score_thresh": 0.5}},
            "optim": {"lr": 0.5, "schedule": "constant", "weight_decay": 0.0},
            "data": {"batch_size": 2, "flip": False, "rot90": False},
            "run": {"steps": 20, "val_every": 0, "ckpt_every": 0, "progress": False,
                    "tensorboard": False, "best_metric": "AP50"},
        }
    )  # fmt: skip


def test_a_registered_family_trains_predicts_and_is_scored_without_engine_changes(
    tmp_path, toy_family
):
    from instembed.cli import main
    from instembed.data.dataset import InstanceDataset
    from instembed.engine.predict import load_model
    from instembed.engine.trainer import Trainer

    samples = _toy_samples(4)
    cfg = _config(tmp_path)
    with pytest.raises(ValueError, match="init"):  # the family's typed params are checked
        config_from_dict({"model": {"name": "toy_detector", "params": {"init": "high"}}})

    # --- train: at init every score is sigmoid(-2) = 0.12 < 0.5, so nothing is detected
    trainer = Trainer(
        cfg, tmp_path / "run", train_set=InstanceDataset(samples), val_samples=samples
    )
    assert trainer.model.seen_targets == []
    result = trainer.fit()
    assert result.status == "done" and result.step == 20
    # the model saw the targets of every training batch: 2 images x 3 objects
    assert trainer.model.seen_targets == [6] * 20
    # validation ran through the "detections" post-processing: all three boxes found
    assert result.metrics["AP50"] == pytest.approx(1.0)
    assert result.metrics["AP_dsb@0.5"] == pytest.approx(1.0)

    model, loaded_cfg = load_model(tmp_path / "run")
    assert isinstance(model, ToyDetector) and loaded_cfg.cluster.method == "detections"
    assert (torch.sigmoid(model.logits) > 0.5).all()

    # --- predict -> files -> evaluate, through the CLI
    gt_dir, img_dir, pred_dir = tmp_path / "gt", tmp_path / "img", tmp_path / "pred"
    for i, s in enumerate(samples[:2]):
        write_image(img_dir / f"im{i}.tif", s.image)
        write_labels(gt_dir / f"im{i}.tif", s.instances)
    rc = main(["predict", "--model", str(tmp_path / "run"), str(img_dir), "--out", str(pred_dir),
               "--no-progress", "--no-overlay", "--coco", str(tmp_path / "coco.json")])  # fmt: skip
    assert rc == 0
    table = json.loads((pred_dir / "im0.json").read_text())
    assert len(table["instances"]) == 3
    assert sorted(r["bbox"] for r in table["instances"]) == sorted(
        [x0, y0, x1 - x0, y1 - y0] for y0, y1, x0, x1 in BOXES
    )
    assert len(json.loads((tmp_path / "coco.json").read_text())) == 6  # 3 per image, RLE
    rc = main(["evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir),
               "--json", str(tmp_path / "m.json")])  # fmt: skip
    assert rc == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    flat = json.dumps(metrics)
    assert '"AP50": 1.0' in flat and '"AP_dsb@0.5": 1.0' in flat


def test_a_family_that_returns_instances_refuses_tiling_and_tta_clearly(toy_family):
    from instembed.engine.inference import infer

    model = ToyDetector()
    image = torch.zeros(1, *SIZE)
    out = infer(model, image)  # whole image: the instances pass through
    assert out.instances is not None and len(out.instances[0]) == 3
    for kw in ({"tile": 16}, {"tta": True}):
        with pytest.raises(ValueError, match="returns instances itself"):
            infer(model, image, **kw)


def test_export_refuses_a_family_that_returns_instances(tmp_path, toy_family):
    from instembed.engine.export import export_torchscript

    with pytest.raises(ValueError, match="returns instances itself"):
        export_torchscript(ToyDetector(), _config(tmp_path), tmp_path / "m.ts", example_size=32)

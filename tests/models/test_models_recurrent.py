"""Recurrent attention (Ren & Zemel 2017): the glimpse sampler and its inverse, the Hungarian
matching loss, the stop rule, the curriculum, over-fitting a tiny scene, and the engine path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from instembed.data.dataset import InstanceDataset, collate, image_targets
from instembed.data.sample import Sample
from instembed.losses.build import build_loss
from instembed.losses.recurrent import (
    hungarian_match,
    monotone_score_loss,
    recurrent_attention_loss,
)
from instembed.models.build import build_model
from instembed.models.glimpse import paste_glimpse, read_glimpse
from instembed.models.recurrent import RecurrentAttention


@pytest.fixture(autouse=True)
def _one_thread():
    """Small convolutions and a recurrent loop: one thread is faster than several on a shared
    CPU (and keeps the timings of the over-fitting test stable)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- the sampler
def _ramp(b=2, c=2, h=12, w=16, dtype=torch.float32):
    y = torch.arange(h, dtype=dtype).view(1, 1, h, 1)
    x = torch.arange(w, dtype=dtype).view(1, 1, 1, w)
    base = 100 * y + x + torch.zeros(b, c, h, w, dtype=dtype)
    return base + torch.arange(b * c, dtype=dtype).view(b, c, 1, 1) * 1000


def _reference_read(img: np.ndarray, box, gh: int, gw: int) -> np.ndarray:
    """Slow bilinear reference: glimpse cell centres, zeros outside the image."""
    c, h, w = img.shape
    x1, y1, x2, y2 = box
    out = np.zeros((c, gh, gw))
    for i in range(gh):
        for j in range(gw):
            y = y1 + (i + 0.5) * (y2 - y1) / gh - 0.5  # pixel-centre coordinates
            x = x1 + (j + 0.5) * (x2 - x1) / gw - 0.5
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                    if 0 <= yy < h and 0 <= xx < w:
                        out[:, i, j] += wy * wx * img[:, yy, xx]
    return out


def test_an_integer_aligned_box_of_the_glimpse_size_reads_the_array_slice():
    img = _ramp(dtype=torch.float64)
    boxes = torch.tensor([[3.0, 2.0, 9.0, 7.0], [10.0, 6.0, 16.0, 11.0]], dtype=torch.float64)
    g = read_glimpse(img, boxes, (5, 6))  # x1 y1 x2 y2: columns 3..8, rows 2..6
    exact = {"rtol": 0, "atol": 1e-9}
    torch.testing.assert_close(g[0], img[0, :, 2:7, 3:9], **exact)
    torch.testing.assert_close(g[1], img[1, :, 6:11, 10:16], **exact)
    g32 = read_glimpse(img.float(), boxes.float(), (5, 6))  # float32: up to rounding
    torch.testing.assert_close(g32[0], img[0, :, 2:7, 3:9].float())


@pytest.mark.parametrize(
    "box", [(1.3, 0.7, 9.9, 8.2), (-2.0, 3.5, 6.0, 14.0), (4.0, 4.0, 6.0, 5.0)]
)
def test_the_glimpse_matches_a_slow_bilinear_reference(box):
    img = _ramp(b=1, dtype=torch.float64)
    g = read_glimpse(img, torch.tensor([box], dtype=torch.float64), (4, 5))
    ref = _reference_read(img[0].numpy(), box, 4, 5)
    np.testing.assert_allclose(g[0].numpy(), ref, rtol=1e-10, atol=1e-8)


def test_gradcheck_of_reading_and_pasting_in_float64():
    torch.manual_seed(0)
    img = torch.rand(1, 2, 7, 8, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor([[1.37, 0.81, 6.23, 5.44]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda i, b: read_glimpse(i, b, (3, 4)), (img, boxes))
    glimpse = torch.rand(1, 1, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda g, b: paste_glimpse(g, b, (7, 8)), (glimpse, boxes))


def test_pasting_a_glimpse_back_inverts_reading_it():
    exact = {"rtol": 0, "atol": 1e-12}
    mask = torch.zeros(1, 1, 10, 12, dtype=torch.float64)
    mask[0, 0, 3:7, 4:9] = torch.rand(4, 5, dtype=torch.float64) + 0.1
    mask[0, 0, 0, 0] = 1.0  # outside the box: not part of the glimpse
    box = torch.tensor([[3.0, 2.0, 10.0, 8.0]], dtype=torch.float64)  # columns 3..9, rows 2..7
    g = read_glimpse(mask, box, (6, 7))
    back = paste_glimpse(g, box, (10, 12))
    inside = torch.zeros_like(mask, dtype=torch.bool)
    inside[..., 2:8, 3:10] = True
    torch.testing.assert_close(back, torch.where(inside, mask, torch.zeros_like(mask)), **exact)
    torch.testing.assert_close(read_glimpse(back, box, (6, 7)), g, **exact)
    # a box twice the glimpse: pasting then reading keeps a linear ramp (bilinear is exact)
    ramp = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 4, 4) + torch.arange(4.0).view(
        1, 1, 4, 1
    )
    big = torch.tensor([[2.0, 2.0, 10.0, 10.0]])
    again = read_glimpse(paste_glimpse(ramp, big, (12, 12)), big, (4, 4))
    torch.testing.assert_close(again[..., 1:3, 1:3], ramp[..., 1:3, 1:3])


# --------------------------------------------------------------------------- the loss
def _two_objects():
    gt = torch.zeros(2, 8, 8, dtype=torch.bool)
    gt[0, 1:4, 1:4] = True
    gt[1, 4:8, 3:8] = True
    boxes = torch.tensor([[1.0, 1.0, 4.0, 4.0], [3.0, 4.0, 8.0, 8.0]])
    return gt, boxes


def test_the_hungarian_loss_does_not_depend_on_the_order_of_the_steps():
    gt, gtb = _two_objects()
    pred = torch.stack([gt[0].float() * 0.9, gt[1].float() * 0.7, torch.zeros(8, 8)])
    pboxes = torch.tensor([[1.0, 1.0, 4.5, 4.0], [3.0, 4.0, 7.0, 8.0], [0, 0, 1, 1]])
    scores = torch.tensor([0.9, 0.8, 0.1])
    swapped = [1, 0, 2]
    a, ta = recurrent_attention_loss(pred[None], scores[None], pboxes[None], [gt], [gtb])
    b, tb = recurrent_attention_loss(
        pred[swapped][None], scores[None], pboxes[swapped][None], [gt], [gtb]
    )
    torch.testing.assert_close(a, b)
    assert ta["seg"] == pytest.approx(1 - (0.9 + 0.7) / 2, abs=1e-6)  # soft IoU = the value
    assert ta["box"] == pytest.approx(tb["box"])
    rows, cols = hungarian_match(torch.tensor([[0.1, 0.8], [0.9, 0.2]]))
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]
    # perfect masks and boxes, monotone scores: only the (small) score term is left
    perfect, t = recurrent_attention_loss(
        torch.stack([gt[1].float(), gt[0].float(), torch.zeros(8, 8)])[None],
        torch.tensor([[0.999, 0.999, 0.001]]),
        torch.stack([gtb[1], gtb[0], gtb[0]])[None],
        [gt],
        [gtb],
    )
    assert t["seg"] == pytest.approx(0, abs=1e-5) and t["box"] == pytest.approx(0, abs=1e-5)
    assert float(perfect) < 0.01


def test_the_monotone_score_loss_penalises_a_score_that_rises_again():
    target = torch.tensor([1.0, 1.0, 0.0, 0.0])
    good = monotone_score_loss(torch.tensor([0.9, 0.9, 0.1, 0.1]), target)
    bumpy = monotone_score_loss(torch.tensor([0.9, 0.9, 0.1, 0.9]), target)
    dip = monotone_score_loss(torch.tensor([0.2, 0.9, 0.1, 0.1]), target)
    assert float(good) < 0.11 and float(bumpy) > 2 * float(good) and float(dip) > 2 * float(good)


# --------------------------------------------------------------------------- the model
def _scene(h=48, w=48, objects=((12, 12, 7), (12, 34, 6), (34, 14, 8), (35, 35, 6))):
    lab = np.zeros((h, w), np.int32)
    yy, xx = np.mgrid[:h, :w]
    for k, (cy, cx, r) in enumerate(objects, 1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    img = np.stack([(lab > 0) * 0.8 + 0.1, np.full(lab.shape, 0.2), np.zeros(lab.shape)])
    return Sample(image=img.astype(np.float32), instances=lab)


def _small_model(**kw):
    kw = {"width": 8, "hidden": 16, "glimpse": 16, "max_steps": 8, "teacher_steps": 200, **kw}
    return RecurrentAttention(in_channels=3, **kw)


def test_the_stop_rule_ends_the_sequence_and_never_exceeds_max_steps():
    torch.manual_seed(0)
    image = torch.rand(2, 3, 32, 32)
    model = _small_model(max_steps=5).eval()
    last = model.score_mlp[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-10.0)  # every score ~ 0: stop after the first step
        out = model(image)
        assert out.aux["num_steps"] == 1 and all(len(i) == 1 for i in out.instances)
        last.bias.fill_(10.0)  # every score ~ 1: run until max_steps, not one more
        out = model(image)
        assert out.aux["num_steps"] == 5
        assert [tuple(i.masks.shape) for i in out.instances] == [(5, 32, 32)] * 2
    # training on a scene with more objects than max_steps: still max_steps
    batch = collate([InstanceDataset([_scene()])[0]])
    model = _small_model(max_steps=3, curriculum_every=0).train()
    out = model(batch["image"], targets=image_targets(batch))
    assert out.aux["num_steps"] == 3 and out.aux["masks"].shape == (1, 3, 48, 48)


def test_the_curriculum_and_teacher_forcing_follow_the_models_step_counter():
    model = _small_model(curriculum_start=2, curriculum_every=10, teacher_forcing=0.5)
    assert model.step_cap(0) == 2 and model.step_cap(25) == 4 and model.step_cap(10**6) == 8
    assert model.teacher_probability(0) == 0.5 and model.teacher_probability(100) == 0.25
    assert model.teacher_probability(500) == 0.0
    batch = collate([InstanceDataset([_scene()])[0]])
    model.train()
    out = model(batch["image"], targets=image_targets(batch))
    assert out.aux["num_steps"] == 2 and int(model.train_step) == 1  # 4 objects, capped at 2
    assert "train_step" in model.state_dict()  # the counter is saved with the checkpoint
    model.eval()
    with torch.no_grad():
        model(batch["image"])
    assert int(model.train_step) == 1  # evaluation does not advance it


def test_an_empty_image_gives_a_finite_loss_with_gradients():
    batch = collate([InstanceDataset([Sample(image=np.zeros((3, 32, 32), np.float32),
                                             instances=np.zeros((32, 32), np.int32))])[0]])  # fmt: skip
    model = _small_model().train()
    out = model(batch["image"], targets=image_targets(batch))
    assert out.aux["num_steps"] == 1
    total, terms = build_loss("recurrent_attention")(out, batch)
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in terms.values())
    total.backward()
    assert model.score_mlp[-1].bias.grad is not None


def _overfit(iterations: int) -> tuple[dict, int]:
    from instembed.cluster.detections import filter_steps
    from instembed.engine.evaluation import score

    torch.manual_seed(0)
    sample = _scene()
    batch = collate([InstanceDataset([sample])[0]])
    model = _small_model()
    loss = build_loss("recurrent_attention")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(iterations):
        model.train()
        total, _terms = loss(model(batch["image"], targets=image_targets(batch)), batch)
        opt.zero_grad()
        total.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        inst = filter_steps(model(batch["image"]).instances[0])
    return score([sample], [inst]), len(inst)


def test_smoke_a_few_training_iterations_lower_the_loss():
    torch.manual_seed(0)
    batch = collate([InstanceDataset([_scene()])[0]])
    model = _small_model(teacher_forcing=0.0)
    loss = build_loss("recurrent_attention")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    values = []
    for _ in range(15):
        total, _ = loss(model.train()(batch["image"], targets=image_targets(batch)), batch)
        opt.zero_grad()
        total.backward()
        opt.step()
        values.append(float(total.detach()))
    assert np.mean(values[-3:]) < np.mean(values[:3])


def test_the_model_overfits_a_tiny_scene_of_four_objects():
    # 48 x 48, four discs, one image: ~100 iterations reach SBD ~0.97 (~20-30 s on 1 CPU core)
    metrics, count = _overfit(120)
    assert count == 4 and metrics["SBD"] >= 0.8


# --------------------------------------------------------------------------- the engine
def test_train_predict_evaluate_through_the_engine(tmp_path):
    from instembed.cli import main
    from instembed.data.io import write_image, write_labels
    from instembed.engine.config import config_from_dict
    from instembed.engine.predict import load_model
    from instembed.engine.trainer import Trainer

    samples = [_scene(32, 32, ((8, 8, 5), (22, 20, 6))) for _ in range(2)]
    cfg = config_from_dict(
        {
            "model": {"name": "recurrent_attention", "in_channels": 3,
                      "params": {"width": 8, "hidden": 8, "glimpse": 8, "max_steps": 4}},
            "loss": {"name": "recurrent_attention", "params": {"seg_loss": "dice"}},
            "cluster": {"method": "steps", "params": {"stop_thresh": 0.5}},
            "optim": {"optimizer": "adam", "lr": 0.002, "schedule": "constant"},
            "data": {"batch_size": 2},
            "run": {"steps": 3, "val_every": 0, "ckpt_every": 0, "progress": False,
                    "tensorboard": False, "best_metric": "SBD"},
        }
    )  # fmt: skip
    trainer = Trainer(
        cfg, tmp_path / "run", train_set=InstanceDataset(samples), val_samples=samples
    )
    result = trainer.fit()
    assert result.status == "done" and result.step == 3 and "SBD" in result.metrics
    model, _ = load_model(tmp_path / "run")
    assert isinstance(model, RecurrentAttention) and int(model.train_step) == 3
    img_dir, gt_dir, pred_dir = tmp_path / "img", tmp_path / "gt", tmp_path / "pred"
    write_image(img_dir / "a.tif", samples[0].image)
    write_labels(gt_dir / "a.tif", samples[0].instances)
    args = ["predict", "--model", str(tmp_path / "run"), str(img_dir), "--out", str(pred_dir)]
    assert main([*args, "--no-progress", "--no-overlay"]) == 0
    assert main(["evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir),
                 "--json", str(tmp_path / "m.json")]) == 0  # fmt: skip
    assert "SBD" in json.dumps(json.loads((tmp_path / "m.json").read_text()))


def test_the_family_is_registered_with_typed_parameters():
    from instembed.engine.config import config_from_dict

    model = build_model("recurrent_attention", in_channels=3, max_steps=2, width=8, hidden=8)
    assert isinstance(model, RecurrentAttention) and model.max_steps == 2
    with pytest.raises(ValueError, match="max_steps"):
        config_from_dict({"model": {"name": "recurrent_attention", "params": {"max_steps": "x"}}})

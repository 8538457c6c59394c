"""``Predictor(scale=S)`` / ``instembed predict --scale S``: the image is resized by S before the
network, the instances come back at the input size (labels and masks by nearest neighbour,
scores unchanged)."""

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from instembed.cli import main
from instembed.engine import checkpoint as ck
from instembed.engine.config import ClusterConfig, Config, config_to_yaml
from instembed.engine.predict import Predictor, rescale_instances, scaled_size
from instembed.metrics import adjusted_rand_index
from instembed.models import build_model
from instembed.structures import Instances, Outputs

pytestmark = pytest.mark.usefixtures("one_thread")


class WindowCentroidNet(nn.Module):
    """Oracle-style fixed-weight net (as in test_engine_predict): the semi-conv embedding of a
    pixel is the centroid of the foreground in its (2 half + 1)^2 window. A disc that fits in
    the window (radius <= half / 1.5 or so: its "training size") gets one embedding, its centre;
    a disc twice as large does not fit, its pixels point at different partial centroids and
    threshold clustering splits it into several instances."""

    semiconv = True
    coord_scale = 0.1
    size_divisor = 1
    in_channels = 1

    def __init__(self, half: int = 6):
        super().__init__()
        k = 2 * half + 1
        d = torch.arange(-half, half + 1, dtype=torch.float32)
        w = torch.stack([torch.ones(k, k), d.view(k, 1).expand(k, k), d.view(1, k).expand(k, k)])
        self.register_buffer("weight", w.unsqueeze(1))
        self.half = half
        self.receptive_field = k

    def forward(self, x, coords_origin=None):
        b, _, h, w = x.shape
        fg = (x > 0.5).float()
        s = F.conv2d(fg, self.weight, padding=self.half)
        phi = s[:, 1:] / s[:, :1].clamp(min=1e-6)
        origin = torch.zeros(b, 2) if coords_origin is None else coords_origin.float()
        yy = torch.arange(h).view(1, h, 1).expand(b, h, w) + origin[:, 0].view(b, 1, 1)
        xx = torch.arange(w).view(1, 1, w).expand(b, h, w) + origin[:, 1].view(b, 1, 1)
        u = torch.stack([yy, xx], 1).float()
        return Outputs(embedding=(phi + u) * self.coord_scale, seed=fg)


def discs(h, w, n, r, seed=0):
    """Label image of up to n discs of radius r, centres >= 3.5 r apart."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    centres: list[np.ndarray] = []
    for _ in range(5000):
        if len(centres) == n:
            break
        c = rng.uniform([r + 2, r + 2], [h - r - 2, w - r - 2])
        if all(np.hypot(*(c - p)) > 3.5 * r for p in centres):
            centres.append(c)
    labels = np.zeros((h, w), np.int32)
    for i, (cy, cx) in enumerate(centres, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    return labels


def _predictor(**kw):
    return Predictor(
        WindowCentroidNet(), Config(), cluster=ClusterConfig("threshold", {"delta_v": 0.2}), **kw
    )


def _best_iou(gt: np.ndarray, pred: np.ndarray) -> list[float]:
    out = []
    for i in range(1, int(gt.max()) + 1):
        m = gt == i
        ids, counts = np.unique(pred[m], return_counts=True)
        j = ids[np.argmax(counts)]
        if j == 0:
            out.append(0.0)
            continue
        p = pred == j
        out.append(float((m & p).sum() / (m | p).sum()))
    return out


def test_objects_twice_the_training_size_are_found_at_scale_half():
    labels = discs(200, 240, n=14, r=8)  # the net's "training size" is radius 4
    n = int(labels.max())
    image = (labels[None] > 0).astype(np.float32)
    native = _predictor()(image)
    assert native.num_instances > n  # too large for the window: split
    pred = _predictor(scale=0.5)(image)
    assert pred.labels.shape == labels.shape  # back at the input size
    assert pred.num_instances == n
    assert pred.scores.shape == (n,)
    assert pred.meta["scale"] == 0.5
    # every disc is found in its place (nearest-neighbour labels: shapes up to the boundary)
    assert min(_best_iou(labels, pred.labels)) > 0.8
    assert adjusted_rand_index(labels, pred.labels) > 0.9


def test_scale_one_is_the_plain_path():
    labels = discs(96, 96, n=5, r=4, seed=1)
    image = (labels[None] > 0).astype(np.float32)
    a, b = _predictor()(image), _predictor(scale=1.0)(image)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert "scale" not in b.meta


def test_rescale_round_trip_maps_objects_back_in_place():
    # labels of a 2x smaller image: every small pixel becomes a 2x2 block at the input size
    small = np.zeros((5, 7), np.int32)
    small[1:3, 1:3] = 1
    small[3, 5] = 2
    masks = np.stack([small == 1, small == 2])
    sem = small.copy()
    pred = Instances(
        labels=small,
        masks=masks,
        scores=np.array([0.9, 0.4], np.float32),
        classes=np.array([1, 2]),
        boxes=np.array([[1, 1, 3, 3], [5, 3, 6, 4]], np.float32),
        semantic=sem,
    )
    out = rescale_instances(pred, (10, 14))
    expect = np.kron(small, np.ones((2, 2), np.int32))
    np.testing.assert_array_equal(out.labels, expect)
    np.testing.assert_array_equal(out.masks[0], expect == 1)
    np.testing.assert_array_equal(out.semantic, expect)
    np.testing.assert_allclose(out.scores, [0.9, 0.4])
    np.testing.assert_array_equal(out.classes, [1, 2])
    np.testing.assert_allclose(out.boxes, [[2, 2, 6, 6], [10, 6, 12, 8]])
    # shrinking can lose a one-pixel object: it is dropped, the others renumbered
    big = np.zeros((8, 8), np.int32)
    big[0:4, 0:4] = 1
    big[4, 4] = 2  # pixel centres 1, 3, 5, 7 are kept: (4, 4) is not
    big[6:8, 6:8] = 3
    down = rescale_instances(
        Instances(labels=big, scores=np.array([0.1, 0.2, 0.3], np.float32)), (4, 4)
    )
    assert down.labels.shape == (4, 4) and down.num_instances == 2
    np.testing.assert_allclose(down.scores, [0.1, 0.3])
    assert set(np.unique(down.labels)) == {0, 1, 2}


def test_scaled_size_and_bad_scales():
    assert scaled_size((100, 51), 0.5) == (50, 26)
    assert scaled_size((3, 3), 0.01) == (1, 1)
    for bad in (0, -1, float("nan"), float("inf"), "x"):
        with pytest.raises(ValueError, match="scale must be a number > 0"):
            _predictor(scale=bad)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    cfg = Config()
    cfg.model.params = {"heads": {"embedding": 4, "seed": 1}, "depth": 2, "width": 4}
    cfg.cluster = ClusterConfig("threshold", {"delta_v": 0.5, "fg_thresh": 0.0})
    torch.manual_seed(0)
    model = build_model("unet", heads={"embedding": 4, "seed": 1}, depth=2, width=4)
    path = tmp_path_factory.mktemp("m") / "m.pt"
    ck.save_checkpoint(
        path, model_state=model.state_dict(), config_yaml=config_to_yaml(cfg), step=0
    )
    return path


def test_predict_cli_scale_writes_labels_at_the_input_size(tiny_checkpoint, tmp_path):
    img = (np.random.default_rng(0).random((45, 62)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    out = tmp_path / "out"
    args = ["predict", str(tmp_path / "a.png"), "--model", str(tiny_checkpoint)]
    assert main([*args, "--out", str(out), "--scale", "0.5", "--no-progress"]) == 0
    assert tifffile.imread(out / "a.tif").shape == (45, 62)


@pytest.mark.parametrize("value", ["0", "-0.5", "nan"])
def test_predict_cli_refuses_a_bad_scale(tiny_checkpoint, tmp_path, capsys, value):
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "a.png")
    args = ["predict", str(tmp_path / "a.png"), "--model", str(tiny_checkpoint)]
    assert main([*args, "--out", str(tmp_path / "o"), f"--scale={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--scale must be a number > 0" in err
    assert not (tmp_path / "o").exists()


def test_rescale_of_an_empty_mask_stack_prediction():
    # a mask-stack model (e.g. Mask R-CNN) that found nothing: (0, h, w) masks
    empty = Instances(
        labels=np.zeros((8, 10), np.int32),
        scores=np.zeros(0, np.float32),
        masks=np.zeros((0, 8, 10), bool),
    )
    out = rescale_instances(empty, (16, 20))
    assert len(out) == 0 and out.labels.shape == (16, 20) and out.masks.shape == (0, 16, 20)

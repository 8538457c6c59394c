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


# --------------------------------------------------------------------------- scale="auto"
class CountingNet(WindowCentroidNet):
    """The oracle net, counting its forward passes and the image sizes it was given."""

    def __init__(self, half: int = 6):
        super().__init__(half)
        self.sizes: list[tuple[int, int]] = []

    def forward(self, x, coords_origin=None):
        self.sizes.append(tuple(x.shape[-2:]))
        return super().forward(x, coords_origin)


def grid_discs(n: int, r: int, spacing: int) -> np.ndarray:
    """Label image of n x n discs of radius r on a grid of ``spacing`` px (centres at
    spacing / 2 + k spacing)."""
    size = n * spacing
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.int32)
    for k in range(n * n):
        cy, cx = spacing / 2 + (k // n) * spacing, spacing / 2 + (k % n) * spacing
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k + 1
    return labels


def _auto(net, sizes, **kw):
    cfg = Config()
    cfg.data.object_diameter = sizes
    return Predictor(net, cfg, cluster=ClusterConfig("threshold", {"delta_v": 0.2}), **kw)


def test_auto_scale_resizes_objects_far_outside_the_training_sizes():
    # a window of 25 px finds discs of radius 8, 64 px apart, whole at scale 1 as well as at
    # scale 0.5 (radius 4, 32 px apart: one disc per window); the recorded training sizes say
    # radius ~4 (diameter 8): discs of diameter 16 are outside [6, 10] and 2x the median, so
    # auto resizes by 8 / 16 and keeps it (diameter 8 there)
    labels = grid_discs(3, r=8, spacing=64)
    image = (labels[None] > 0).astype(np.float32)
    net = CountingNet(half=12)
    pred = _auto(net, [6.0, 8.0, 10.0], scale="auto")(image)
    measured = pred.meta["measured_diameter"]
    assert abs(measured - 16) < 0.3  # equivalent diameter of a radius-8 disc
    assert pred.meta["scale"] == pytest.approx(8 / measured)
    assert net.sizes == [(192, 192), scaled_size((192, 192), 8 / measured)]  # two passes
    assert pred.labels.shape == labels.shape and pred.num_instances == labels.max()
    assert min(_best_iou(labels, pred.labels)) > 0.8


def test_auto_scale_starts_where_a_size_model_says_and_keeps_it_when_the_objects_agree():
    # the oracle finds radius-8 discs whole at scale 0.5 (diameter 8, the training median); a
    # size model predicting 16 px sends the first pass straight there: one pass, kept
    from types import SimpleNamespace

    labels = grid_discs(3, r=8, spacing=64)
    image = (labels[None] > 0).astype(np.float32)
    net = CountingNet(half=12)
    net.size_model = SimpleNamespace(diameter=lambda model, img: 16.0)
    pred = _auto(net, [6.0, 8.0, 10.0], scale="auto")(image)
    assert net.sizes == [scaled_size((192, 192), 0.5)]
    assert pred.meta["scale"] == 0.5 and pred.meta["predicted_diameter"] == 16.0
    assert pred.num_instances == labels.max() and min(_best_iou(labels, pred.labels)) > 0.8


def test_auto_scale_keeps_scale_one_when_the_resized_objects_are_no_closer():
    # the 25 px window finds radius-8 discs 28 px apart whole at scale 1; their diameter 16 is
    # above the training range [6, 10] and 2x its median, so auto tries scale 0.5; there the
    # discs are 14 px apart, several fall in one window and shatter into fragments farther from
    # the median than 16 px: the scale-1 result is kept
    labels = discs(160, 192, n=8, r=8, seed=3)
    image = (labels[None] > 0).astype(np.float32)
    net = CountingNet(half=12)
    plain = _auto(CountingNet(half=12), None)(image)
    assert plain.num_instances == labels.max()
    pred = _auto(net, [6.0, 8.0, 10.0], scale="auto")(image)
    assert len(net.sizes) == 2 and net.sizes[1][0] < 100  # it did try, shrunk
    assert pred.meta["scale"] == 1.0
    np.testing.assert_array_equal(pred.labels, plain.labels)


def test_auto_scale_never_enlarges():
    # the 13 px window shatters radius-8 discs into ~4 px fragments: below the training range
    # and half its median, but auto does not enlarge (fragments look like small objects)
    labels = discs(120, 140, n=5, r=8, seed=4)
    image = (labels[None] > 0).astype(np.float32)
    net = CountingNet(half=6)
    pred = _auto(net, [6.0, 8.0, 10.0], scale="auto")(image)
    assert pred.meta["measured_diameter"] < 6
    assert len(net.sizes) == 1 and pred.meta["scale"] == 1.0


def test_auto_scale_is_one_pass_inside_the_range_or_without_recorded_sizes():
    labels = discs(96, 96, n=5, r=4, seed=1)
    image = (labels[None] > 0).astype(np.float32)
    plain = _predictor()(image)
    for sizes in ([6.0, 8.0, 10.0], None):
        net = CountingNet(half=6)
        pred = _auto(net, sizes, scale="auto")(image)
        assert len(net.sizes) == 1 and pred.meta["scale"] == 1.0
        assert abs(pred.meta["measured_diameter"] - 8) < 0.3
        np.testing.assert_array_equal(pred.labels, plain.labels)


def test_diameter_sets_the_scale_from_the_training_median():
    labels = grid_discs(3, r=8, spacing=64)
    image = (labels[None] > 0).astype(np.float32)
    by_diameter = _auto(CountingNet(half=12), [6.0, 8.0, 10.0], diameter=16)(image)
    by_scale = _auto(CountingNet(half=12), [6.0, 8.0, 10.0], scale=0.5)(image)
    assert by_diameter.meta["scale"] == 0.5
    np.testing.assert_array_equal(by_diameter.labels, by_scale.labels)
    with pytest.raises(ValueError, match="no recorded training object size"):
        _auto(CountingNet(), None, diameter=16)
    with pytest.raises(ValueError, match="give scale or diameter, not both"):
        _auto(CountingNet(), [6.0, 8.0, 10.0], scale=0.5, diameter=16)
    with pytest.raises(ValueError, match="scale must be a number > 0 or 'auto'"):
        _auto(CountingNet(), None, scale="big")


def test_predict_cli_auto_is_the_default_and_its_factor_is_in_the_json(tiny_checkpoint, tmp_path):
    import json

    img = (np.random.default_rng(1).random((40, 48)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    args = ["predict", str(tmp_path / "a.png"), "--model", str(tiny_checkpoint), "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "o")]) == 0
    table = json.loads((tmp_path / "o" / "a.json").read_text())
    assert table["scale"] == 1.0  # the tiny model records no training sizes: scale 1
    assert "measured_diameter" in table
    assert [p["scale"] for p in table["auto_trail"]] == [1.0]  # one pass
    assert main([*args, "--out", str(tmp_path / "h"), "--scale", "0.5"]) == 0
    assert json.loads((tmp_path / "h" / "a.json").read_text())["scale"] == 0.5


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--diameter", "20"], "no recorded training object size"),
        (["--diameter", "0"], "--diameter must be a number of pixels > 0"),
        (["--diameter", "20", "--scale", "0.5"], "give --scale or --diameter, not both"),
        (["--scale", "large"], "expected a number > 0 or 'auto'"),
    ],
)
def test_predict_cli_refuses_bad_diameters(tiny_checkpoint, tmp_path, capsys, extra, message):
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "a.png")
    args = ["predict", str(tmp_path / "a.png"), "--model", str(tiny_checkpoint)]
    try:  # a bad --scale is refused by the argument parser (exit 2)
        rc = main([*args, "--out", str(tmp_path / "o"), *extra])
    except SystemExit as stop:
        rc = stop.code
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()

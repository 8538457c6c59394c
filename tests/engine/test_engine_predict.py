"""Prediction: tiled == untiled instances, TTA, model lookup, the predict CLI and its writers."""

import hashlib
import json
import shutil

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from instembed.engine import checkpoint as ck
from instembed.engine.config import ClusterConfig, Config, config_to_yaml
from instembed.engine.predict import Predictor, load_model, resolve_model
from instembed.metrics import adjusted_rand_index
from instembed.models import build_model
from instembed.structures import Outputs

pytestmark = pytest.mark.usefixtures("one_thread")


class WindowCentroidNet(nn.Module):
    """A fixed-weight convolutional net that solves well-separated discs exactly.

    Three convolutions with a (2r+1)^2 box window give, per pixel u, the foreground mass m, and
    the sums of (dy, dx) over foreground pixels of the window; Phi = (sum d) / m is the offset
    from u to the centroid of the foreground in the window, i.e. to the disc's centre when the
    window holds exactly one disc. Semi-conv: Psi = (Phi + u) * s = the disc centre * s.
    seed = the foreground itself. Box windows are symmetric, so the net is exactly equivariant
    to flips and 90-degree rotations.
    """

    semiconv = True
    coord_scale = 0.1
    size_divisor = 1
    in_channels = 1

    def __init__(self, half: int = 6):
        super().__init__()
        k = 2 * half + 1
        d = torch.arange(-half, half + 1, dtype=torch.float32)
        w = torch.stack([torch.ones(k, k), d.view(k, 1).expand(k, k), d.view(1, k).expand(k, k)])
        self.register_buffer("weight", w.unsqueeze(1))  # (3, 1, k, k)
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


def discs(h=150, w=170, n=30, r=4, seed=0):
    """Label image of n discs of radius r, centres >= 3r apart (no two in one 13 px window)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    centres = []
    while len(centres) < n:
        c = rng.integers(r, [h - r, w - r])
        if all(np.hypot(*(c - p)) > 3.5 * r for p in centres):
            centres.append(c)
    labels = np.zeros((h, w), np.int32)
    for i, (cy, cx) in enumerate(centres, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    return labels


def _predictor(model, **kw):
    cfg = Config()
    cluster = ClusterConfig("threshold", {"delta_v": 0.2})
    return Predictor(model, cfg, cluster=cluster, **kw)


def test_window_net_segments_discs_exactly():
    labels = discs()
    pred = _predictor(WindowCentroidNet())(labels[None].astype(np.float32) > 0)
    assert adjusted_rand_index(labels, pred.labels) == pytest.approx(1.0)
    assert pred.labels.max() == labels.max() and pred.scores.shape == (labels.max(),)


@pytest.mark.parametrize("tta", [False, True])
def test_tiled_equals_untiled_instances(tta):
    labels = discs(seed=1)
    img = (labels[None] > 0).astype(np.float32)
    full = _predictor(WindowCentroidNet(), tta=tta)(img)
    # tiles of 48 px with the default overlap (receptive field 13 -> 14 px)
    tiled = _predictor(WindowCentroidNet(), tile=48, tta=tta, batch=4)(img)
    # both find the 30 discs: same count, and the untiled result is the ground truth
    assert int(full.labels.max()) == int(tiled.labels.max()) == int(labels.max()) == 30
    assert adjusted_rand_index(labels, full.labels) == pytest.approx(1.0)
    assert adjusted_rand_index(full.labels, tiled.labels) == pytest.approx(1.0)
    # and per object: same pixel set (label ids may be numbered differently), one-to-one
    matched = set()
    for i in range(1, int(full.labels.max()) + 1):
        ids = np.unique(tiled.labels[full.labels == i])
        assert len(ids) == 1 and ids[0] > 0
        assert np.array_equal(tiled.labels == ids[0], full.labels == i)
        matched.add(int(ids[0]))
    assert len(matched) == 30


def test_too_small_overlap_splits_objects_on_tile_borders():
    # control: overlap 0 (window 13 px) -> discs cut by a tile border get wrong offsets
    labels = discs(seed=1)
    img = (labels[None] > 0).astype(np.float32)
    tiled = _predictor(WindowCentroidNet(), tile=48, overlap=0)
    full = _predictor(WindowCentroidNet())
    # embeddings of pixels near tile borders move (by up to a few pixels * 0.1) ...
    diff = (tiled.outputs(img).embedding - full.outputs(img).embedding).abs().max()
    assert diff > 0.05
    # ... and block-wise instances without network context or halo are no longer exactly the
    # ground truth (with the default halo the block's region gives the network enough context)
    bare = _predictor(WindowCentroidNet(), tile=48, overlap=0, halo=0)
    assert adjusted_rand_index(labels, bare(img).labels) < 1 - 1e-6
    assert adjusted_rand_index(labels, tiled(img).labels) == pytest.approx(1.0)


# --------------------------------------------------------------------------- checkpoints / CLI
def _tiny_checkpoint(tmp_path, name="model.pt", cells=False):
    """A random-weight tiny U-Net checkpoint. Its predictions are empty (seed < 0.5 everywhere);
    ``cells=True`` zeroes every weight instead, so that the semi-conv embedding is exactly the
    pixel position * coord_scale and seed = 0.5 everywhere: with fg_thresh 0.4 every pixel is
    foreground and threshold clustering (delta_v 0.2) cuts the image into many compact cells --
    a prediction with many instances that tiling must reproduce exactly (tile origins enter the
    embedding)."""
    cfg = Config()
    cfg.model.params = {
        "heads": {"embedding": 4, "seed": 1},
        "semiconv": True,
        "depth": 2,
        "width": 4,
    }
    cfg.cluster = ClusterConfig("threshold", {"delta_v": 0.5})
    torch.manual_seed(0)
    model = build_model("unet", heads={"embedding": 4, "seed": 1}, semiconv=True, depth=2, width=4)
    if cells:
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
        cfg.cluster = ClusterConfig("threshold", {"delta_v": 0.2, "fg_thresh": 0.4})
    path = ck.save_checkpoint(
        tmp_path / name, model_state=model.state_dict(), config_yaml=config_to_yaml(cfg), step=0
    )
    return path, model, cfg


def test_load_model_from_file_run_folder_and_pretrained_name(tmp_path):
    path, model, _ = _tiny_checkpoint(tmp_path / "run", "best.pt")
    loaded, cfg = load_model(tmp_path / "run")
    assert cfg.model.params["heads"] == {"embedding": 4, "seed": 1}
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    # a shipped pretrained model: <name>.pt + <name>.json with its sha256
    pre = tmp_path / "pretrained"
    pre.mkdir()
    shutil.copy(path, pre / "tiny.pt")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (pre / "tiny.json").write_text(json.dumps({"sha256": digest}))
    assert resolve_model("tiny", pre) == pre / "tiny.pt"
    (pre / "tiny.json").write_text(json.dumps({"sha256": "0" * 64}))
    with pytest.raises(ck.CheckpointError, match="sha256"):
        resolve_model("tiny", pre)
    with pytest.raises(FileNotFoundError, match="shipped: tiny"):
        resolve_model("nonexistent", pre)


def test_incompatible_checkpoint_is_a_clear_error(tmp_path):
    path, _, cfg = _tiny_checkpoint(tmp_path)
    state = ck.load_checkpoint(path)
    state["model"] = {k: v for k, v in state["model"].items() if "decoders" not in k}
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(ck.CheckpointError, match="missing .* keys"):
        load_model(tmp_path / "broken.pt")


def test_predict_cli_writes_files_and_reports_bad_images(tmp_path, capsys):
    from instembed.cli import main

    path, model, cfg = _tiny_checkpoint(tmp_path, cells=True)
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        tifffile.imwrite(inputs / f"img{i}.tif", (rng.random((40, 52)) * 1000).astype(np.uint16))
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    rc = main(
        ["predict", "--model", str(path), str(inputs), "--out", str(out), "--no-progress",
         "--coco", str(out / "coco.json"), "--panoptic", "--tile", "32", "--overlap", "8"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 1  # one input failed
    assert "broken.png" in captured.err and "1 input(s) failed" in captured.err
    assert not (out / "broken.tif").exists()
    coco = json.loads((out / "coco.json").read_text())
    panoptic = json.loads((out / "panoptic.json").read_text())
    image_ids = {im["file_name"]: im["id"] for im in panoptic["images"]}
    assert sorted(image_ids) == ["img0.png", "img1.png"]
    assert {c["image_id"] for c in coco} == set(image_ids.values())
    from pycocotools import mask as mask_utils

    for i in range(2):
        lab = tifffile.imread(out / f"img{i}.tif")
        table = json.loads((out / f"img{i}.json").read_text())
        assert lab.shape == (40, 52) and table["height"] == 40
        ids = sorted(int(v) for v in np.unique(lab) if v)
        # every pixel is foreground and the cells are numbered 1..N, N well above 1
        assert (lab > 0).all() and len(ids) >= 8 and ids == list(range(1, len(ids) + 1))
        assert [r["id"] for r in table["instances"]] == ids
        for r in table["instances"]:  # area and bbox agree with the label image
            ys, xs = np.nonzero(lab == r["id"])
            assert r["area"] == len(ys)
            assert r["bbox"] == [
                xs.min(),
                ys.min(),
                xs.max() - xs.min() + 1,
                ys.max() - ys.min() + 1,
            ]
        assert (out / f"img{i}_overlay.png").is_file()
        pan = np.asarray(Image.open(out / "panoptic" / f"img{i}.png")).astype(np.int64)
        assert np.array_equal(pan[..., 0] + 256 * pan[..., 1], lab)
        # the COCO RLE of each instance decodes to its mask
        # (image ids are 1-based positions in the sorted input list, failed inputs included:
        # broken.png is 1; panoptic.json maps them to file names)
        recs = [c for c in coco if c["image_id"] == image_ids[f"img{i}.png"]]
        assert len(recs) == len(ids)
        for c in recs:
            m = mask_utils.decode(
                {"size": c["segmentation"]["size"], "counts": c["segmentation"]["counts"].encode()}
            )
            assert m.sum() == c["area"]
    # the CLI's tiled result equals the library's untiled one on the same image
    from instembed.data.io import load_image

    img, _ = load_image(inputs / "img0.tif", "percentile", channels=1)
    direct = Predictor(model, cfg)(img).labels
    written = tifffile.imread(out / "img0.tif")
    assert direct.max() == written.max() >= 8
    assert adjusted_rand_index(direct, written) == pytest.approx(1.0)


def test_predict_cli_missing_inputs(tmp_path, capsys):
    from instembed.cli import main

    path, _, _ = _tiny_checkpoint(tmp_path)
    rc = main(
        ["predict", "--model", str(path), str(tmp_path / "nope"), "--out", str(tmp_path / "o")]
    )
    assert rc == 1 and "nope" in capsys.readouterr().err
    rc = main(
        [
            "predict",
            "--model",
            str(tmp_path / "missing.pt"),
            str(path),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 2 and "missing.pt" in capsys.readouterr().err


def test_overlapping_prediction_is_written_as_a_mask_stack(tmp_path):
    from instembed.data.io import read_labels
    from instembed.engine.predict import WriteOptions, write_prediction
    from instembed.structures import Instances

    masks = np.zeros((2, 10, 12), bool)
    masks[0, 2:8, 1:7] = True
    masks[1, 5:9, 5:11] = True  # overlaps mask 0 on rows 5-7, cols 5-6
    labels = np.where(masks[0], 1, np.where(masks[1], 2, 0)).astype(np.int32)
    pred = Instances(labels, np.array([0.9, 0.8], np.float32), masks=masks)
    image = np.random.default_rng(0).random((1, 10, 12)).astype(np.float32)
    written = write_prediction(tmp_path, "a", image, pred, WriteOptions())
    assert tmp_path / "a.tif" in written
    back = read_labels(tmp_path / "a.tif")
    assert back.dtype == bool and np.array_equal(back, masks)
    recs = json.loads((tmp_path / "a.json").read_text())["instances"]
    assert [r["area"] for r in recs] == [36, 24]  # overlap counted in both
    with pytest.raises(ValueError, match="mask-stack TIFF"):
        write_prediction(tmp_path, "b", image, pred, WriteOptions(labels_format="png"))


def test_predict_coco_gt_gives_the_annotation_files_image_ids(tmp_path, capsys):
    """--coco-gt: COCO results and panoptic entries carry the ground truth's image ids (matched
    by file name), not the inputs' positions; an input the file does not list is refused before
    any work, naming the input."""
    from instembed.cli import main

    path, _, _ = _tiny_checkpoint(tmp_path, cells=True)
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        tifffile.imwrite(inputs / f"{name}.tif", (rng.random((40, 52)) * 1000).astype(np.uint16))
    gt = tmp_path / "gt.json"  # ids in another order than the sorted inputs (a -> 1, b -> 2)
    gt.write_text(json.dumps({"images": [{"id": 17, "file_name": "sub/b.tif"},
                                         {"id": 5, "file_name": "a.tif"}],
                              "annotations": [], "categories": []}))  # fmt: skip
    out = tmp_path / "out"
    rc = main(
        ["predict", "--model", str(path), str(inputs), "--out", str(out), "--no-progress",
         "--coco", str(out / "coco.json"), "--panoptic", "--coco-gt", str(gt)]
    )  # fmt: skip
    assert rc == 0
    panoptic = json.loads((out / "panoptic.json").read_text())
    assert {im["file_name"]: im["id"] for im in panoptic["images"]} == {"a.png": 5, "b.png": 17}
    coco = json.loads((out / "coco.json").read_text())
    assert {c["image_id"] for c in coco} == {5, 17}
    # the records of image 5 are those of a.tif: their areas sum to a.tif's labelled pixels
    lab_a = tifffile.imread(out / "a.tif")
    assert sum(c["area"] for c in coco if c["image_id"] == 5) == int((lab_a > 0).sum())

    gt.write_text(json.dumps({"images": [{"id": 5, "file_name": "a.tif"}]}))
    capsys.readouterr()
    rc = main(["predict", "--model", str(path), str(inputs), "--out", str(tmp_path / "o2"),
               "--no-progress", "--coco", str(tmp_path / "c2.json"), "--coco-gt", str(gt)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "1 input(s) are not among its images, e.g. 'b.tif'" in err
    assert not (tmp_path / "o2").exists()  # refused before any work
    rc = main(["predict", "--model", str(path), str(inputs), "--out", str(tmp_path / "o3"),
               "--coco-gt", str(gt)])  # fmt: skip
    assert rc == 2 and "--coco-gt gives image ids to --coco / --panoptic" in capsys.readouterr().err


def test_predictor_read_applies_the_models_normalisation_and_channels(tmp_path):
    """A gray uint16 file whose intensities span 10..40: the model's percentile normalisation
    with min_range 150 gives (x - p1) / 150 (a dim field stays dim; without the floor it would
    span 0..1), repeated into the 3 channels of a colour model."""
    img = np.tile(np.arange(10, 41, dtype=np.uint16), (31, 1))  # each value 31 times
    tifffile.imwrite(tmp_path / "dim.tif", img)
    cfg = Config()
    cfg.data.reader_params = {"normalize": "percentile", "min_range": 150}
    cfg.model.in_channels = 3
    net = build_model("unet", 3, heads={"embedding": 2}, depth=1, width=4)
    got = Predictor(net, cfg).read(tmp_path / "dim.tif")
    lo = np.percentile(img, 1.0)  # the reader's low percentile
    assert got.shape == (3, 31, 31) and got.dtype == np.float32
    np.testing.assert_allclose(got[0], (img - lo) / 150.0, atol=1e-6)
    assert np.array_equal(got[0], got[2]) and got.max() < 0.21
    cfg.data.reader_params = {"normalize": "percentile"}
    plain = Predictor(net, cfg).read(tmp_path / "dim.tif")
    assert plain.max() > 0.99  # the unfloored stretch, for contrast

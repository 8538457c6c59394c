"""``instembed.segment``: one call on an array, a path or a stack of frames gives what
``instembed predict`` writes for the same file; clear errors; the per-process model cache; a
light ``import instembed``."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile

import instembed
from instembed import api
from instembed.cli import main

STARDIST_IMAGE = "stardist/data/images/img2d.tif"
BBBC010_WELL = "A04"


def predict_cli(out, model, *inputs, extra=()):
    """``instembed predict`` in-process on CPU into ``out``; the written files by stem."""
    args = ["predict", "--model", model, *map(str, inputs), "--out", str(out), *extra]
    assert main(args + ["--no-progress", "--no-overlay", "--device", "cpu"]) == 0
    return {p.stem: p for p in out.glob("*.tif")}


def json_scores(tif):
    recs = json.loads(tif.with_suffix(".json").read_text())["instances"]
    return np.array([r["score"] for r in sorted(recs, key=lambda r: r["id"])], np.float32)


GRAY_MODEL = "bbbc039-nuclei"


@pytest.fixture(scope="module")
def img2d(shared_data):
    return shared_data("stardist_example") / STARDIST_IMAGE


@pytest.fixture(scope="module")
def img2d_predicted(img2d, tmp_path_factory):
    """The label TIFF ``instembed predict --model dsb2018-nuclei`` writes for img2d."""
    return predict_cli(tmp_path_factory.mktemp("pred"), "dsb2018-nuclei", img2d)["img2d"]


def test_array_and_path_give_the_labels_of_predict(img2d, img2d_predicted):
    want = tifffile.imread(img2d_predicted)
    assert want.ndim == 2 and want.max() > 20  # a label image with many nuclei
    for image in (tifffile.imread(img2d), str(img2d)):
        res = instembed.segment(image, "dsb2018-nuclei", device="cpu")
        assert res.masks is None and res.labels.dtype == np.int32
        np.testing.assert_array_equal(res.labels, want)
        np.testing.assert_allclose(res.scores, json_scores(img2d_predicted), atol=1e-6)
        assert res.meta["normalize"] == "percentile_darkbg"  # the model's own, from its config


def test_a_stack_of_frames_gives_one_result_per_frame_as_predict_per_file(img2d, tmp_path):
    # a 1-channel model: for it a (3, H, W) array could be 3 frames or one RGB image
    raw = tifffile.imread(img2d)
    crops = [raw[:192, :192], raw[192:384, 128:320], raw[320:, 320:]]
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, c in enumerate(crops):
        tifffile.imwrite(folder / f"f{i}.tif", c)
    written = predict_cli(tmp_path / "pred", GRAY_MODEL, folder)
    stack = np.stack(crops)
    with pytest.raises(ValueError, match=r"ambiguous .* frames=True .* frames=False"):
        instembed.segment(stack, GRAY_MODEL, device="cpu")  # 3 frames or RGB?
    res = instembed.segment(stack, GRAY_MODEL, device="cpu", frames=True)
    assert isinstance(res, list) and len(res) == 3
    for i, r in enumerate(res):
        np.testing.assert_array_equal(r.labels, tifffile.imread(written[f"f{i}"]))
    assert sum(r.num_instances for r in res) > 10


def test_worm_model_returns_the_mask_stack_predict_writes(shared_data, tmp_path):
    (image,) = (shared_data("bbbc010") / "BBBC010_v1_images").glob(f"*_{BBBC010_WELL}_w2_*.tif")
    # overlapping worms on request (the shipped clustering gives one worm per pixel)
    over = ["--cluster", "overlap_thresh=0.5"]
    tif = predict_cli(tmp_path / "pred", "bbbc010-worms", image, extra=over)[image.stem]
    want = tifffile.imread(tif)
    assert want.ndim == 3  # a mask stack: worms overlap
    res = instembed.segment(
        tifffile.imread(image), "bbbc010-worms", device="cpu", cluster={"overlap_thresh": 0.5}
    )
    assert res.masks is not None and res.masks.dtype == bool
    np.testing.assert_array_equal(res.masks, want > 0)
    np.testing.assert_array_equal(res.masks_or_labels, want > 0)
    assert res.labels.shape == want.shape[1:] and len(res.scores) == len(want)
    np.testing.assert_allclose(res.scores, json_scores(tif), atol=1e-6)


def test_rgb_is_averaged_to_gray_as_predict_does(img2d, tmp_path, caplog):
    from PIL import Image

    gray = tifffile.imread(img2d)[:96, :96].astype(np.float64)
    gray = (gray - gray.min()) / (gray.max() - gray.min())
    rgb = np.round(np.stack([gray, 0.7 * gray, 0.3 + 0.5 * gray], -1) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    from_file = instembed.segment(tmp_path / "rgb.png", GRAY_MODEL, device="cpu")
    with caplog.at_level(logging.WARNING, logger="instembed.api"):
        for layout in (rgb, np.moveaxis(rgb, -1, 0)):  # (H, W, 3) and (3, H, W)
            frames = None if layout.shape[-1] == 3 else False
            res = instembed.segment(layout, GRAY_MODEL, device="cpu", frames=frames)
            np.testing.assert_array_equal(res.labels, from_file.labels)
    assert "averaged to 1 gray channel" in caplog.text and "channel=C" in caplog.text
    one = instembed.segment(rgb, GRAY_MODEL, device="cpu", channel=0)
    assert one.labels.shape == (96, 96)


def test_rgb_is_kept_as_colour_for_a_colour_model(img2d, tmp_path, caplog):
    from PIL import Image

    gray = tifffile.imread(img2d)[:96, :96].astype(np.float64)
    gray = (gray - gray.min()) / (gray.max() - gray.min())
    rgb = np.round(np.stack([gray, 0.7 * gray, 0.3 + 0.5 * gray], -1) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    from_file = instembed.segment(tmp_path / "rgb.png", "dsb2018-nuclei", device="cpu")
    with caplog.at_level(logging.WARNING, logger="instembed.api"):
        for layout in (rgb, np.moveaxis(rgb, -1, 0)):  # (H, W, 3) and (3, H, W): one image
            res = instembed.segment(layout, "dsb2018-nuclei", device="cpu")
            np.testing.assert_array_equal(res.labels, from_file.labels)
    assert "averaged" not in caplog.text  # the 3-channel model reads the colour
    # a gray image is repeated into the 3 channels: the same as its RGB copy with R = G = B
    g8 = np.round(gray * 255).astype(np.uint8)
    np.testing.assert_array_equal(
        instembed.segment(g8, "dsb2018-nuclei", device="cpu").labels,
        instembed.segment(np.stack([g8] * 3, -1), "dsb2018-nuclei", device="cpu").labels,
    )


def test_normalize_override(img2d):
    from instembed.data.normalize import normalize_image

    raw = tifffile.imread(img2d)[:128, :128]
    auto = instembed.segment(raw, "dsb2018-nuclei", device="cpu")
    pre = normalize_image(raw[None], "percentile_darkbg")[0]
    given = instembed.segment(pre, "dsb2018-nuclei", device="cpu", normalize="none")
    np.testing.assert_array_equal(given.labels, auto.labels)
    assert given.meta["normalize"] == "none"


def _one_line_error(exc_type, image, match, **kw):
    with pytest.raises(exc_type, match=match) as err:
        instembed.segment(image, GRAY_MODEL, device="cpu", **kw)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("segment: ")


def test_clear_one_line_errors_for_dtype_shape_and_options():
    a = np.zeros((32, 40), np.uint16)
    _one_line_error(TypeError, a.astype(complex), r"integer or float .* complex128 .*\(32, 40\)")
    _one_line_error(TypeError, a > 0, r"integer or float .* dtype bool \(a mask")
    _one_line_error(TypeError, a.astype(object), r"dtype object")
    _one_line_error(TypeError, [a, a], r"NumPy array or an image path, got list .*np\.stack")
    _one_line_error(TypeError, 3, r"NumPy array or an image path, got int")
    _one_line_error(ValueError, np.zeros((0, 40), np.uint8), r"non-empty .* \(0, 40\)")
    _one_line_error(
        ValueError, np.zeros(40, np.uint8), r"expected an image \(H, W\).* \(40,\) \(1-D\)"
    )
    _one_line_error(ValueError, np.zeros((1, 2, 3, 40, 40)), r"\(1, 2, 3, 40, 40\) \(5-D\)")
    _one_line_error(ValueError, np.zeros((3, 32, 40)), r"ambiguous for a 1-channel model")
    _one_line_error(ValueError, np.zeros((3, 3, 3)), r"cannot tell the channel axis")
    _one_line_error(ValueError, a, r"frames=True needs a stack", frames=True)
    _one_line_error(
        ValueError, np.zeros((8, 32, 40)), r"frames=False needs|cannot tell", frames=False
    )
    _one_line_error(ValueError, np.full((32, 40), np.nan), r"finite pixel values, got 1280 NaN")
    _one_line_error(ValueError, a, r"normalize 'auto' or one of .*'zscore'", normalize="zscore")
    _one_line_error(ValueError, a, r"channel to be an int >= 0 .* -1", channel=-1)
    _one_line_error(ValueError, a, r"channel 2 asked for, .* 1 channel", channel=2)
    _one_line_error(ValueError, a, r"tile to be an int >= 16 .* 8", tile=8)
    with pytest.raises(FileNotFoundError, match="shipped: bbbc010-worms"):
        instembed.segment(a, "no-such-model")


def test_layout_rules():
    f = api.split_frames
    assert f((64, 80), 1) == (False, "HW")
    assert f((64, 80, 3), 1) == (False, "HWC")
    assert f((3, 64, 80), 3) == (False, "CHW")  # a 3-channel model: channels
    assert f((3, 64, 80), 1, frames=False) == (False, "CHW")
    assert f((3, 64, 80), 1, channel=1) == (False, "CHW")  # channel= means channels
    assert f((3, 64, 80), 1, frames=True) == (True, "HW")
    assert f((1, 64, 80), 1) == (False, "CHW")
    assert f((10, 64, 80), 1) == (True, "HW")  # first axis > 4: a stack of gray frames
    assert f((10, 64, 80), 3) == (True, "HW")
    assert f((10, 64, 80, 3), 1) == (True, "HWC")
    assert f((10, 3, 64, 80), 1) == (True, "CHW")
    with pytest.raises(ValueError, match="ambiguous"):
        f((2, 64, 80), 1)


def test_models_are_cached_per_model_and_device(monkeypatch, tmp_path):
    from instembed.engine import predict as P

    loads = []
    real = P.load_model

    def counting(spec, device="cpu", *a, **kw):
        loads.append((str(spec), str(device)))
        return real(spec, device, *a, **kw)

    monkeypatch.setattr(P, "load_model", counting)
    api.clear_model_cache()
    image = np.random.default_rng(0).integers(0, 255, (48, 48), dtype=np.uint8)
    first = instembed.segment(image, "bbbc039-nuclei", device="cpu")
    again = instembed.segment(image, device="cpu", tta=True)  # options do not reload
    assert len(loads) == 1
    np.testing.assert_array_equal(first.labels.shape, again.labels.shape)
    ckpt = tmp_path / "nuclei.pt"
    shutil.copy(P.PRETRAINED_DIR / "bbbc039-nuclei.pt", ckpt)
    instembed.segment(image, ckpt, device="cpu")
    instembed.segment(image, str(ckpt), device="cpu")  # the same file, named as str
    assert len(loads) == 2
    api.clear_model_cache()
    instembed.segment(image, device="cpu")
    assert len(loads) == 3


def test_import_instembed_does_not_import_torch():
    code = (
        "import sys, instembed; from instembed import segment; "
        "print('torch' in sys.modules, callable(segment))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"], "import instembed imported torch"
    assert "segment" in dir(instembed)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        instembed.nope  # noqa: B018

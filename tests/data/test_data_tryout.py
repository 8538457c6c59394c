"""Defects found by a user try-out of the data stage, one test (group) each:

1. hidden files (``._*`` AppleDouble, ``.DS_Store``) are ignored wherever folders are listed;
2. float label TIFFs with whole-number values (Fiji) are read as integer labels;
3. the StarDist layouts (``[split/]images/ + masks/``, the package's img2d/mask2d example);
4. ``load_image(channel=)`` and a notice when channels are averaged;
5. ``data info`` progress bar (``--no-progress``), report unchanged;
6. defaults shown in ``--help`` of ``data`` and ``synth``.
"""

import argparse
import logging
import re
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

from instembed.cli import build_parser, main
from instembed.data import io
from instembed.data.readers import detect_format, open_dataset


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _tif(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, arr)


def _labels(h=16, w=20, n=2):
    lab = np.zeros((h, w), np.uint16)
    for k in range(1, n + 1):
        lab[2 * k : 2 * k + 2, 1 : 1 + 3 * k] = k
    return lab


def _appledouble(path):
    """What macOS leaves on a non-HFS volume: a small binary '._name' beside each file."""
    path.write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + b"\x00" * 40)


# ----------------------------------------------------------------------------- 1. dot-files


def test_folder_reader_ignores_appledouble_and_ds_store(tmp_path):
    root = tmp_path / "set"
    for i in (1, 2):
        _png(root / "images" / f"img{i}.png", np.full((16, 20), 40 * i, np.uint8))
        _png(root / "labels" / f"img{i}.png", _labels(n=i).astype(np.uint8))
    for sub in ("images", "labels"):
        _appledouble(root / sub / "._img1.png")
        _appledouble(root / sub / "._img2.png")
        (root / sub / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "labels" / ".hidden_masks").mkdir()  # a hidden folder is no mask folder either
    (root / ".DS_Store").write_bytes(b"Bud1")
    r = open_dataset(root)
    assert r.format == "folder" and [it.name for it in r.items] == ["img1", "img2"]
    assert r.bad == [] and [s.num_instances for s in r] == [1, 2]
    # io's folder listing (a folder of binary masks) too
    masks = tmp_path / "masks"
    m = np.zeros((8, 8), np.uint8)
    m[1:3, 1:3] = 255
    _png(masks / "a.png", m)
    _appledouble(masks / "._a.png")
    (masks / ".DS_Store").write_bytes(b"Bud1")
    assert io.read_labels(masks).shape == (1, 8, 8)
    assert [p.name for p in io.image_files(masks)] == ["a.png"]


def test_other_readers_ignore_hidden_files(tmp_path):
    # DSB2018: a ._<id> folder beside <id>/, ._ files inside images/ and masks/
    dsb = tmp_path / "dsb"
    img = np.zeros((12, 12, 3), np.uint8)
    m = np.zeros((12, 12), np.uint8)
    m[2:5, 2:5] = 255
    _png(dsb / "abc" / "images" / "abc.png", img)
    _png(dsb / "abc" / "masks" / "m1.png", m)
    _appledouble(dsb / "abc" / "images" / "._abc.png")
    _appledouble(dsb / "abc" / "masks" / "._m1.png")
    (dsb / ".ipynb_checkpoints" / "masks").mkdir(parents=True)
    r = open_dataset(dsb)
    assert r.format == "dsb2018" and len(r) == 1 and len(r.items[0].labels) == 1
    assert r[0].num_instances == 1
    # CVPPP: '._plant001_rgb.png' would match '*_rgb.png'
    cv = tmp_path / "cvppp" / "A1"
    _png(cv / "plant001_rgb.png", np.zeros((10, 10, 3), np.uint8))
    _png(cv / "plant001_label.png", _labels(10, 10, 1).astype(np.uint8))
    _appledouble(cv / "._plant001_rgb.png")
    _appledouble(cv / "._plant001_label.png")
    r = open_dataset(tmp_path / "cvppp")
    assert r.format == "cvppp" and [it.name for it in r.items] == ["A1/plant001"]


def test_expand_inputs_skips_hidden_files(tmp_path):
    from instembed.engine.predict import expand_inputs

    _png(tmp_path / "img1.png", np.zeros((8, 8), np.uint8))
    _appledouble(tmp_path / "._img1.png")
    (tmp_path / ".DS_Store").write_bytes(b"Bud1")
    files, bad = expand_inputs([str(tmp_path)])
    assert [f.name for f in files] == ["img1.png"] and bad == []
    only_hidden = tmp_path / "h"
    only_hidden.mkdir()
    _appledouble(only_hidden / "._x.png")
    files, bad = expand_inputs([str(only_hidden)])
    assert files == [] and len(bad) == 1 and "holds no images" in bad[0][1]


# ----------------------------------------------------------------- 2. float labels (Fiji)


def test_integer_valued_float32_label_tiff_is_read_as_labels(tmp_path):
    root = tmp_path / "set"
    lab = _labels(n=3)
    _tif(root / "images" / "a.tif", np.arange(16 * 20, dtype=np.uint16).reshape(16, 20))
    _tif(root / "labels" / "a.tif", lab.astype(np.float32))  # as Fiji saves label images
    assert tifffile.imread(root / "labels" / "a.tif").dtype == np.float32
    for validate in ("header", "full"):
        r = open_dataset(root, validate=validate)
        s = r[0]
        assert s.instances.dtype == np.int32 and np.array_equal(s.instances, lab)
        assert s.num_instances == 3
    got = io.read_labels(root / "labels" / "a.tif")
    assert got.dtype == np.int32 and np.array_equal(got, lab)


def test_non_integer_float_label_tiff_is_refused_naming_the_file(tmp_path):
    root = tmp_path / "set"
    _tif(root / "images" / "a.tif", np.zeros((16, 20), np.uint16))
    bad = _labels().astype(np.float32)
    bad[0, 0] = 0.5
    _tif(root / "labels" / "a.tif", bad)
    with pytest.raises(ValueError, match=r"a\.tif.*non-integer values.*0\.5"):
        open_dataset(root)
    with pytest.raises(io.ImageReadError, match=r"a\.tif.*non-integer"):
        io.read_labels(root / "labels" / "a.tif")
    neg = _labels().astype(np.float32)
    neg[0, 0] = -2
    _tif(root / "labels" / "a.tif", neg)
    with pytest.raises(ValueError, match=r"a\.tif.*negative"):
        open_dataset(root)


# ---------------------------------------------------------------------- 3. StarDist layout


def _stardist_split(root, split, names):
    for i, name in enumerate(names):
        _tif(root / split / "images" / name, np.full((16, 20), i, np.uint16))
        _tif(root / split / "masks" / name, _labels(n=i + 1))


def test_stardist_training_layout_with_splits(tmp_path):
    root = tmp_path / "sd"
    _stardist_split(root, "train", ["a.tif", "b.tif"])
    _stardist_split(root, "test", ["c.tif"])
    fmt, why = detect_format(root)
    assert fmt == "stardist" and "images/ + masks/" in why
    r = open_dataset(root)
    assert [it.name for it in r.items] == ["test/c", "train/a", "train/b"]
    assert [s.num_instances for s in r] == [1, 1, 2]
    assert r[2].meta["split"] == "train"
    assert [it.name for it in open_dataset(root, split="train").items] == ["train/a", "train/b"]
    with pytest.raises(ValueError, match="no split 'val'"):
        open_dataset(root, split="val")
    # a mask without an image of the same name is a problem naming the file
    _tif(root / "train" / "masks" / "z.tif", _labels())
    with pytest.raises(ValueError, match=r"z\.tif: mask has no image of the same name"):
        open_dataset(root)


def test_stardist_images_masks_at_the_root(tmp_path):
    root = tmp_path / "sd"
    _stardist_split(tmp_path, "sd", ["a.tif", "b.tif"])
    assert detect_format(root)[0] == "folder"  # the generic reader reads this layout
    for fmt in ("auto", "stardist"):
        r = open_dataset(root, format=fmt)
        assert [it.name for it in r.items] == ["a", "b"]
        assert [s.num_instances for s in r] == [1, 2]


def test_stardist_img_mask_pairs_in_one_folder(tmp_path):
    root = tmp_path / "data"
    _tif(root / "images" / "img2d.tif", np.zeros((16, 20), np.uint16))
    _tif(root / "images" / "mask2d.tif", _labels(n=3))
    _png(root / "images" / "histo.jpg", np.zeros((8, 8, 3), np.uint8))  # no mask: ignored
    for path in (root, root / "images"):
        fmt, why = detect_format(path)
        assert fmt == "stardist" and "img*/mask*" in why
        r = open_dataset(path)
        assert [(it.name, it.labels[0].name) for it in r.items] == [("img2d", "mask2d.tif")]
        assert r[0].num_instances == 3


def test_stardist_shipped_example(shared_data, capsys):
    root = shared_data("stardist_example") / "stardist" / "data"
    mask = tifffile.imread(root / "images" / "mask2d.tif")
    n = int((np.unique(mask) > 0).sum())
    r = open_dataset(root)
    assert r.format == "stardist" and len(r) == 1
    s = r[0]
    assert s.num_instances == n == 125
    assert s.image.shape == (1, 512, 512)
    assert main(["data", "info", str(root), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "format           stardist" in out and f"instances        {n}\n" in out


# -------------------------------------------------------------- 4. channel choice / notice


def _rgb(tmp_path, name="rgb.png"):
    hwc = np.zeros((6, 7, 3), np.uint8)
    hwc[..., 0] = 10
    hwc[..., 1] = np.arange(42, dtype=np.uint8).reshape(6, 7) * 5
    hwc[..., 2] = 250
    _png(tmp_path / name, hwc)
    return tmp_path / name, hwc


def test_load_image_channel_picks_one_channel(tmp_path, caplog):
    path, hwc = _rgb(tmp_path)
    with caplog.at_level(logging.WARNING, logger="instembed.data.io"):
        img, dtype = io.load_image(path, "range", channels=1, channel=1)
        assert img.shape == (1, 6, 7) and dtype == "uint8"
        assert np.array_equal(img[0], hwc[..., 1].astype(np.float32) / 255)
        three, _ = io.load_image(path, "none", channels=3, channel=1)
        assert three.shape == (3, 6, 7) and (three == hwc[..., 1][None]).all()
        gray, _ = io.load_image(path, "none", channel=2)
        assert gray.shape == (1, 6, 7) and (gray == 250).all()
    assert "averaged" not in caplog.text
    with pytest.raises(io.ImageReadError, match=r"rgb\.png.*channel 3.*3 channel"):
        io.load_image(path, channel=3)
    with pytest.raises(io.ImageReadError, match=r"rgb\.png.*channel -1"):
        io.load_image(path, channel=-1)


def test_averaging_channels_logs_a_notice_once_per_image(tmp_path, caplog):
    path, hwc = _rgb(tmp_path)
    other, _ = _rgb(tmp_path, "other.png")
    with caplog.at_level(logging.WARNING, logger="instembed.data.io"):
        img, _ = io.load_image(path, "none", channels=1)
        io.load_image(path, "none", channels=1)  # the same image again: no second notice
        io.load_image(other, "none", channels=1)
    assert np.allclose(img[0], hwc.astype(np.float32).mean(-1))
    notes = [r.getMessage() for r in caplog.records if "averaged" in r.getMessage()]
    assert len(notes) == 2 and "rgb.png" in notes[0] and "other.png" in notes[1]
    assert "3 image channels" in notes[0] and "channel=C" in notes[0] and "--channel" in notes[0]


# ------------------------------------------------------------------- 5. data info progress

#: ``instembed data info DIR --per-image`` of the synth folder below, as printed before the
#: progress bar was added (the report must not change)
REPORT = """\
format           folder  (auto: images/ + labels/ folders)
images           2
instances        23
per image        min 11  mean 11.50  max 12
empty images     0
overlap pixels   0
ignore pixels    0
image sizes      40x48 (2)
image dtypes     uint8 (2)
channels         1 (2)
label encoding   ids (2)
semantic labels  yes
instances/class  1: 23
  touching_cells_0000: 11 instances, 0 overlap px
  touching_cells_0001: 12 instances, 0 overlap px
"""


@pytest.fixture
def synth_dir(tmp_path, capsys):
    out = tmp_path / "ds"
    argv = ["synth", "touching_cells", "--n", "2", "--size", "40", "48", "--seed", "3"]
    assert main([*argv, "--out", str(out)]) == 0
    capsys.readouterr()
    return out


def test_data_info_no_progress_keeps_the_report(synth_dir, capsys):
    assert main(["data", "info", str(synth_dir), "--per-image", "--no-progress"]) == 0
    cap = capsys.readouterr()
    assert cap.out == REPORT and cap.err == ""
    assert main(["data", "info", str(synth_dir), "--per-image"]) == 0  # stderr no TTY: no bar
    assert capsys.readouterr().out == REPORT


def test_data_info_progress_bar_on_a_terminal(synth_dir, capsys, monkeypatch):
    import instembed.commands.data as cmd

    monkeypatch.setattr(cmd, "_isatty", lambda stream: True)
    assert main(["data", "info", str(synth_dir), "--per-image"]) == 0
    cap = capsys.readouterr()
    assert cap.out == REPORT  # the bar goes to stderr only
    assert re.search(r"reading: 100%.*2/2", cap.err)
    assert main(["data", "info", str(synth_dir), "--per-image", "--no-progress"]) == 0
    cap = capsys.readouterr()
    assert cap.out == REPORT and cap.err == ""


# ---------------------------------------------------------------------- 6. --help defaults


def _subparser(parser, *names):
    for name in names:
        action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = action.choices[name]
    return parser


def _option_help(help_text, option):
    """The help lines of ``option`` in an argparse help text (up to the next option)."""
    lines = help_text.splitlines()
    start = next(
        i for i, ln in enumerate(lines) if re.match(rf"\s+(-\w, )?{re.escape(option)}\b", ln)
    )
    block = [lines[start]]
    for ln in lines[start + 1 :]:
        if re.match(r"\s{1,4}-", ln) or not ln.strip():
            break
        block.append(ln)
    return " ".join(block)


@pytest.mark.parametrize("command", [("data", "info"), ("synth",)])
def test_help_shows_every_default(command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    parser = _subparser(build_parser(), *command)
    text = parser.format_help()
    checked = 0
    for action in parser._actions:
        if not action.option_strings or action.default in (None, argparse.SUPPRESS):
            continue
        block = _option_help(text, action.option_strings[-1])
        assert "default" in block.lower(), (command, action.option_strings, block)
        checked += 1
    assert checked >= 4  # info: --format --skip-bad --per-image --no-progress; synth: 4
    if command == ("synth",):
        assert "(default: 96 96)" in text and "default 16" in text
    if command == ("data", "info"):
        assert "--no-progress" in text
        assert "  instembed data info PATH" in text  # the description keeps its layout


def test_data_package_still_imports_without_torch():
    import subprocess

    code = (
        "import sys, instembed.data, instembed.data.readers, instembed.data.readers.stardist, "
        "instembed.commands.data, instembed.commands.synth; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

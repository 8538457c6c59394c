"""Image / label file io: dtypes, label encodings, normalisation, and clear errors."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from instembed.data import io


def test_read_image_keeps_dtype_and_layout(tmp_path):
    rng = np.random.default_rng(0)
    cases = {
        "a.png": rng.integers(0, 256, (7, 9), dtype=np.uint8),
        "b.png": rng.integers(0, 65536, (7, 9), dtype=np.uint16),
        "c.tif": rng.integers(0, 4096, (7, 9), dtype=np.uint16),
        "d.tif": rng.random((7, 9), dtype=np.float32),
        "e.tif": rng.integers(0, 2**31, (7, 9), dtype=np.int32),
        "f.png": rng.integers(0, 256, (7, 9, 4), dtype=np.uint8),  # RGBA
    }
    for name, arr in cases.items():
        if name.endswith(".png"):
            Image.fromarray(arr).save(tmp_path / name)
        else:
            tifffile.imwrite(tmp_path / name, arr)
        got = io.read_image(tmp_path / name)
        assert got.dtype == arr.dtype and np.array_equal(got, arr), name
        info = io.probe(tmp_path / name)
        assert info.shape == (7, 9)
    chw = io.to_chw(io.read_image(tmp_path / "f.png"))
    assert chw.shape == (3, 7, 9)  # alpha dropped
    assert np.array_equal(chw, np.moveaxis(cases["f.png"][..., :3], -1, 0))


def test_percentile_and_range_normalisation_by_hand():
    x = np.arange(101, dtype=np.uint16).reshape(1, 1, 101)
    # numpy's linear percentile of 0..100: the 1st is 1.0, the 99.8th is 99.8
    out = io.percentile_normalize(x)
    assert out.dtype == np.float32
    assert np.allclose(out, (np.arange(101) - 1.0) / 98.8)
    assert io.range_normalize(np.array([[0, 65535]], np.uint16)).tolist() == [[0.0, 1.0]]
    assert io.range_normalize(np.array([[0, 255]], np.uint8)).tolist() == [[0.0, 1.0]]
    assert np.all(io.percentile_normalize(np.full((1, 4, 4), 7, np.uint16)) == 0)


def test_dark_background_inverts_bright_backgrounds_only():
    # bright background (median 0.9) with a dark object: inverted, object becomes bright
    bright = np.full((1, 8, 8), 0.9, np.float32)
    bright[0, 2:4, 2:4] = 0.1
    out = io.dark_background(bright)
    assert np.allclose(out, 1.0 - bright) and out[0, 2, 2] > out[0, 0, 0]
    # dark background: unchanged (same object); colour: decided on the channel mean
    dark = 1.0 - bright
    assert io.dark_background(dark) is dark
    rgb = np.stack([bright[0], bright[0] * 0.2, bright[0]])  # channel mean of bg 0.66
    assert np.allclose(io.dark_background(rgb), 1.0 - rgb)
    raw = (bright * 1000).astype(np.uint16)
    assert np.allclose(
        io.normalize_image(raw, "percentile_darkbg"), 1.0 - io.percentile_normalize(raw)
    )
    with pytest.raises(ValueError, match="percentile_darkbg"):
        io.normalize_image(raw, "darkbg")


def _two_touching_and_one_apart():
    r = np.zeros((12, 16), np.uint8)
    r[2:6, 2:6] = 1  # instance A, value 1
    r[2:6, 6:10] = 2  # instance B, value 2, touches A
    r[8:11, 12:15] = 1  # instance C, value 1 again, apart
    return r


def test_label_encodings(tmp_path):
    r = _two_touching_and_one_apart()
    # BBBC039-like RGBA: G = B = 0, R = colouring -> 3 components (foreground has only 2)
    rgba = np.zeros((12, 16, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = r, 255
    Image.fromarray(rgba).save(tmp_path / "bbbc.png")
    lab, enc = io.read_labels(tmp_path / "bbbc.png", return_encoding=True)
    assert enc == "components" and lab.max() == 3
    assert sorted(np.bincount(lab.ravel())[1:].tolist()) == [9, 16, 16]  # 3x3, 4x4, 4x4
    # palette PNG: indices are ids (CVPPP)
    pal = Image.fromarray(r * 5, mode="L").convert("P")
    pal.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    pal.save(tmp_path / "pal.png")
    assert np.array_equal(io.read_labels(tmp_path / "pal.png"), r * 5)
    # RGB-coded: every distinct non-black colour is one instance
    rgb = np.zeros((12, 16, 3), np.uint8)
    rgb[r == 1] = (200, 10, 10)
    rgb[r == 2] = (10, 200, 10)
    rgb[10, 0] = (10, 10, 200)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    lab, enc = io.read_labels(tmp_path / "rgb.png", return_encoding=True)
    assert enc == "rgb" and len(np.unique(lab)) == 4  # background + 3 colours
    assert (lab[r == 1] == lab[2, 2]).all()  # same colour = same id, even when not connected
    # binary 0/255: each connected region is one instance
    Image.fromarray(((r > 0) * 255).astype(np.uint8)).save(tmp_path / "bin.png")
    lab, enc = io.read_labels(tmp_path / "bin.png", return_encoding=True)
    assert enc == "binary" and lab.max() == 2  # A and B merge, C apart
    # plain ids, 16-bit, non-consecutive
    ids = r.astype(np.uint16) * 1000
    Image.fromarray(ids).save(tmp_path / "ids.png")
    assert np.array_equal(io.read_labels(tmp_path / "ids.png"), ids)


def test_write_labels_roundtrips(tmp_path):
    lab = np.zeros((10, 11), np.int32)
    lab[1:3, 1:3] = 300  # needs 16 bits
    lab[5:8, 5:9] = 2
    io.write_labels(tmp_path / "l.png", lab)
    assert Image.open(tmp_path / "l.png").mode.startswith("I")
    assert np.array_equal(io.read_labels(tmp_path / "l.png"), lab)
    io.write_labels(tmp_path / "l.tif", lab)
    assert np.array_equal(io.read_labels(tmp_path / "l.tif"), lab)
    for n in (1, 3):  # also a one-mask stack must stay a stack
        stack = np.zeros((n, 10, 11), bool)
        stack[0, 2:6, 2:6] = True
        stack[-1, 4:9, 4:9] = True
        io.write_labels(tmp_path / f"s{n}.tif", stack)
        back, enc = io.read_labels(tmp_path / f"s{n}.tif", return_encoding=True)
        assert enc == "stack" and back.dtype == bool and np.array_equal(back, stack)


def test_write_labels_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="65535"):
        io.write_labels(tmp_path / "x.png", np.full((2, 2), 70000, np.int32))
    with pytest.raises(ValueError, match=">= 0"):
        io.write_labels(tmp_path / "x.png", np.full((2, 2), -1, np.int32))
    with pytest.raises(ValueError, match="TIFF"):
        io.write_labels(tmp_path / "x.png", np.zeros((2, 3, 3), bool))
    with pytest.raises(ValueError, match="integer"):
        io.write_labels(tmp_path / "x.tif", np.zeros((3, 3), np.float32))


def test_bad_label_files_raise_naming_the_file(tmp_path):
    tifffile.imwrite(tmp_path / "frac.tif", np.array([[0, 1.5]], np.float32))
    with pytest.raises(io.ImageReadError, match=r"frac\.tif.*non-integer"):
        io.read_labels(tmp_path / "frac.tif")
    tifffile.imwrite(tmp_path / "neg.tif", np.array([[0, -3], [1, 2]], np.int16))
    with pytest.raises(io.ImageReadError, match=r"neg\.tif.*negative"):
        io.read_labels(tmp_path / "neg.tif")
    full = np.arange(256, dtype=np.uint8).reshape(16, 16)  # ids 1..255 all used: overflowed
    Image.fromarray(full).save(tmp_path / "sat.png")
    with pytest.raises(io.ImageReadError, match=r"sat\.png.*more instances than its dtype"):
        io.read_labels(tmp_path / "sat.png", "ids")
    with pytest.raises(io.ImageReadError, match="not found"):
        io.read_image(tmp_path / "nope.png")


def test_truncated_and_empty_files_are_caught_by_probe(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(io.ImageReadError, match=r"cut\.png.*truncated PNG"):
        io.probe(tmp_path / "cut.png")
    with pytest.raises(io.ImageReadError, match=r"cut\.png"):
        io.read_image(tmp_path / "cut.png")
    tifffile.imwrite(tmp_path / "ok.tif", arr.astype(np.uint16))
    data = (tmp_path / "ok.tif").read_bytes()
    # tifffile writes the IFD before the pixel data for small images: cut into the pixels
    (tmp_path / "cut.tif").write_bytes(data[: len(data) - 100])
    with pytest.raises(io.ImageReadError, match=r"cut\.tif.*truncated TIFF"):
        io.probe(tmp_path / "cut.tif")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(io.ImageReadError, match="empty"):
        io.probe(tmp_path / "empty.png")


def test_fast_integer_percentiles_equal_numpy():
    # the histogram path for uint8/uint16 against numpy.percentile (the reference) on floats
    rng = np.random.default_rng(1)
    for dtype, top in ((np.uint8, 256), (np.uint16, 4096), (np.uint16, 65536)):
        for shape in ((1, 31, 17), (3, 8, 9), (1, 1, 1)):
            x = rng.integers(0, top, shape).astype(dtype)
            xf = x.astype(np.float32)
            lo, hi = np.percentile(xf, [1, 99.8], axis=(1, 2), keepdims=True)
            ref = (xf - lo) / np.maximum(hi - lo, 1e-6)
            assert np.allclose(io.percentile_normalize(x), ref, atol=1e-6)

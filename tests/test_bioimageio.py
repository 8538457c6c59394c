"""BioImage Model Zoo export: the package passes bioimageio.core's own model test, and its
labels on the test input are ``instembed.segment``'s labels on the same image.

The reference tools: ``bioimageio.core.test_model`` (the zoo's validator: format, test-tensor
reproduction with zero tolerance, inference at other sizes and batch sizes) and instembed's
NumPy normalisation / ``segment`` pipeline, which the TorchScript package must equal.
"""

from __future__ import annotations

import io
import time
import zipfile

import numpy as np
import pytest
import torch
import yaml

import instembed
from conftest import require
from instembed.engine import checkpoint as ck
from instembed.engine.bioimageio import Normalize, export_bioimageio, test_package
from instembed.engine.config import ClusterConfig, Config, config_to_yaml
from instembed.models import build_model

NEVEN, NOVOTNY = "10.48550/arXiv.1906.11109", "10.48550/arXiv.1807.10712"


pytestmark = pytest.mark.usefixtures("one_thread")


def _read(zip_path, name):
    with zipfile.ZipFile(zip_path) as zf:
        return zf.read(name)


def _npy(zip_path, name):
    return np.load(io.BytesIO(_read(zip_path, name)))


def _run_package(zip_path, x):
    m = torch.jit.load(io.BytesIO(_read(zip_path, "weights_torchscript.pt")))
    with torch.no_grad():
        return m(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def _assert_core_test_passes(zip_path):
    require("bioimageio.core", "the bioimage.io model test")
    summary = test_package(zip_path)
    report = {d.name: d.status for d in summary.details}
    assert summary.status == "passed", summary.format()
    reproduce = [n for n in report if n.startswith("Reproduce test outputs")]
    assert reproduce and all(report[n] == "passed" for n in reproduce)
    assert sum(n.startswith("Run torchscript inference") for n in report) == 6  # B 1/2 x 3 sizes
    return summary


# --------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize("mode", ["percentile", "percentile_darkbg", "range", "none"])
def test_compiled_normalisation_equals_numpy_bit_for_bit(mode):
    from instembed.data.normalize import normalize_image

    norm = torch.jit.script(Normalize(mode))
    rng = np.random.default_rng(1)
    dtypes = [np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64]
    darkbg = set()
    for i in range(36):
        c, h, w = int(rng.integers(1, 4)), *(int(v) for v in rng.integers(1, 40, 2))
        dt = dtypes[i % len(dtypes)]
        if np.issubdtype(dt, np.integer):
            x = rng.integers(0, 255 if dt == np.uint8 else 4000, (c, h, w)).astype(dt)
        else:
            x = (rng.random((c, h, w)) * [1.0, 300.0, 1e-3][i % 3]).astype(dt)
            if i % 4 == 0:
                x = np.round(x)  # ties in the sorted values
        if i % 5 == 0:
            x = x.max() - x  # bright background: the darkbg inversion
        want = normalize_image(x, mode)
        got = norm(torch.from_numpy(x)).numpy()
        assert got.dtype == want.dtype == np.float32
        np.testing.assert_array_equal(got, want, err_msg=f"{mode} {dt} {x.shape}")
        if mode == "percentile_darkbg":
            darkbg.add(bool(np.array_equal(want, 1 - normalize_image(x, "percentile"))))
    if mode == "percentile_darkbg":
        assert darkbg == {True, False}  # both branches were exercised


@pytest.mark.parametrize("mode", ["percentile", "percentile_darkbg"])
def test_compiled_min_range_equals_numpy_bit_for_bit(mode):
    # the floor on the percentile range: images whose ranges lie below and above each floor
    from instembed.data.normalize import normalize_image

    rng = np.random.default_rng(7)
    dtypes = [np.uint8, np.uint16, np.int16, np.float32, np.float64]
    floored, inverted = set(), set()
    for floor in (50.0, 150.0, 3000.0):
        norm = torch.jit.script(Normalize(mode, min_range=floor))
        for i in range(15):
            c, h, w = int(rng.integers(1, 3)), *(int(v) for v in rng.integers(2, 30, 2))
            dt = dtypes[i % len(dtypes)]
            top = [40, 140, 4000][i % 3] if dt != np.uint8 else [40, 140][i % 2]
            if np.issubdtype(dt, np.integer):
                x = (rng.integers(0, top, (c, h, w)) + 100).astype(dt)
            else:
                x = (rng.random((c, h, w)) * top + 100).astype(dt)
            if i % 4 == 0:
                x = (x.max() - x + 100).astype(dt)  # bright background
            want = normalize_image(x, mode, floor)
            got = norm(torch.from_numpy(x)).numpy()
            np.testing.assert_array_equal(got, want, err_msg=f"{mode} {floor} {dt} {x.shape}")
            floored.add(not np.array_equal(want, normalize_image(x, mode)))
            plain = normalize_image(x, "percentile", floor)
            inverted.add(bool(np.array_equal(want, 1 - plain)) and not np.array_equal(want, plain))
    assert floored == {True, False}  # the floor acted on some images, not on others
    assert inverted == ({True, False} if mode == "percentile_darkbg" else {False})
    with pytest.raises(ValueError, match="min_range"):
        Normalize(mode, min_range=-1.0)


def test_percentile_interpolation_by_hand():
    # 0..99 as float32: numpy 'linear' puts the 1st percentile at index 0.99 (0.99) and the
    # 99.8th at 98.802 (98.802); so 0 -> -0.99 / 97.812 and 99 -> 98.01 / 97.812
    x = torch.arange(100, dtype=torch.float32).view(1, 10, 10)
    out = torch.jit.script(Normalize("percentile"))(x).double()
    assert float(out[0, 0, 0]) == pytest.approx(-0.99 / 97.812, abs=1e-7)
    assert float(out[0, -1, -1]) == pytest.approx(98.01 / 97.812, abs=1e-7)
    with pytest.raises(Exception, match="expected finite pixel values"):
        torch.jit.script(Normalize("none"))(torch.full((1, 4, 4), float("nan")))


# --------------------------------------------------------------------------- a run folder
def _run_folder(tmp_path, reader_params=None):
    """A run folder with a small random seeded model that finds instances (seed bias)."""
    heads = {"embedding": 2, "sigma": 2, "seed": 1}
    cfg = Config()
    cfg.data.reader_params = dict(reader_params or {})
    cfg.model.name, cfg.loss.name = "unet", "spatial"
    cfg.model.params = {"heads": heads, "depth": 2, "width": 4, "semiconv": True}
    cfg.cluster = ClusterConfig("seeded", {"seed_thresh": 0.6, "min_size": 4})
    torch.manual_seed(3)
    m = build_model("unet", heads=heads, depth=2, width=4, semiconv=True)
    with torch.no_grad():
        m.decoders[0].head.bias[-1] = 2.0
    run = tmp_path / "run"
    run.mkdir(parents=True)
    ck.save_checkpoint(
        run / "best.pt", model_state=m.state_dict(), config_yaml=config_to_yaml(cfg), step=0
    )
    return run


def test_cli_exports_a_run_folder_that_equals_segment(tmp_path, capsys):
    from instembed.cli import main

    run = _run_folder(tmp_path)
    rng = np.random.default_rng(0)
    image = rng.integers(100, 3000, (1, 60, 52)).astype(np.uint16)
    import tifffile

    tifffile.imwrite(tmp_path / "img.tif", image[0])
    out = tmp_path / "run.zip"
    args = ["export", "--format", "bioimageio", "--model", str(run), "--out", str(out)]
    assert main([*args, "--test-image", str(tmp_path / "img.tif"), "--author", "A. Tester"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    rdf = yaml.safe_load(_read(out, "rdf.yaml"))
    assert rdf["authors"] == [{"name": "A. Tester"}] and rdf["name"] == "instembed run"
    assert "min_range" not in rdf["config"]["instembed"]  # the model has no floor
    assert [c["doi"] for c in rdf["cite"]] == [NEVEN, NOVOTNY, "10.1007/978-3-319-24574-4_28"]
    x = _npy(out, "test_input.npy")
    assert x.dtype == np.float32 and x.shape == (1, 1, 60, 52)
    np.testing.assert_array_equal(x[0, 0], image[0])  # raw pixels: normalised inside
    want = instembed.segment(x[0, 0], str(run), device="cpu").labels
    assert want.max() >= 2
    np.testing.assert_array_equal(_npy(out, "test_output.npy")[0, 0], want)
    # a batch of two images: each segmented on its own, as segment does per frame
    pair = np.stack([x[0], x[0, :, ::-1, :].copy()])
    got = _run_package(out, pair)
    assert got.shape == (2, 1, 60, 52) and got.dtype == np.int32
    np.testing.assert_array_equal(got[0, 0], want)
    flipped = instembed.segment(pair[1, 0], str(run), device="cpu").labels
    np.testing.assert_array_equal(got[1, 0], flipped)


def test_the_package_compiles_the_models_min_range(tmp_path):
    from instembed.data.normalize import normalize_image

    run = _run_folder(tmp_path, {"normalize": "percentile", "min_range": 150})
    rng = np.random.default_rng(1)
    raw = (134 + rng.integers(-20, 21, (1, 40, 36))).astype(np.uint16)  # range ~70 < 150
    raw[0, 8:20, 10:24] += 30
    out = export_bioimageio(run, tmp_path / "m.zip", test_image=raw)
    assert yaml.safe_load(_read(out, "rdf.yaml"))["config"]["instembed"]["min_range"] == 150
    assert "floored at 150 raw units" in _read(out, "README.md").decode()
    x = _npy(out, "test_input.npy")
    m = torch.jit.load(io.BytesIO(_read(out, "weights_torchscript.pt")))
    got = m.normalize(torch.from_numpy(x[0])).numpy()
    want = normalize_image(x[0], "percentile", 150)
    np.testing.assert_array_equal(got, want)
    assert float(want.max()) < 0.6 < 1.0 <= float(normalize_image(x[0], "percentile").max())
    labels = instembed.segment(x[0, 0], str(run), device="cpu").labels  # the model's floor too
    np.testing.assert_array_equal(_npy(out, "test_output.npy")[0, 0], labels)


def test_cli_refuses_what_the_package_cannot_hold(tmp_path, capsys):
    from instembed.cli import main

    heads = {"embedding": 4}
    cfg = Config()
    cfg.model.params = {"heads": heads, "depth": 2, "width": 4}
    cfg.cluster = ClusterConfig("threshold", {"delta_v": 0.5})
    m = build_model("unet", heads=heads, depth=2, width=4)
    ckpt = ck.save_checkpoint(
        tmp_path / "m.pt", model_state=m.state_dict(), config_yaml=config_to_yaml(cfg), step=0
    )
    base = ["export", "--model", str(ckpt), "--out"]
    assert main([*base, str(tmp_path / "m.zip"), "--format", "bioimageio"]) == 2
    err = capsys.readouterr().err
    assert "clustering compiles to TorchScript" in err and "'threshold'" in err
    assert main([*base, str(tmp_path / "m.ts"), "--format", "torchscript", "--validate"]) == 2
    assert "--validate: only for --format bioimageio" in capsys.readouterr().err
    assert main([*base, str(tmp_path / "m.pt2"), "--format", "bioimageio"]) == 2
    assert "must name a .zip file" in capsys.readouterr().err
    from instembed.engine.bioimageio_module import bioimageio_module

    with pytest.raises(ValueError, match="MaskRCNN returns instances itself"):
        bioimageio_module(build_model("maskrcnn"), Config(), "percentile", tmp_path)
    run = _run_folder(tmp_path)
    rgb = np.zeros((3, 32, 32), np.uint8)
    with pytest.raises(ValueError, match=r"expected 1 channel\(s\) .* got an image of 3"):
        export_bioimageio(run, tmp_path / "x.zip", test_image=rgb)


# --------------------------------------------------------------------------- shipped models
@pytest.fixture(scope="module")
def bbbc039_package(tmp_path_factory):
    """bbbc039-nuclei exported with a small synthetic test image (touching cells, 16-bit)."""
    from instembed.data.synth import make_samples

    img = make_samples("touching_cells", 1, (96, 96), seed=2)[0].image[0]
    raw = np.round(img * 3000 + 150).astype(np.uint16)
    t0 = time.perf_counter()
    path = export_bioimageio(
        "bbbc039-nuclei", tmp_path_factory.mktemp("bio") / "bbbc039.zip", test_image=raw
    )
    return path, raw, time.perf_counter() - t0


def test_shipped_model_package_contents(bbbc039_package):
    path, raw, seconds = bbbc039_package
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
        import hashlib

        for ref in [rdf["weights"]["torchscript"], rdf["documentation"], *rdf["covers"]]:
            assert hashlib.sha256(zf.read(ref["source"])).hexdigest() == ref["sha256"]
    assert names >= {
        "rdf.yaml",
        "weights_torchscript.pt",
        "test_input.npy",
        "test_output.npy",
        "cover.png",
        "README.md",
        "LICENSE.txt",
    }
    assert rdf["format_version"].startswith("0.5.") and rdf["type"] == "model"
    assert rdf["license"] == "BSD-3-Clause"
    assert {NEVEN, NOVOTNY, "10.1002/cyto.a.23863"} <= {c["doi"] for c in rdf["cite"]}
    assert rdf["inputs"][0]["data"] == {"type": "float32"}
    assert rdf["outputs"][0]["data"]["type"] == "int32"
    # the shipped model's own input normalisation (v3: the saturation-safe percentiles)
    assert rdf["config"]["instembed"]["normalize"] == "percentile_unsaturated"
    readme = _read(path, "README.md").decode()
    import json
    from pathlib import Path

    pretrained = Path(instembed.__file__).parent / "pretrained"
    card = json.loads((pretrained / "bbbc039-nuclei.json").read_text())
    ap = f"{card['val_metrics']['AP_dsb@0.5']:.3f}"
    assert "## Validation" in readme and ap in readme  # AP_dsb@0.5 of the model card
    from PIL import Image

    cover = Image.open(io.BytesIO(_read(path, "cover.png")))
    assert cover.size[0] == 2 * cover.size[1]
    print(f"bbbc039-nuclei package written in {seconds:.1f} s")


def test_shipped_model_package_equals_segment_and_passes_core_test(bbbc039_package):
    path, raw, _ = bbbc039_package
    x, y = _npy(path, "test_input.npy"), _npy(path, "test_output.npy")
    np.testing.assert_array_equal(x[0, 0], raw)
    want = instembed.segment(x[0, 0], "bbbc039-nuclei", device="cpu").labels
    assert want.max() >= 3  # the synthetic cells are found
    np.testing.assert_array_equal(y[0, 0], want)
    t0 = time.perf_counter()
    _assert_core_test_passes(path)
    print(f"bioimageio.core test_model: {time.perf_counter() - t0:.1f} s")


@pytest.mark.slow
def test_core_test_fails_on_a_changed_label(bbbc039_package, tmp_path):
    """The zero tolerance is real: one relabelled pixel in test_output.npy fails the test."""
    import hashlib

    path, _, _ = bbbc039_package
    y = _npy(path, "test_output.npy").copy()
    y.flat[np.flatnonzero(y)[0]] += 1
    buf = io.BytesIO()
    np.save(buf, y)
    rdf = yaml.safe_load(_read(path, "rdf.yaml"))
    rdf["outputs"][0]["test_tensor"]["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "test_output.npy":
                data = buf.getvalue()
            elif name == "rdf.yaml":
                data = yaml.safe_dump(rdf, sort_keys=False).encode()
            dst.writestr(name, data)
    require("bioimageio.core", "the bioimage.io model test")
    summary = test_package(bad)
    assert summary.status == "valid-format"  # bioimageio.core: format fine, a test failed
    failed = [d for d in summary.details if d.status == "failed"]
    assert [d.name for d in failed] == ["Reproduce test outputs from test inputs (torchscript)"]
    assert f"1 of {y.size} elements disagree" in failed[0].errors[0].msg


SHIPPED = {
    "bbbc039-nuclei": ("bbbc039", "cell nuclei/images/*.tif"),
    "dsb2018-nuclei": ("stardist_example", "stardist/data/images/img2d.tif"),
    "bbbc010-worms": ("bbbc010", "BBBC010_v1_images/*_A04_w2_*.tif"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_each_shipped_model_on_a_real_image(name, shared_data, tmp_path):
    import tifffile

    folder, pattern = SHIPPED[name]
    image = sorted(shared_data(folder).glob(pattern))[0]
    path = export_bioimageio(name, tmp_path / f"{name}.zip", test_image=image)
    raw = tifffile.imread(image)
    x, y = _npy(path, "test_input.npy"), _npy(path, "test_output.npy")
    np.testing.assert_array_equal(x[0, 0], raw.astype(np.float32))
    res = instembed.segment(x[0, 0], name, device="cpu")
    assert res.labels.max() > 10
    np.testing.assert_array_equal(y[0, 0], res.labels)
    _assert_core_test_passes(path)

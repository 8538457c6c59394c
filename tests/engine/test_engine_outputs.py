"""``instembed predict`` never destroys anything: inputs, ground truth and earlier outputs are
refused as targets before any work starts; equal stems in different folders never collide."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from instembed.cli import main
from instembed.engine import checkpoint as ck
from instembed.engine.config import ClusterConfig, Config, config_to_yaml
from instembed.engine.outputs import OutputConflict, check_outputs, output_names
from instembed.models import build_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    cfg = Config()
    cfg.model.params = {"heads": {"embedding": 4, "seed": 1}, "depth": 2, "width": 4}
    cfg.cluster = ClusterConfig("threshold", {"delta_v": 0.5})
    torch.manual_seed(0)
    model = build_model("unet", heads={"embedding": 4, "seed": 1}, depth=2, width=4)
    path = tmp_path_factory.mktemp("m") / "m.pt"
    ck.save_checkpoint(
        path, model_state=model.state_dict(), config_yaml=config_to_yaml(cfg), step=0
    )
    return path


def _image(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tifffile.imwrite(path, (rng.random((24, 20)) * 60000).astype(np.uint16))
    return path


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _predict(model, *args) -> int:
    return main(["predict", "--model", str(model), "--no-progress", *map(str, args)])


def test_out_pointing_at_the_inputs_is_refused_and_nothing_changes(tiny_model, tmp_path, capsys):
    raw = tmp_path / "raw"
    _image(raw / "a.tif")
    _image(raw / "b.tif", 1)
    before = _digest(raw)
    # the label images would replace the 16-bit inputs a.tif / b.tif: never allowed
    for extra in ([], ["--overwrite"]):
        assert _predict(tiny_model, raw, "--out", raw, *extra) == 2
        assert "would replace the input image" in capsys.readouterr().err
        assert _digest(raw) == before


def test_out_holding_inputs_needs_overwrite_and_then_keeps_them(tiny_model, tmp_path, capsys):
    from PIL import Image

    raw = tmp_path / "raw"
    raw.mkdir()
    Image.fromarray((np.arange(24 * 20) % 251).astype(np.uint8).reshape(24, 20)).save(raw / "c.png")
    before = _digest(raw)
    assert _predict(tiny_model, raw, "--out", raw) == 2
    err = capsys.readouterr().err
    assert "holds input images" in err and "--overwrite" in err
    assert _digest(raw) == before
    assert _predict(tiny_model, raw, "--out", raw, "--overwrite", "--no-overlay") == 0
    after = _digest(raw)
    assert after["c.png"] == before["c.png"] and {"c.tif", "c.json"} <= set(after)


def test_existing_files_such_as_ground_truth_are_refused_without_overwrite(
    tiny_model, tmp_path, capsys
):
    img = _image(tmp_path / "raw" / "a.tif")
    gt = tmp_path / "labels"
    gt.mkdir()
    tifffile.imwrite(gt / "a.tif", np.arange(24 * 20, dtype=np.uint16).reshape(24, 20))
    before = _digest(gt)
    assert _predict(tiny_model, img, "--out", gt) == 2
    assert "exist already" in capsys.readouterr().err and _digest(gt) == before
    # a second run into the same output folder is refused too, then allowed with --overwrite
    out = tmp_path / "pred"
    assert _predict(tiny_model, img, "--out", out) == 0
    first = _digest(out)
    assert _predict(tiny_model, img, "--out", out) == 2
    assert "a.tif" in capsys.readouterr().err
    assert _predict(tiny_model, img, "--out", out, "--overwrite") == 0
    assert _digest(out) == first  # the same model on the same image: the same files


def test_equal_stems_in_different_folders_keep_their_folders(tiny_model, tmp_path):
    a = _image(tmp_path / "plate1" / "A01.tif", 0)
    b = _image(tmp_path / "plate2" / "A01.tif", 1)
    out = tmp_path / "pred"
    assert _predict(tiny_model, tmp_path / "plate1", tmp_path / "plate2", "--out", out) == 0
    assert (out / "plate1" / "A01.tif").is_file() and (out / "plate2" / "A01.tif").is_file()
    assert not (out / "A01.tif").exists()
    # one folder: names relative to it, as before
    assert output_names([a]) == ["A01"] and output_names([a, b]) == ["plate1/A01", "plate2/A01"]


def test_two_inputs_that_would_share_an_output_name_are_an_error(tmp_path):
    a, b = tmp_path / "x" / "a.png", tmp_path / "x" / "a.tif"
    with pytest.raises(ValueError, match=r"a\.png, .*a\.tif would all be written as 'a'"):
        output_names([a, b])


def test_check_outputs_hand_cases(tmp_path):
    inp = tmp_path / "in" / "x.tif"
    inp.parent.mkdir()
    inp.write_bytes(b"raw")
    out = tmp_path / "out"
    check_outputs([inp], [out / "x.tif"], out)  # nothing there: fine
    with pytest.raises(OutputConflict, match="replace the input"):
        check_outputs([inp], [inp], inp.parent, overwrite=True)
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "x.json").write_text("{}")
    with pytest.raises(OutputConflict, match=r"1 output file\(s\) exist"):
        check_outputs([inp], [out / "sub" / "x.json"], out)
    check_outputs([inp], [out / "sub" / "x.json"], out, overwrite=True)

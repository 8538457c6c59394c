"""``instembed synth`` writes every kind in the documented layout; ``data info`` reads it back."""

import json
import subprocess
import sys

import numpy as np
import pytest

from instembed.cli import main
from instembed.data.readers import open_dataset
from instembed.data.synth import make_samples


@pytest.mark.parametrize("kind", ["dot_grid", "touching_cells", "leaf_rosettes", "worms", "street"])
def test_synth_writes_a_folder_dataset_that_reads_back_exactly(kind, tmp_path, capsys):
    out = tmp_path / kind
    assert (
        main(["synth", kind, "--n", "3", "--size", "48", "64", "--seed", "7", "--out", str(out)])
        == 0
    )
    assert f"wrote 3 {kind} images" in capsys.readouterr().out
    ref = make_samples(kind, 3, size=(48, 64), seed=7)
    r = open_dataset(out)
    assert r.format == "folder" and len(r) == 3
    for s, t in zip(r, ref):
        assert s.image.shape == t.image.shape
        if t.is_stack:  # worms: the mask-stack TIFF layout keeps every overlapping pixel
            assert s.is_stack and np.array_equal(s.instances, t.instances)
        else:  # ids may be renumbered by the decoder; the partition must be identical
            assert s.num_instances == t.num_instances
            pairs = set(zip(s.instances.ravel().tolist(), t.instances.ravel().tolist()))
            assert len(pairs) == t.num_instances + 1  # a bijection between the id sets
        assert np.array_equal(s.semantic, t.semantic)
        assert np.array_equal(s.classes, t.classes)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == kind and meta["size"] == [48, 64] and meta["seed"] == 7


def test_data_info_on_a_synth_folder(tmp_path, capsys):
    out = tmp_path / "w"
    main(
        [
            "synth",
            "worms",
            "--n",
            "2",
            "--size",
            "64",
            "64",
            "--param",
            "n_worms=4",
            "--out",
            str(out),
        ]
    )
    capsys.readouterr()
    assert main(["data", "info", str(out), "--json", str(tmp_path / "i.json")]) == 0
    text = capsys.readouterr().out
    info = json.loads((tmp_path / "i.json").read_text())
    ref = make_samples("worms", 2, size=(64, 64), seed=0, n_worms=4)
    assert info["instances"] == 8 and "instances        8" in text
    assert info["overlap_pixels"] == sum(int(s.overlap_mask().sum()) for s in ref) > 0
    assert info["label_encodings"] == {"stack": 2} and info["image_sizes"] == {"64x64": 2}


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["synth", "blobs", "--out", str(tmp_path / "x")]) == 2
    assert "unknown synthetic kind 'blobs'" in capsys.readouterr().err
    assert main(["synth", "dot_grid", "--param", "colour=3", "--out", str(tmp_path / "x")]) == 2
    assert "bad --param" in capsys.readouterr().err
    assert main(["data", "info", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["data"]) == 2


def test_data_package_does_not_import_torch():
    code = (
        "import sys, instembed.data, instembed.data.readers, instembed.data.synth, "
        "instembed.data.transforms, instembed.commands.data, instembed.commands.synth; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

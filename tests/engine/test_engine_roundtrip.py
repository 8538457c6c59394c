"""The documented loop on real data: ``instembed predict`` with each shipped model, then
``instembed evaluate`` on its own output folder (and ``instembed tune``).

Each test segments one or two real images and checks that ``evaluate`` exits 0 with the numbers
of :func:`instembed.engine.evaluation.score` on the reader's samples and the same prediction
files read back independently here.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tifffile

from instembed.cli import main
from instembed.data.readers import open_dataset
from instembed.engine.evaluation import score
from instembed.structures import Instances

BBBC039_STEMS = (
    "IXMtest_A02_s1_w1051DAA7C-7042-435F-99F0-1E847D9B42CB",
    "IXMtest_A06_s6_w1B9577918-4973-4A87-BA73-A168AA755527",
)
BBBC010_WELL = "A04"


def _link(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)


@pytest.fixture
def bbbc039_two(shared_data, tmp_path):
    """A BBBC039 folder (images/ + masks/) with two of the real images."""
    base = shared_data("bbbc039") / "cell nuclei"
    root = tmp_path / "bbbc039"
    for stem in BBBC039_STEMS:
        _link(base / "images" / f"{stem}.tif", root / "images" / f"{stem}.tif")
        _link(base / "masks" / f"{stem}.png", root / "masks" / f"{stem}.png")
    return root


def read_prediction(path) -> Instances:
    """A label-image or mask-stack TIFF written by predict, with its sidecar's scores."""
    raw = tifffile.imread(path)
    recs = {r["id"]: r for r in json.loads(path.with_suffix(".json").read_text())["instances"]}
    assert all("class" not in r for r in recs.values())  # class-agnostic models
    if raw.ndim == 3:
        ids = np.arange(1, raw.shape[0] + 1)
        masks = raw > 0
        scores = np.array([recs.get(int(i), {}).get("score", 1.0) for i in ids], np.float32)
        return Instances(masks=masks, scores=scores)
    ids = np.unique(raw)
    ids = ids[ids > 0]
    labels = np.zeros(raw.shape, np.int32)
    labels[raw > 0] = np.searchsorted(ids, raw[raw > 0]) + 1
    scores = np.array([recs[int(i)]["score"] for i in ids], np.float32)
    return Instances(labels=labels, scores=scores)


def roundtrip(tmp_path, model, inputs, gt, gt_format, expected_names, extra=()):
    pred = tmp_path / "pred"
    args = ["predict", "--model", model, *map(str, inputs), "--out", str(pred), "--no-progress"]
    rc = main([*args, *extra])
    assert rc == 0
    assert sorted(p.name for p in pred.glob("*_overlay.png"))  # the files that broke evaluate
    out = tmp_path / "metrics.json"
    args = ["evaluate", "--gt", str(gt), "--gt-format", gt_format, "--pred", str(pred)]
    assert main(args + ["--json", str(out)]) == 0
    res = json.loads(out.read_text())

    reader = open_dataset(gt, format=gt_format)
    samples = list(reader)
    names = [s.meta["name"] for s in samples]
    assert names == expected_names
    assert [r["image"] for r in res["per_image"]] == names
    preds = [read_prediction(pred / res["matched"][n]) for n in names]
    want = score(samples, preds)
    assert want and set(want) <= set(res)
    for k, v in want.items():
        assert res[k] == pytest.approx(v, abs=1e-9), k
    return res


def test_bbbc039_model_roundtrip(bbbc039_two, tmp_path):
    res = roundtrip(
        tmp_path,
        "bbbc039-nuclei",
        [bbbc039_two / "images"],
        bbbc039_two,
        "bbbc039",
        list(BBBC039_STEMS),
    )
    assert res["AP_dsb@0.5"] > 0.5


def test_dsb2018_model_roundtrip_on_the_stardist_example(shared_data, tmp_path):
    folder = shared_data("stardist_example") / "stardist" / "data" / "images"
    res = roundtrip(
        tmp_path, "dsb2018-nuclei", [folder / "img2d.tif"], folder, "stardist", ["img2d"]
    )
    assert res["AP_dsb@0.5"] > 0.3


def test_bbbc010_worm_model_roundtrip_with_mask_stacks(shared_data, tmp_path):
    src = shared_data("bbbc010")
    root = tmp_path / "bbbc010"
    (image,) = (src / "BBBC010_v1_images").glob(f"*_{BBBC010_WELL}_w2_*.tif")
    _link(image, root / "BBBC010_v1_images" / image.name)
    for m in (src / "BBBC010_v1_foreground_eachworm").glob(f"{BBBC010_WELL}_*_ground_truth.png"):
        _link(m, root / "BBBC010_v1_foreground_eachworm" / m.name)
    # predictions are named after the image file, the reader's items after the well
    res = roundtrip(
        tmp_path,
        "bbbc010-worms",
        [root / "BBBC010_v1_images"],
        root,
        "bbbc010",
        [BBBC010_WELL],
        extra=["--cluster", "overlap_thresh=0.5"],  # overlapping worms (not the card's choice)
    )
    assert res["matched"][BBBC010_WELL] == f"{image.stem}.tif"
    assert tifffile.imread(tmp_path / "pred" / f"{image.stem}.tif").ndim == 3  # a mask stack
    assert res["AP_dsb@0.5"] > 0.3


def test_dsb2018_names_match_the_image_id_folders(shared_data, tmp_path):
    # two real DSB2018 images, the ground truth written as predictions under the names
    # predict gives two <id>/images folders: <id>/images/<id>
    from instembed.engine.outputs import output_names
    from instembed.engine.predict import expand_inputs

    src = shared_data("dsb2018") / "stage1_train"
    ids = sorted(d.name for d in src.iterdir() if d.is_dir())[:2]
    root = tmp_path / "dsb"
    for i in ids:
        _link(src / i, root / "stage1_train" / i)
    files, _ = expand_inputs([str(root / "stage1_train" / i / "images") for i in ids])
    pred = tmp_path / "pred"
    reader = open_dataset(root, format="dsb2018")
    for name, sample in zip(output_names(files), reader):
        (pred / name).parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(pred / f"{name}.tif", sample.instances.astype(np.uint16))
    out = tmp_path / "m.json"
    args = ["evaluate", "--gt", str(root), "--gt-format", "dsb2018", "--pred", str(pred)]
    assert main(args + ["--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [r["image"] for r in res["per_image"]] == ids
    assert res["AP_dsb@0.5"] == 1.0


def test_tune_runs_on_two_bbbc039_images(bbbc039_two, tmp_path, capsys):
    out = tmp_path / "tune.json"
    args = ["tune", "--model", "bbbc039-nuclei", "--data", str(bbbc039_two)]
    assert main(args + ["--grid", "seed_thresh=0.7,0.8", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert len(res["rows"]) == 2 and res["chosen"]["seed_thresh"] in (0.7, 0.8)

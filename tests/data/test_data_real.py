"""Readers and ``instembed data info`` on the shared real data sets, checked against the counts
in their SOURCE.md and against independent counts computed here with scipy / Pillow."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from instembed.cli import main
from instembed.data import io
from instembed.data.readers import detect_format, open_dataset

pytestmark = pytest.mark.data


def _info(path: Path, tmp_path: Path, capsys) -> dict:
    out = tmp_path / "info.json"
    assert main(["data", "info", str(path), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    summary = json.loads(out.read_text())
    assert f"instances        {summary['instances']}" in text  # printed = written
    return summary


def _count_per_value(mask_png: Path) -> int:
    """Independent BBBC039 count: 4-connected components of each R value, summed (scipy)."""
    r = np.asarray(Image.open(mask_png))[..., 0]
    return sum(ndi.label(r == v)[1] for v in np.unique(r) if v > 0)


def test_bbbc039_counts_match_components_per_value(shared_data, tmp_path, capsys):
    root = shared_data("bbbc039")
    assert detect_format(root)[0] == "bbbc039"
    summary = _info(root, tmp_path, capsys)
    masks = sorted((root / "cell nuclei" / "masks").glob("*.png"))
    assert summary["images"] == len(masks) == 150
    expected = {m.stem: _count_per_value(m) for m in masks}
    got = {row["name"]: row["instances"] for row in summary["per_image"]}
    assert got == expected
    assert summary["instances"] == sum(expected.values())
    # SOURCE.md: 0-231 nuclei per image; the 3 empty masks (F13_s7, L01_s2, L10_s6) are staged
    empty = sorted(name for name, n in got.items() if n == 0)
    assert [n.split("_")[1] + "_" + n.split("_")[2] for n in empty] == [
        "F13_s7",
        "L01_s2",
        "L10_s6",
    ]
    assert summary["instances_per_image"]["max"] <= 231
    assert summary["image_sizes"] == {"520x696": 150} and summary["image_dtypes"] == {"uint16": 150}
    # not foreground components: those merge touching nuclei (19,582 vs 23,617 on all 200)
    fg = sum(ndi.label(np.asarray(Image.open(m))[..., 0] > 0)[1] for m in masks[:10])
    assert sum(expected[m.stem] for m in masks[:10]) > fg


def test_bbbc010_counts_and_overlaps(shared_data, tmp_path, capsys):
    root = shared_data("bbbc010")
    summary = _info(root, tmp_path, capsys)
    worm_files = sorted((root / "BBBC010_v1_foreground_eachworm").glob("*_ground_truth.png"))
    wells = Counter(p.name[:3] for p in worm_files)
    # SOURCE.md: 11-15 worms per image; staged: 50 images with 701 worm masks in total
    assert summary["images"] == len(wells) == 50
    assert summary["instances"] == len(worm_files) == 701
    assert (
        summary["instances_per_image"]["min"] >= 11 and summary["instances_per_image"]["max"] <= 15
    )
    # overlap pixels recounted independently (pixels in more than one worm mask)
    total = 0
    for well in sorted(wells):
        cover = sum(
            (np.asarray(Image.open(p)) > 0).astype(np.int32)
            for p in worm_files
            if p.name.startswith(well + "_")
        )
        total += int((cover > 1).sum())
    assert summary["overlap_pixels"] == total > 0
    # the union of the per-worm masks agrees with the *_binary.png union on >= 99.2 % of pixels
    r = open_dataset(root)
    s = r[0]
    binary = np.asarray(Image.open(root / "BBBC010_v1_foreground" / f"{s.meta['name']}_binary.png"))
    agree = (s.instances.any(0) == (binary[..., 0] > 0)).mean()
    assert agree >= 0.992


def test_dsb2018_index_counts_match_source_table(shared_data):
    root = shared_data("dsb2018")
    r = open_dataset(root)  # header validation of all 173 images and 8,584 masks
    assert r.format == "dsb2018" and len(r) == 173
    # SOURCE.md table: masks per image size
    by_size = Counter()
    for item in r.items:
        h, w = io.probe(item.image).shape
        by_size[f"{h}x{w}"] += len(item.labels)
    assert sum(by_size.values()) == 8584
    assert by_size["256x256"] == 1577 and by_size["1024x1024"] == 1340
    assert by_size["603x1272"] == 1377 and by_size["1040x1388"] == 14
    assert by_size["256x320"] == 1242 + 107
    # decoded: one instance per mask file, image RGBA -> 3 channels
    for i in (0, 50, 172):
        s = r[i]
        assert s.num_instances == len(r.items[i].labels)
        assert s.image.shape[0] == 3 and s.image.dtype == np.float32


@pytest.mark.slow
def test_dsb2018_data_info_full(shared_data, tmp_path, capsys):
    summary = _info(shared_data("dsb2018"), tmp_path, capsys)
    # SOURCE.md: 8,584 masks; they overlap on 1 pixel in 1 image only
    assert summary["instances"] == 8584 and summary["overlap_pixels"] == 1
    assert summary["image_sizes"]["256x256"] == 60 and summary["image_sizes"]["1040x1388"] == 1


def test_stardist_example_label_image(shared_data):
    root = shared_data("stardist_example") / "stardist" / "data" / "images"
    img = io.read_image(root / "img2d.tif")
    assert img.shape == (512, 512) and img.dtype == np.uint16 and img.max() == 235
    lab, enc = io.read_labels(root / "mask2d.tif", return_encoding=True)
    # SOURCE.md: 125 instances, ids up to 183, not consecutive
    assert enc == "ids" and lab.max() == 183
    assert len(np.unique(lab)) - 1 == 125


def test_dsb2018_dark_background_rule_follows_the_ground_truth(shared_data):
    """``percentile_darkbg`` inverts exactly the images whose nuclei are darker than their
    background (bright-field, H&E) on the first 60 DSB2018 images, and some of them are."""
    reader = open_dataset(shared_data("dsb2018"), format="dsb2018", normalize="percentile")
    n_inverted = 0
    for i in range(min(60, len(reader))):
        s = reader[i]
        gray = s.image.mean(0)
        fg = s.instances > 0 if s.instances.ndim == 2 else s.instances.any(0)
        nuclei_dark = gray[fg].mean() < gray[~fg].mean()
        inverted = io.dark_background(s.image) is not s.image
        assert inverted == nuclei_dark, (s.path, gray[fg].mean(), gray[~fg].mean())
        n_inverted += inverted
    assert 5 <= n_inverted <= 55

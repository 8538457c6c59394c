"""Readers on small files generated in each layout; auto-detection; bad input on open."""

import json
import logging
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import require
from instembed.data import io
from instembed.data.readers import (
    detect_format,
    open_dataset,
    polygons_to_mask,
    rle_decode,
)


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _tif(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, arr)


def _boxes(h, w, boxes):
    """Label image with id k+1 in box k = (y0, y1, x0, x1)."""
    lab = np.zeros((h, w), np.uint16)
    for k, (y0, y1, x0, x1) in enumerate(boxes, start=1):
        lab[y0:y1, x0:x1] = k
    return lab


# ------------------------------------------------------------------------------- folder


def make_folder(root, n=3):
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 4096, (20, 24), dtype=np.uint16)
        _tif(root / "images" / f"im{i}.tif", img)
        _png(
            root / "labels" / f"im{i}.png",
            _boxes(20, 24, [(1, 5, 1, 5)] * 1 + [(8, 12, 8, 12)] * i),
        )
    return root


def test_folder_reader_layouts(tmp_path):
    root = make_folder(tmp_path / "set")
    # a third label form: a folder of binary masks for im3, one per instance (may overlap)
    _png(root / "images" / "im3.png", np.zeros((20, 24, 3), np.uint8))
    m = np.zeros((20, 24), np.uint8)
    m[2:9, 2:9] = 255
    _png(root / "labels" / "im3" / "a.png", m)
    _png(root / "labels" / "im3" / "b.png", np.roll(m, 4, axis=1))
    # and a float32 image with a mask-stack TIFF
    _tif(root / "images" / "im4.tif", np.ones((20, 24), np.float32))
    stack = np.zeros((2, 20, 24), bool)
    stack[0, :5], stack[1, 3:9] = True, True
    io.write_labels(root / "labels" / "im4_mask.tif", stack)
    assert detect_format(root)[0] == "folder"
    r = open_dataset(root)
    assert r.format == "folder" and len(r) == 5
    # im0: box ids {1}; im1: box 1 + box 2; im2: box 1 + box 2 drawn twice (same place) -> 2 ids
    assert [r[i].num_instances for i in range(3)] == [1, 2, 2]
    assert r[3].is_stack and r[3].num_instances == 2 and r[3].overlap_mask().sum() == 7 * 3
    assert r[3].image.shape == (3, 20, 24) and r[0].image.shape == (1, 20, 24)
    assert r[4].is_stack and r[4].meta["label_encoding"] == "stack"
    assert r[0].meta["image_dtype"] == "uint16" and r[4].meta["image_dtype"] == "float32"


def test_folder_reader_bad_input(tmp_path, caplog):
    root = make_folder(tmp_path / "set")
    _tif(root / "images" / "orphan.tif", np.zeros((20, 24), np.uint16))  # image without labels
    _png(root / "labels" / "lonely.png", np.zeros((20, 24), np.uint8))  # labels without image
    _tif(root / "images" / "big.tif", np.zeros((30, 24), np.uint16))  # size mismatch
    _png(root / "labels" / "big.png", np.zeros((20, 24), np.uint8))
    with pytest.raises(ValueError) as e:
        open_dataset(root, format="folder")
    msg = str(e.value)
    assert "orphan.tif" in msg and "no label file" in msg
    assert "lonely.png" in msg and "no image" in msg
    assert "big.png" in msg and "(20, 24)" in msg and "(30, 24)" in msg
    with caplog.at_level(logging.WARNING):
        r = open_dataset(root, format="folder", skip_bad=True)
    assert len(r) == 3 and len(r.bad) == 3
    assert "skipping 3 bad item(s)" in caplog.text
    # truncated file, found on open (header check)
    data = (root / "labels" / "im1.png").read_bytes()
    (root / "labels" / "im1.png").write_bytes(data[:-20])
    with pytest.raises(ValueError, match=r"im1\.png.*truncated"):
        open_dataset(root, format="folder", skip_bad=False, validate="header")
    # negative ids are found when every file is decoded on open
    root2 = make_folder(tmp_path / "neg", n=2)
    _tif(root2 / "labels" / "im1.tif", -np.ones((20, 24), np.int16))
    (root2 / "labels" / "im1.png").unlink()
    with pytest.raises(ValueError, match=r"im1.*negative"):
        open_dataset(root2, validate="full")
    # empty folders
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "labels").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        open_dataset(tmp_path / "empty", format="folder")
    with pytest.raises(ValueError, match="cannot tell the data set layout"):
        open_dataset(tmp_path / "empty" / "images")
    with pytest.raises(FileNotFoundError):
        open_dataset(tmp_path / "missing")


# ------------------------------------------------------------------------------ bbbc039


def test_bbbc039_layout_counts_components_per_value(tmp_path):
    base = tmp_path / "bbbc039" / "cell nuclei"
    r = np.zeros((16, 20), np.uint8)
    r[2:6, 2:6], r[2:6, 6:10], r[10:14, 12:16] = 1, 2, 1  # A|B touching, C apart (value 1)
    rgba = np.zeros((16, 20, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = r, 255
    _tif(base / "images" / "x.tif", np.zeros((16, 20), np.uint16))
    _png(base / "masks" / "x.png", rgba)
    fmt, why = detect_format(tmp_path / "bbbc039")
    assert fmt == "bbbc039", why
    s = open_dataset(tmp_path / "bbbc039")[0]
    assert s.num_instances == 3  # foreground components would give 2


# ------------------------------------------------------------------------------ bbbc010


def test_bbbc010_layout_gives_overlapping_stack(tmp_path):
    root = tmp_path / "b10"
    for well in ("A01", "B12"):
        _tif(
            root / "BBBC010_v1_images" / f"1649_x_20070424_{well}_w2_ABCD.tif",
            np.zeros((12, 14), np.uint16),
        )
        _tif(
            root / "BBBC010_v1_images" / f"1649_x_20070424_{well}_w1_ABCD.tif",
            np.ones((12, 14), np.uint16),
        )
    m1 = np.zeros((12, 14), np.uint8)
    m1[5:7, :] = 255  # horizontal worm, 2 x 14 = 28 px
    m2 = np.zeros((12, 14), np.uint8)
    m2[:, 3:5] = 255  # vertical worm, 12 x 2 = 24 px, crossing in 2 x 2 = 4 px
    for well in ("A01", "B12"):
        _png(root / "BBBC010_v1_foreground_eachworm" / f"{well}_01_ground_truth.png", m1)
        _png(root / "BBBC010_v1_foreground_eachworm" / f"{well}_02_ground_truth.png", m2)
    assert detect_format(root)[0] == "bbbc010"
    r = open_dataset(root)
    assert len(r) == 2 and r.format == "bbbc010"
    s = r[0]
    assert s.is_stack and s.instances.shape == (2, 12, 14)
    assert s.instances.sum((1, 2)).tolist() == [28, 24] and s.overlap_mask().sum() == 4
    # masks of a well without an image are a problem on open
    _png(root / "BBBC010_v1_foreground_eachworm" / "C03_01_ground_truth.png", m1)
    with pytest.raises(ValueError, match="well C03 have no w2 image"):
        open_dataset(root)
    assert len(open_dataset(root, skip_bad=True)) == 2


# ------------------------------------------------------------------------------ dsb2018


def test_dsb2018_layout(tmp_path):
    root = tmp_path / "dsb" / "stage1_train"
    for name, boxes in (("aa", [(0, 4, 0, 4), (2, 6, 2, 6)]), ("bb", [(1, 3, 1, 3)])):
        _png(root / name / "images" / f"{name}.png", np.full((8, 9, 4), 255, np.uint8))
        for k, b in enumerate(boxes):
            _png(
                root / name / "masks" / f"m{k}.png", (_boxes(8, 9, [b]) > 0).astype(np.uint8) * 255
            )
    assert detect_format(tmp_path / "dsb")[0] == "dsb2018"
    r = open_dataset(tmp_path / "dsb")
    s = r[0]
    assert s.image.shape == (3, 8, 9) and s.num_instances == 2
    # the two 4x4 boxes overlap in rows/cols 2..3: 2 x 2 = 4 px, given to the later mask, ignored
    assert s.ignore.sum() == 4 and (s.instances[2:4, 2:4] == 2).all()
    assert r[1].num_instances == 1 and r[1].ignore is None
    assert open_dataset(tmp_path / "dsb", as_stack=True)[0].is_stack
    (root / "cc" / "images").mkdir(parents=True)
    _png(root / "cc" / "images" / "cc.png", np.zeros((8, 9), np.uint8))
    with pytest.raises(ValueError, match=r"cc\.png.*has no masks"):
        open_dataset(tmp_path / "dsb")


# -------------------------------------------------------------------------------- cvppp


def test_cvppp_layout_palette_and_rgb_labels(tmp_path):
    root = tmp_path / "cvppp" / "A1"
    lab = _boxes(10, 12, [(0, 3, 0, 3), (4, 8, 4, 8), (8, 10, 0, 12)]).astype(np.uint8)
    pal = Image.fromarray(lab, mode="L").convert("P")
    pal.putpalette([0, 0, 0] + [v for i in range(1, 256) for v in (i, 80, 255 - i)])
    root.mkdir(parents=True)
    pal.save(root / "plant001_label.png")
    _png(root / "plant001_rgb.png", np.zeros((10, 12, 4), np.uint8))
    _png(root / "plant001_fg.png", ((lab > 0) * 255).astype(np.uint8))
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    _png(root / "plant002_label.png", colours[lab])
    _png(root / "plant002_rgb.png", np.zeros((10, 12, 3), np.uint8))
    assert detect_format(tmp_path / "cvppp")[0] == "cvppp"
    r = open_dataset(tmp_path / "cvppp")
    assert len(r) == 2 and r[0].image.shape == (3, 10, 12)
    assert np.array_equal(r[0].instances, lab) and r[0].meta["label_encoding"] == "ids"
    assert r[1].num_instances == 3 and r[1].meta["label_encoding"] == "rgb"
    assert np.array_equal(r[0].semantic, (lab > 0).astype(int))


# --------------------------------------------------------------------------------- coco


def _coco_fixture(tmp_path):
    mask_util = require("pycocotools.mask")
    h, w = 20, 30
    _png(tmp_path / "coco" / "images" / "a.png", np.zeros((h, w, 3), np.uint8))
    _png(tmp_path / "coco" / "images" / "b.png", np.zeros((h, w, 3), np.uint8))
    poly = [[2.0, 2.0, 12.5, 3.0, 10.0, 14.2, 3.0, 11.0]]
    m = np.zeros((h, w), np.uint8, order="F")
    m[5:15, 15:27] = 1
    compressed = mask_util.encode(np.asfortranarray(m))
    compressed["counts"] = compressed["counts"].decode()
    # uncompressed RLE of a second box, column-major runs
    m2 = np.zeros((h, w), np.uint8)
    m2[14:18, 0:8] = 1
    flat = m2.T.ravel()
    change = np.flatnonzero(np.diff(np.r_[0, flat, 1 - flat[-1]]))
    counts = np.diff(np.r_[0, change]).tolist()
    m3 = np.zeros((h, w), np.uint8)
    m3[0:3, 27:30] = 1  # a 3 x 3 crowd region in the top-right corner
    crowd = mask_util.encode(np.asfortranarray(m3))
    crowd["counts"] = crowd["counts"].decode()
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "height": h, "width": w},
            {"id": 2, "file_name": "b.png", "height": h, "width": w},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "segmentation": poly, "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 5, "segmentation": compressed, "iscrowd": 0},
            {
                "id": 12,
                "image_id": 1,
                "category_id": 3,
                "segmentation": {"size": [h, w], "counts": counts},
                "iscrowd": 0,
            },
            {"id": 13, "image_id": 1, "category_id": 3, "segmentation": crowd, "iscrowd": 1},
        ],
        "categories": [{"id": 3, "name": "cell"}, {"id": 5, "name": "blob"}],
    }
    (tmp_path / "coco" / "annotations").mkdir()
    (tmp_path / "coco" / "annotations" / "instances_x.json").write_text(json.dumps(data))
    return mask_util, data, (h, w), (m, m2)


def test_coco_reader_matches_pycocotools(tmp_path):
    mask_util, data, (h, w), (m, m2) = _coco_fixture(tmp_path)
    assert detect_format(tmp_path / "coco")[0] == "coco"
    r = open_dataset(tmp_path / "coco")
    assert len(r) == 2 and r[1].num_instances == 0
    s = r[0]
    assert s.classes.tolist() == [3, 5, 3]
    lab = s.label_image()
    for k, ann in enumerate(data["annotations"][:3], start=1):
        seg = ann["segmentation"]
        rle = (
            mask_util.frPyObjects(seg, h, w)
            if isinstance(seg, list) or isinstance(seg["counts"], list)
            else seg
        )
        ref = mask_util.decode(mask_util.merge(rle) if isinstance(rle, list) else rle).astype(bool)
        assert np.array_equal(lab == k, ref), k  # the reference tool's masks, pixel for pixel
    assert np.array_equal(s.ignore, mask_util.decode(data["annotations"][3]["segmentation"]) > 0)
    assert (s.semantic[lab == 2] == 5).all()


def test_own_rle_decoder_and_polygon_fallback_against_pycocotools(monkeypatch):
    mask_util = require("pycocotools.mask")
    rng = np.random.default_rng(0)
    for _ in range(5):
        m = (rng.random((23, 31)) < 0.3).astype(np.uint8)
        rle = mask_util.encode(np.asfortranarray(m))
        assert np.array_equal(rle_decode(rle), m > 0)  # compressed string, exact
    poly = [[3.2, 1.0, 25.0, 4.5, 20.0, 19.7, 1.5, 15.0]]
    ref = mask_util.decode(mask_util.merge(mask_util.frPyObjects(poly, 23, 31))) > 0
    monkeypatch.setitem(sys.modules, "pycocotools", None)  # force the fallback rasteriser
    own = polygons_to_mask(poly, 23, 31)
    iou = (own & ref).sum() / (own | ref).sum()
    assert iou > 0.95
    # differences only on the boundary: every differing pixel touches the reference's edge
    from scipy import ndimage as ndi

    edge = ref ^ ndi.binary_erosion(ref)
    near = ndi.binary_dilation(edge, iterations=1)
    assert (near[own ^ ref]).all()


def test_coco_panoptic_reader(tmp_path):
    h, w = 10, 12
    root = tmp_path / "pan"
    _png(root / "images" / "p.png", np.zeros((h, w, 3), np.uint8))
    seg = np.zeros((h, w), np.int64)
    seg[:, :] = 300  # stuff "sky" id 300 = (44, 1, 0)
    seg[2:5, 2:5] = 5  # thing "car" id 5
    seg[6:9, 6:10] = 70000  # crowd of cars, id 70000 = (112, 17, 1)
    seg[0, :] = 0  # void
    rgb = np.stack([seg % 256, seg // 256 % 256, seg // 65536], -1).astype(np.uint8)
    _png(root / "annotations" / "panoptic_val" / "p.png", rgb)
    data = {
        "images": [{"id": 1, "file_name": "p.png", "height": h, "width": w}],
        "annotations": [
            {
                "image_id": 1,
                "file_name": "p.png",
                "segments_info": [
                    {"id": 300, "category_id": 9, "iscrowd": 0},
                    {"id": 5, "category_id": 1, "iscrowd": 0},
                    {"id": 70000, "category_id": 1, "iscrowd": 1},
                ],
            }
        ],
        "categories": [
            {"id": 1, "name": "car", "isthing": 1},
            {"id": 9, "name": "sky", "isthing": 0},
        ],
    }
    (root / "annotations" / "panoptic_val.json").write_text(json.dumps(data))
    assert detect_format(root)[0] == "coco_panoptic"
    s = open_dataset(root)[0]
    assert s.num_instances == 1 and s.classes.tolist() == [1]
    assert (s.instances == 1).sum() == 9 and s.ignore.sum() == 12
    assert (s.semantic[0] == 255).all() and (s.semantic[s.instances == 1] == 1).all()
    assert (s.semantic[1:, 0] == 9).all()


# --------------------------------------------------------------------------- cityscapes


def test_cityscapes_reader(tmp_path):
    h, w = 8, 10
    root = tmp_path / "cs"
    stem = "aachen_000000_000019"
    _png(
        root / "leftImg8bit" / "train" / "aachen" / f"{stem}_leftImg8bit.png",
        np.zeros((h, w, 3), np.uint8),
    )
    label_ids = np.full((h, w), 7, np.uint8)  # road
    label_ids[0, :] = 0  # unlabeled -> void
    label_ids[2:4, 2:5] = 26  # car
    label_ids[5:7, 1:3] = 26  # car
    label_ids[5:8, 6:9] = 24  # person group (no instance id) -> crowd
    inst = label_ids.astype(np.int32)
    inst[2:4, 2:5] = 26000
    inst[5:7, 1:3] = 26001
    gt = root / "gtFine" / "train" / "aachen"
    _png(gt / f"{stem}_gtFine_labelIds.png", label_ids)
    gt.mkdir(parents=True, exist_ok=True)
    Image.fromarray(inst.astype(np.uint16)).save(gt / f"{stem}_gtFine_instanceIds.png")
    assert detect_format(root)[0] == "cityscapes"
    s = open_dataset(root)[0]
    # trainIds: road 0, car 13, person 11; unlabeled -> 255
    assert s.num_instances == 2 and s.classes.tolist() == [13, 13]
    assert sorted(np.bincount(s.instances.ravel())[1:].tolist()) == [4, 6]
    assert s.ignore.sum() == 9 and (s.semantic[5:8, 6:9] == 11).all()
    assert (s.semantic[0] == 255).all() and s.semantic[1, 0] == 0

import json

import numpy as np
import pytest
from PIL import Image

from conftest import require
from instembed.engine import writers as W

mask_utils = require("pycocotools.mask")


@pytest.mark.parametrize("seed", range(6))
def test_own_rle_encoder_equals_pycocotools(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 40, 2)
    mask = rng.random((h, w)) < [0.0, 0.02, 0.5, 0.98, 1.0, 0.3][seed]
    if seed == 5:  # a blob with long runs (counts > 2**10 need several 5-bit groups)
        mask = np.zeros((70, 90), bool)
        mask[5:60, 10:80] = True
    ref = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    own = W.encode_rle_py(mask)
    assert own["size"] == [int(v) for v in ref["size"]]
    assert own["counts"] == ref["counts"].decode("ascii")
    decoded = mask_utils.decode({"size": own["size"], "counts": own["counts"].encode()})
    assert np.array_equal(decoded.astype(bool), mask)


def test_instance_records_by_hand():
    labels = np.zeros((6, 8), np.int32)
    labels[1:3, 2:5] = 1  # rows 1-2, cols 2-4: area 6, bbox x=2 y=1 w=3 h=2
    labels[4, 7] = 3  # single pixel: area 1, bbox [7, 4, 1, 1]; id 2 is absent -> skipped
    recs = W.instance_records(labels, scores=np.array([0.9, 0.5, 0.2]), classes=np.array([2, 2, 5]))
    assert recs == [
        {"id": 1, "score": 0.9, "class": 2, "area": 6, "bbox": [2, 1, 3, 2]},
        {"id": 3, "score": 0.2, "class": 5, "area": 1, "bbox": [7, 4, 1, 1]},
    ]
    assert W.instance_records(np.zeros((3, 3), int)) == []


def test_coco_results_evaluate_perfectly_with_pycocotools(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    labels = np.zeros((32, 40), np.int32)
    labels[2:10, 3:12] = 1
    labels[15:30, 20:38] = 2
    gt = {
        "images": [{"id": 7, "height": 32, "width": 40}],
        "categories": [{"id": 1, "name": "obj"}],
        "annotations": [
            {
                "id": i,
                "image_id": 7,
                "category_id": 1,
                "segmentation": W.encode_rle(labels == i),
                "area": float((labels == i).sum()),
                "bbox": W.instance_records(labels)[i - 1]["bbox"],
                "iscrowd": 0,
            }
            for i in (1, 2)
        ],
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    res = W.coco_result_records(7, labels, scores=np.array([0.8, 0.6]))
    coco = COCO(str(tmp_path / "gt.json"))
    ev = COCOeval(coco, coco.loadRes(res), "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)  # the predictions are the ground truth


def test_panoptic_png_round_trip(tmp_path):
    labels = np.zeros((5, 6), np.int32)
    labels[0:2, 0:2] = 1
    labels[3:5, 4:6] = 2
    semantic = np.zeros((5, 6), np.int64)
    semantic[:, 3:] = 3  # stuff class 3 on the right half, class 0 (stuff) on the left
    seg, infos = W.panoptic_segments(labels, np.array([7, 8]), semantic, stuff_classes=(0, 3))
    # things keep their ids; stuff 0 = left half minus instance 1 (15 - 4 = 11 px) -> id 3,
    # stuff 3 = right half minus instance 2 (15 - 4 = 11 px) -> id 4
    assert [(i["id"], i["category_id"], i["area"], i["isthing"]) for i in infos] == [
        (1, 7, 4, 1),
        (2, 8, 4, 1),
        (3, 0, 11, 0),
        (4, 3, 11, 0),
    ]
    seg = seg.copy()
    seg[0, 5] = 70000  # ids above 65535 use the blue channel
    p = W.write_panoptic_png(tmp_path / "p.png", seg)
    rgb = np.asarray(Image.open(p)).astype(np.int64)
    assert np.array_equal(rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2], seg)


def test_overlay_shape_and_tint():
    img = np.zeros((1, 10, 12), np.float32)
    labels = np.zeros((10, 12), np.int32)
    labels[2:6, 2:6] = 1
    rgb = W.overlay_rgb(img, labels)
    assert rgb.shape == (10, 12, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [0, 0, 0]  # black background stays black
    assert rgb[3, 3].sum() > 0  # instance pixels are tinted


def test_instance_records_and_coco_results_of_a_mask_stack():
    from pycocotools import mask as mask_utils

    masks = np.zeros((3, 6, 8), bool)
    masks[0, 1:3, 2:5] = True  # area 6, bbox [2, 1, 3, 2]
    masks[1, 2:6, 4] = True  # area 4, bbox [4, 2, 1, 4]; shares (2, 4) with mask 0
    # mask 2 is empty -> skipped
    recs = W.instance_records(masks, scores=np.array([0.9, 0.5, 0.2]))
    assert recs == [
        {"id": 1, "score": 0.9, "area": 6, "bbox": [2, 1, 3, 2]},
        {"id": 2, "score": 0.5, "area": 4, "bbox": [4, 2, 1, 4]},
    ]
    res = W.coco_result_records(3, masks, np.array([0.9, 0.5, 0.2]))
    assert [r["area"] for r in res] == [6, 4]
    for r, m in zip(res, masks):
        rle = {"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()}
        assert np.array_equal(mask_utils.decode(rle).astype(bool), m)

"""The batch carries per-object masks (overlaps kept) and boxes beside the flat label image."""

from __future__ import annotations

import numpy as np
import torch

from instembed.data import transforms as T
from instembed.data.dataset import InstanceDataset, collate, image_targets
from instembed.data.sample import Sample


def _crossing() -> Sample:
    """Two bars crossing at rows 4-5, columns 3-4: a vertical (id 1) and a horizontal one (id 2)."""
    stack = np.zeros((2, 10, 8), bool)
    stack[0, 1:9, 3:5] = True  # rows 1..8, cols 3..4
    stack[1, 4:6, 0:7] = True  # rows 4..5, cols 0..6
    image = np.zeros((1, 10, 8), np.float32)
    return Sample(image=image, instances=stack, classes=np.array([1, 2]))


def test_mask_stack_keeps_overlaps_and_boxes_are_pixel_edges():
    item = InstanceDataset([_crossing()])[0]
    masks, boxes = item["instance_masks"], item["boxes"]
    assert masks.dtype == torch.bool and masks.shape == (2, 10, 8)
    assert torch.equal(masks, torch.from_numpy(_crossing().instances))
    overlap = masks.sum(0) > 1
    assert int(overlap.sum()) == 4  # rows 4-5 x cols 3-4
    # the flat label image drops the overlap and marks it ignored; the masks keep it
    assert (item["labels"][overlap] == 0).all() and item["ignore"][overlap].all()
    # boxes (x1, y1, x2, y2), pixel edges, computed by hand from the slices above
    assert boxes.tolist() == [[3.0, 1.0, 5.0, 9.0], [0.0, 4.0, 7.0, 6.0]]


def test_label_image_masks_match_labels_after_a_crop():
    lab = np.zeros((12, 12), np.int32)
    lab[0:4, 0:4] = 5  # ids are renumbered 1..N in order of the old ids
    lab[6:12, 2:9] = 9
    lab[8:10, 10:12] = 7
    s = Sample(image=np.zeros((1, 12, 12), np.float32), instances=lab)
    crop = T.Compose([T.RandomCrop((8, 10))])
    ds = InstanceDataset([s], transform=crop, seed=3)
    item = ds[0]
    labels, masks = item["labels"], item["instance_masks"]
    n = int(labels.max())
    assert masks.shape[0] == n >= 1
    for k in range(1, n + 1):
        assert torch.equal(masks[k - 1], labels == k)
        ys, xs = np.nonzero((labels == k).numpy())
        assert item["boxes"][k - 1].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_collate_keeps_per_instance_lists_and_image_targets_split_them():
    a = InstanceDataset([_crossing()])[0]
    lab = np.zeros((10, 8), np.int32)
    lab[2:5, 2:5] = 1
    b = InstanceDataset([Sample(np.zeros((1, 10, 8), np.float32), lab, classes=np.array([3]))])[0]
    batch = collate([a, b])
    assert isinstance(batch["instance_masks"], list) and isinstance(batch["boxes"], list)
    assert [m.shape[0] for m in batch["instance_masks"]] == [2, 1]
    targets = image_targets(batch)
    assert len(targets) == 2
    assert targets[1]["boxes"].tolist() == [[2.0, 2.0, 5.0, 5.0]]
    assert targets[1]["classes"].tolist() == [3] and targets[0]["classes"].tolist() == [1, 2]
    assert targets[0]["masks"] is batch["instance_masks"][0]  # no copy
    assert torch.equal(targets[0]["labels"], batch["labels"][0])


def test_an_image_without_objects_has_empty_masks_and_boxes():
    s = Sample(np.zeros((1, 6, 7), np.float32), np.zeros((6, 7), np.int32))
    item = InstanceDataset([s])[0]
    assert item["instance_masks"].shape == (0, 6, 7) and item["boxes"].shape == (0, 4)

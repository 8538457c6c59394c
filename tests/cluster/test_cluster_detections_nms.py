"""Mask NMS of the "detections" post-processing (instembed.cluster.detections.filter_detections)
against a slow reference written here: the plain greedy loop over all pairs with IoU from the
whole-image masks. The kept indices (read back through ``centers``, which carry each input's
index) must be identical, ties in score and IoUs exactly at the threshold included."""

from __future__ import annotations

import math

import pytest
import torch

from instembed.cluster.detections import filter_detections, mask_iou, sparse_mask_iou
from instembed.structures import Instances

pytestmark = pytest.mark.usefixtures("one_thread")


def _ref_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    inter = int((a & b).sum())
    union = int(a.sum()) + int(b.sum()) - inter
    return inter / union if union > 0 else 0.0


def _ref_keep(masks, scores, classes, score_thresh, nms_iou, mask_thresh, min_size):
    """Input indices kept, highest score first (ties: the earlier index first)."""
    bm = masks if masks.dtype == torch.bool else masks >= mask_thresh
    s = [float(v) for v in scores]
    cand = [i for i in range(len(s)) if s[i] >= score_thresh and int(bm[i].sum()) >= min_size]
    order = sorted(cand, key=lambda i: (-s[i], i))
    keep: list[int] = []
    for i in order:
        if not any(
            (classes is None or int(classes[k]) == int(classes[i]))
            and _ref_iou(bm[k], bm[i]) > nms_iou
            for k in keep
        ):
            keep.append(i)
    return keep


def _kept(
    masks, scores, classes=None, *, score_thresh=0.0, nms_iou=0.5, mask_thresh=0.5, min_size=0
):
    n = masks.shape[0]
    inst = Instances(
        masks=masks,
        scores=scores,
        classes=classes,
        centers=torch.arange(n, dtype=torch.float32)[:, None],
    )
    res = filter_detections(
        inst,
        score_thresh=score_thresh,
        nms_iou=nms_iou,
        mask_thresh=mask_thresh,
        min_size=min_size,
    )
    got = [int(c) for c in res.centers[:, 0]]
    # the returned masks are the kept inputs' thresholded masks
    bm = masks if masks.dtype == torch.bool else masks >= mask_thresh
    assert torch.equal(res.masks, bm[got])
    return got


def _blobs(g, n, h, w, r_max=6, empty=0):
    """n random discs (radius 1..r_max, some duplicated with a shift), the last ``empty`` of them
    all-zero masks."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for k in range(n - empty):
        if k >= 2 and float(torch.rand(1, generator=g)) < 0.4:  # a near-duplicate
            j = int(torch.randint(0, k, (1,), generator=g))
            shift = torch.randint(-2, 3, (2,), generator=g).tolist()
            masks[k] = torch.roll(masks[j], shifts=shift, dims=(0, 1))
            continue
        cy, cx = (
            int(torch.randint(0, h, (1,), generator=g)),
            int(torch.randint(0, w, (1,), generator=g)),
        )
        r = 1 + int(torch.randint(0, r_max, (1,), generator=g))
        masks[k] = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return masks


# --------------------------------------------------------------------------- the IoU matrix
def test_sparse_mask_iou_equals_the_dense_one_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    for n, h, w, empty in ((30, 24, 40, 3), (12, 9, 7, 0), (5, 1, 1, 2), (1, 6, 6, 0)):
        masks = _blobs(g, n, h, w, empty=empty)
        assert torch.equal(sparse_mask_iou(masks), mask_iou(masks))
    for shape in ((0, 8, 8), (3, 8, 8), (2, 0, 5)):
        masks = torch.zeros(shape, dtype=torch.bool)
        assert torch.equal(
            sparse_mask_iou(masks), torch.zeros(shape[0], shape[0], dtype=torch.float64)
        )


def test_sparse_mask_iou_hand_values():
    m = torch.zeros(4, 4, 5, dtype=torch.bool)
    m[0, 0:2, 0:2] = True  # A: 4 px
    m[1, 0:2, 1:3] = True  # B: 4 px, 2 shared with A -> 2 / 6
    m[2, 0, 0:2] = True  # C: 2 px inside A -> 2 / 4; 1 shared with B -> 1 / 5
    m[3, 3, 3:5] = True  # D: apart
    iou = sparse_mask_iou(m)
    assert iou.dtype == torch.float64
    assert iou[0, 1] == iou[1, 0] == 2 / 6 and iou[0, 2] == 0.5 and iou[1, 2] == 1 / 5
    assert iou[3, :3].tolist() == [0.0, 0.0, 0.0] and iou.diagonal().tolist() == [1.0] * 4


# --------------------------------------------------------------------------- NMS
def test_hand_case_ties_and_iou_at_the_threshold():
    m = torch.zeros(5, 4, 5, dtype=torch.bool)
    m[0, 0:2, 0:2] = True  # A 0.9
    m[1, 0:2, 1:3] = True  # B 0.8: IoU(A, B) = 1/3
    m[2, 0:2, 0:2] = True  # C 0.9, a copy of A (tie: A, the earlier, wins)
    m[3, 0, 0:2] = True  # D 0.7: IoU(A, D) = 0.5 exactly, IoU(B, D) = 1/5
    # E 0.95 is empty: IoU 0 with everything
    scores = torch.tensor([0.9, 0.8, 0.9, 0.7, 0.95])
    assert _kept(m, scores, nms_iou=0.5) == [4, 0, 1, 3]  # D: 0.5 is not > 0.5
    assert _kept(m, scores, nms_iou=0.3) == [4, 0]
    assert _kept(m, scores, nms_iou=0.49) == [4, 0, 1]
    # thresholds one float below the IoUs 1/3 and 1/2: now they suppress
    assert _kept(m, scores, nms_iou=math.nextafter(0.5, 0.0)) == [4, 0, 1]
    assert _kept(m, scores, nms_iou=math.nextafter(1 / 3, 0.0)) == [4, 0]
    assert _kept(m, scores, nms_iou=math.nextafter(1 / 3, 1.0)) == [4, 0, 1]
    assert _kept(m, scores, nms_iou=1.0) == [4, 0, 2, 1, 3]
    assert _kept(m, scores, nms_iou=0.5, min_size=1) == [0, 1, 3]
    # below 0 every pair "overlaps", disjoint ones too: only the best survives
    assert _kept(m, scores, nms_iou=-0.1) == [4]
    # per class: A and C differ in class, so C stays
    assert _kept(m, scores, torch.tensor([1, 1, 2, 1, 1]), nms_iou=0.5) == [4, 0, 2, 1, 3]


def test_empty_input():
    masks = torch.zeros(0, 7, 9, dtype=torch.bool)
    assert _kept(masks, torch.zeros(0)) == []
    assert (
        _kept(torch.zeros(0, 7, 9), torch.zeros(0), classes=torch.zeros(0, dtype=torch.long)) == []
    )
    # every candidate filtered out by score
    assert (
        _kept(
            torch.ones(3, 4, 4, dtype=torch.bool), torch.tensor([0.1, 0.2, 0.3]), score_thresh=0.5
        )
        == []
    )


@pytest.mark.parametrize("seed", range(4))
def test_random_detections_against_the_slow_loop(seed):
    g = torch.Generator().manual_seed(seed)
    n, h, w = 45, 28, 36
    masks = _blobs(g, n, h, w, r_max=7, empty=4)
    perm = torch.randperm(n, generator=g)  # empty masks anywhere in the order
    masks = masks[perm]
    scores = torch.randint(4, 10, (n,), generator=g).float() / 10  # many ties
    classes = torch.randint(0, 2, (n,), generator=g)
    soft = masks.float() * (0.5 + 0.5 * torch.rand(n, h, w, generator=g))  # >= 0.5 on the masks
    for cls in (None, classes):
        for thr in (-0.5, 0.0, 0.2, 0.5, 0.8, 1.0):
            for score_thresh, min_size in ((0.0, 0), (0.6, 0), (0.0, 10)):
                kw = dict(score_thresh=score_thresh, nms_iou=thr, min_size=min_size)
                ref = _ref_keep(masks, scores, cls, mask_thresh=0.5, **kw)
                assert _kept(masks, scores, cls, **kw) == ref, (cls is None, kw)
        ref = _ref_keep(soft, scores, cls, 0.0, 0.5, 0.75, 0)
        assert _kept(soft, scores, cls, nms_iou=0.5, mask_thresh=0.75) == ref


def test_disjoint_and_fully_overlapping_sets():
    g = torch.Generator().manual_seed(11)
    # a grid of disjoint squares: all kept, by score
    m = torch.zeros(12, 20, 30, dtype=torch.bool)
    for k in range(12):
        y, x = 5 * (k // 6), 5 * (k % 6)
        m[k, y : y + 4, x : x + 4] = True
    scores = torch.randint(0, 3, (12,), generator=g).float()
    ref = sorted(range(12), key=lambda i: (-float(scores[i]), i))
    assert _kept(m, scores, nms_iou=0.0) == ref
    # nested squares around one center, all overlapping: IoU(a, b) = min area / max area
    sizes = [2, 4, 6, 8, 10]
    m = torch.zeros(5, 12, 12, dtype=torch.bool)
    for k, s in enumerate(sizes):
        o = 6 - s // 2
        m[k, o : o + s, o : o + s] = True
    scores = torch.tensor([0.5, 0.9, 0.7, 0.9, 0.6])
    # order 1 (4x4), 3 (8x8), 2 (6x6), 4 (10x10), 0 (2x2); IoU(1,3) = 16/64 = 0.25,
    # IoU(1,2) = 16/36, IoU(3,2) = 36/64, IoU(3,4) = 64/100, IoU(1,0) = 4/16 = 0.25
    assert _kept(m, scores, nms_iou=0.5) == [1, 3, 0]
    assert _kept(m, scores, nms_iou=0.25) == [1, 3, 0]  # 0.25 is not > 0.25
    assert _kept(m, scores, nms_iou=0.24) == [1, 4]  # 3 and 0 go with IoU 0.25 to 1
    assert _kept(m, scores, nms_iou=0.6) == [1, 3, 2, 0]

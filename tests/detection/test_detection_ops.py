"""instembed.detection: RoIAlign, NMS, box ops, BoxCoder, Matcher, sampler, anchors, mask pasting.

References: slow loops written here from the papers / torchvision's documented semantics
(RoIAlign: He et al. 2017 with torchvision's sample rule; NMS: the textbook greedy loop), hand
values, ``torch.autograd.gradcheck`` and ``F.interpolate`` for mask pasting.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from instembed.cluster import detections as cluster_detections
from instembed.detection import (
    AnchorGenerator,
    BalancedPositiveNegativeSampler,
    BoxCoder,
    ImageList,
    Matcher,
    RoIAlign,
    batched_nms,
    box_area,
    box_iou,
    clip_boxes_to_image,
    nms,
    ops,
    paste_masks_in_image,
    remove_small_boxes,
    roi_align,
)


# --------------------------------------------------------------------------- RoIAlign reference
def _bilinear(img, y, x):
    """torchvision's sample rule: 0 outside [-1, H] x [-1, W], else clamp and interpolate."""
    _, h, w = img.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return torch.zeros(img.shape[0], dtype=img.dtype)
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return (
        (1 - ly) * (1 - lx) * img[:, y0, x0]
        + (1 - ly) * lx * img[:, y0, x1]
        + ly * (1 - lx) * img[:, y1, x0]
        + ly * lx * img[:, y1, x1]
    )


def _roi_align_slow(inp, rois, out_hw, scale, sampling_ratio, aligned):
    """Explicit loops over RoIs, bins and sample points (float64)."""
    inp = inp.double()
    oh, ow = out_hw
    out = torch.zeros(len(rois), inp.shape[1], oh, ow, dtype=torch.float64)
    off = 0.5 if aligned else 0.0
    for k, (b, x1, y1, x2, y2) in enumerate(rois.double().tolist()):
        sx, sy = x1 * scale - off, y1 * scale - off
        rw, rh = x2 * scale - off - sx, y2 * scale - off - sy
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bw, bh = rw / ow, rh / oh
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / oh)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / ow)
        count = max(gh * gw, 1)
        for i in range(oh):
            for j in range(ow):
                acc = torch.zeros(inp.shape[1], dtype=torch.float64)
                for iy in range(gh):
                    y = sy + i * bh + (iy + 0.5) * bh / gh
                    for ix in range(gw):
                        x = sx + j * bw + (ix + 0.5) * bw / gw
                        acc += _bilinear(inp[int(b)], y, x)
                out[k, :, i, j] = acc / count
    return out


def _random_rois(g, n_img, k, h, w, scale):
    """Boxes in image coordinates, many partly (some wholly) outside the feature map."""
    hi_x, hi_y = w / scale, h / scale
    xy = torch.rand(k, 2, generator=g, dtype=torch.float64) * torch.tensor([hi_x + 8, hi_y + 8]) - 4
    wh = torch.rand(k, 2, generator=g, dtype=torch.float64) * torch.tensor([hi_x, hi_y]) * 0.8
    wh[:3] *= 0.05  # tiny RoIs (width/height < 1 unless aligned)
    b = torch.randint(0, n_img, (k, 1), generator=g).double()
    return torch.cat([b, xy, xy + wh], dim=1)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 1, 2, 3])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_roi_align_matches_slow_reference(aligned, sampling_ratio, scale):
    g = torch.Generator().manual_seed(17 + sampling_ratio)
    inp = torch.randn(2, 3, 7, 9, generator=g, dtype=torch.float64)
    rois = _random_rois(g, 2, 12, 7, 9, scale)
    ref = _roi_align_slow(inp, rois, (3, 2), scale, sampling_ratio, aligned)
    got = roi_align(inp, rois, (3, 2), scale, sampling_ratio, aligned)
    assert got.shape == (12, 3, 3, 2) and got.dtype == torch.float64
    assert torch.allclose(got, ref, atol=1e-12)
    got32 = roi_align(inp.float(), rois.float(), (3, 2), scale, sampling_ratio, aligned)
    assert got32.dtype == torch.float32
    assert torch.allclose(got32.double(), ref, atol=1e-5)


def test_roi_align_hand_values_on_a_ramp():
    # v[y, x] = 4 y + x on a 4x4 map: bilinear samples of a linear ramp are the ramp itself,
    # except where the sample rule clamps (x or y in [-1, 0) -> 0, in (3, 4] -> 3) or zeroes it
    # (float64: grid_sample's normalised coordinates round in float32, to ~1e-7)
    x = torch.arange(16.0, dtype=torch.float64).view(1, 1, 4, 4)

    def ra(box, size=1, **kw):
        out = roi_align(x, torch.tensor([[0.0, *box]], dtype=torch.float64), size, **kw)[0, 0]
        return out.round(decimals=12)

    # box (0,0)-(2,2), 2x2 samples at 0.5, 1.5: mean y = mean x = 1 -> 4 + 1
    assert ra((0, 0, 2, 2), sampling_ratio=2).tolist() == [[5.0]]
    # aligned: shifted by -0.5, samples at 0, 1 -> 4 * 0.5 + 0.5
    assert ra((0, 0, 2, 2), sampling_ratio=2, aligned=True).tolist() == [[2.5]]
    # samples at -0.5 (clamped to 0) and 0.5: mean 0.25 per axis -> 1.25
    assert ra((-1, -1, 1, 1), sampling_ratio=2).tolist() == [[1.25]]
    # samples at 3.5 (clamped to 3) and 4.5 (> H: 0); one valid sample v[3, 3] = 15 of 4
    assert ra((3, 3, 5, 5), sampling_ratio=2).tolist() == [[3.75]]
    # 2x2 bins, one sample each at 1 and 3
    assert ra((0, 0, 4, 4), 2, sampling_ratio=1).tolist() == [[5.0, 7.0], [13.0, 15.0]]
    # adaptive: ceil(4 / 2) = 2 samples per axis and bin at 0.5, 1.5 | 2.5, 3.5 (-> 3)
    assert ra((0, 0, 4, 4), 2).tolist() == [[5.0, 6.75], [12.0, 13.75]]
    # not aligned, a degenerate box is 1x1: samples at 1.5 -> 4 * 1.5 + 1.5
    assert ra((1, 1, 1, 1), sampling_ratio=2).tolist() == [[7.5]]
    # aligned, adaptive: a degenerate box gets no sample -> 0
    assert ra((1, 1, 1, 1), aligned=True).tolist() == [[0.0]]


def test_roi_align_box_formats_module_and_empty():
    g = torch.Generator().manual_seed(3)
    inp = torch.randn(3, 4, 10, 12, generator=g)
    per_image = [
        torch.tensor([[1.0, 2.0, 9.0, 7.0], [0.0, 0.0, 12.0, 10.0]]),
        torch.zeros(0, 4),
        torch.tensor([[-3.0, 4.5, 5.0, 20.0]]),
    ]
    rois = torch.tensor(
        [[0, 1.0, 2.0, 9.0, 7.0], [0, 0.0, 0.0, 12.0, 10.0], [2, -3.0, 4.5, 5.0, 20.0]]
    )
    a = roi_align(inp, per_image, 5, 0.5, 2, True)
    b = roi_align(inp, rois, (5, 5), 0.5, 2, True)
    assert a.shape == (3, 4, 5, 5) and torch.equal(a, b)
    assert torch.equal(RoIAlign(5, 0.5, 2, True)(inp, rois), b)
    assert torch.equal(ops.roi_align(inp, rois, 5, 0.5, 2, True), b)
    # RoIs in any order: the result of each RoI does not depend on the others
    perm = torch.tensor([2, 0, 1])
    assert torch.equal(
        roi_align(inp, rois[perm], 5, 0.5, -1), roi_align(inp, rois, 5, 0.5, -1)[perm]
    )
    assert roi_align(inp, torch.zeros(0, 5), (2, 3)).shape == (0, 4, 2, 3)
    assert roi_align(inp, [torch.zeros(0, 4)] * 3, 2).shape == (0, 4, 2, 2)
    with pytest.raises(ValueError):
        roi_align(inp, torch.zeros(2, 4), 2)


def test_roi_align_memory_chunks_give_the_same_result(monkeypatch):
    from instembed.detection import pooling as ra_mod

    g = torch.Generator().manual_seed(8)
    inp = torch.randn(1, 2, 8, 8, generator=g, dtype=torch.float64)
    rois = _random_rois(g, 1, 9, 8, 8, 1.0)
    full = roi_align(inp, rois, 2, 1.0, 2)
    monkeypatch.setattr(ra_mod, "_MAX_ELEMENTS", 1)  # one RoI per grid_sample call
    assert torch.equal(roi_align(inp, rois, 2, 1.0, 2), full)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_roi_align_gradcheck(aligned, sampling_ratio):
    g = torch.Generator().manual_seed(11)
    inp = torch.randn(2, 1, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor(
        [[0, 0.3, 0.7, 4.2, 3.9], [1, -1.5, 1.0, 3.0, 6.5], [1, 2.0, 2.0, 2.4, 2.2]],
        dtype=torch.float64,
    )
    assert torch.autograd.gradcheck(
        lambda t: roi_align(t, rois, (2, 3), 0.8, sampling_ratio, aligned), (inp,)
    )


# --------------------------------------------------------------------------- NMS
def _iou_slow(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _nms_slow(boxes, scores, thresh, classes=None):
    """Textbook greedy loop; equal scores in index order."""
    bl, sl = boxes.tolist(), scores.tolist()
    cl = [0] * len(bl) if classes is None else classes.tolist()
    order = sorted(range(len(bl)), key=lambda i: (-sl[i], i))
    keep = []
    for i in order:
        if all(cl[k] != cl[i] or _iou_slow(bl[k], bl[i]) <= thresh for k in keep):
            keep.append(i)
    return keep


def _random_boxes(g, n, size=40.0):
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * size
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * size / 2
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[: n // 8] = boxes[n // 8 : 2 * (n // 8)]  # exact duplicates
    return boxes


def test_box_iou_area_clip_small():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 15.0], [3.0, 3.0, 3.0, 8.0]])
    b = torch.tensor([[0.0, 0.0, 10.0, 5.0], [20.0, 20.0, 30.0, 30.0]])
    assert box_area(a).tolist() == [100.0, 100.0, 0.0]
    iou = box_iou(a, b)
    assert iou.shape == (3, 2)
    assert torch.allclose(iou, torch.tensor([[0.5, 0.0], [0.0, 0.0], [0.0, 0.0]]))
    assert torch.allclose(box_iou(a[:2], a[:2])[0, 1], torch.tensor(25.0 / 175.0))
    assert (
        box_iou(torch.tensor([[0, 0, 4, 4]]), torch.tensor([[0, 0, 2, 4]])).dtype == torch.float32
    )
    assert box_iou(a[2:], a[2:]).tolist() == [[0.0]]  # empty boxes: 0, not NaN
    assert box_iou(a, b[:0]).shape == (3, 0)
    g = torch.Generator().manual_seed(2)
    r1, r2 = _random_boxes(g, 9), _random_boxes(g, 7)
    ref = torch.tensor([[_iou_slow(p, q) for q in r2.tolist()] for p in r1.tolist()])
    assert torch.allclose(box_iou(r1, r2), ref.double(), atol=1e-12)
    # the cluster post-processing uses the same box IoU
    assert torch.equal(cluster_detections.box_iou(r1), box_iou(r1, r1))
    clipped = clip_boxes_to_image(torch.tensor([[-2.0, 3.0, 12.0, 30.0], [1, 1, 2, 2]]), (20, 10))
    assert clipped.tolist() == [[0.0, 3.0, 10.0, 20.0], [1.0, 1.0, 2.0, 2.0]]
    assert clip_boxes_to_image(torch.full((2, 3, 4), 50.0), (20, 10)).shape == (2, 3, 4)
    keep = remove_small_boxes(torch.tensor([[0, 0, 2, 5], [0, 0, 3, 3], [0, 0, 5, 2.9]]), 3.0)
    assert keep.tolist() == [1]


@pytest.mark.parametrize("thresh", [0.0, 0.3, 0.5, 0.7])
def test_nms_matches_greedy_loop_with_ties(thresh):
    g = torch.Generator().manual_seed(int(thresh * 10))
    for _ in range(4):
        boxes = _random_boxes(g, 60)
        scores = torch.randint(0, 8, (60,), generator=g).double() / 7  # many exact ties
        classes = torch.randint(0, 4, (60,), generator=g)
        kept = nms(boxes, scores, thresh)
        assert kept.dtype == torch.int64
        assert kept.tolist() == _nms_slow(boxes, scores, thresh)
        assert torch.all(scores[kept][:-1] >= scores[kept][1:])  # decreasing score
        assert ops.nms(boxes, scores, thresh).tolist() == kept.tolist()
        bk = batched_nms(boxes, scores, classes, thresh)
        assert bk.tolist() == _nms_slow(boxes, scores, thresh, classes)
        # == the union of per-class nms, by decreasing score (ties by index)
        union = []
        for c in classes.unique().tolist():
            idx = (classes == c).nonzero().squeeze(1)
            union += idx[nms(boxes[idx], scores[idx], thresh)].tolist()
        union.sort(key=lambda i: (-float(scores[i]), i))
        assert bk.tolist() == union


def test_nms_tie_order_and_edge_cases():
    box = [0.0, 0.0, 10.0, 10.0]
    boxes = torch.tensor([box, [20.0, 20, 30, 30], box, box])
    scores = torch.tensor([0.5, 0.5, 0.9, 0.5])
    # score 0.9 first; equal scores by index: 0 (a duplicate of 2, suppressed), 1, 3 (suppressed)
    assert nms(boxes, scores, 0.5).tolist() == [2, 1]
    assert nms(boxes, torch.full((4,), 0.5), 0.5).tolist() == [0, 1]  # ties: lowest index kept
    # IoU exactly at the threshold is kept (suppression needs IoU > threshold)
    half = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0]])
    assert nms(half, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0, 1]
    assert nms(half, torch.tensor([0.9, 0.8]), 0.49).tolist() == [0]
    empty = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.int64
    assert batched_nms(
        torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5
    ).shape == (0,)
    # same boxes in different classes are both kept
    assert batched_nms(boxes[[0, 2]], scores[[0, 2]], torch.tensor([0, 1]), 0.5).tolist() == [1, 0]


def test_nms_chunked_overlaps(monkeypatch):
    from instembed.detection import boxes as boxes_mod

    g = torch.Generator().manual_seed(4)
    boxes = _random_boxes(g, 50)
    scores = torch.rand(50, generator=g)
    full = nms(boxes, scores, 0.4)
    monkeypatch.setattr(boxes_mod, "_IOU_CHUNK", 7)
    assert torch.equal(nms(boxes, scores, 0.4), full)


# --------------------------------------------------------------------------- BoxCoder
def test_box_coder_round_trip_hand_values_and_clamp():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    prop = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    gt = torch.tensor([[5.0, 5.0, 15.0, 25.0]])
    d = coder.encode_single(gt, prop)
    # centre (10, 15) vs (5, 5): dx = 10 * 5 / 10, dy = 10 * 10 / 10; dw = 0, dh = 5 log 2
    assert torch.allclose(d, torch.tensor([[5.0, 10.0, 0.0, 5 * math.log(2.0)]]))
    assert torch.allclose(coder.decode_single(d, prop), gt)
    g = torch.Generator().manual_seed(6)
    props = _random_boxes(g, 30) + 0.5
    gts = _random_boxes(g, 30) + 0.5
    for weights in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)):
        c = BoxCoder(weights)
        assert torch.allclose(c.decode(c.encode(gts, props), props), gts, atol=1e-9)
        # torchvision's list API: per-image tuples in, (N, k, 4) out
        parts = c.encode([gts[:10], gts[10:]], [props[:10], props[10:]])
        assert isinstance(parts, tuple) and [p.shape for p in parts] == [(10, 4), (20, 4)]
        dec = c.decode(torch.cat(parts), [props[:10], props[10:]])
        assert dec.shape == (30, 1, 4) and torch.allclose(dec[:, 0], gts, atol=1e-9)
    # per-class deltas (N, 4k): k boxes per proposal
    codes = torch.cat([coder.encode_single(gts, props), torch.zeros(30, 4, dtype=torch.float64)], 1)
    dec = coder.decode(codes, [props])
    assert dec.shape == (30, 2, 4)
    assert torch.allclose(dec[:, 0], gts) and torch.allclose(dec[:, 1], props)
    # clamp: dw, dh at most log(1000 / 16) after the weights -> 62.5 times the size at most
    huge = torch.tensor([[0.0, 0.0, 100.0, -5.0]])
    box = coder.decode_single(huge, prop)
    w, h = float(box[0, 2] - box[0, 0]), float(box[0, 3] - box[0, 1])
    assert math.isclose(w, 10 * 62.5, rel_tol=1e-5)
    assert math.isclose(h, 10 * math.exp(-1.0), rel_tol=1e-5)  # no lower clamp
    assert math.isclose(coder.bbox_xform_clip, math.log(1000.0 / 16))


# --------------------------------------------------------------------------- Matcher
def test_matcher_thresholds_and_low_quality_matches():
    iou = torch.tensor(
        [
            [0.9, 0.5, 0.2, 0.1, 0.0, 0.7, 0.3],
            [0.1, 0.4, 0.2, 0.4, 0.05, 0.0, 0.0],
        ]
    )
    # per proposal best: gt0 .9, gt0 .5, gt0 .2 (tie: first), gt1 .4, gt1 .05, gt0 .7, gt0 .3
    m = Matcher(0.7, 0.3)
    assert m(iou).tolist() == [0, -2, -1, -2, -1, 0, -2]  # >= high matched, == low ignored
    lq = Matcher(0.7, 0.3, allow_low_quality_matches=True)
    # gt0's best is p0 (already matched); gt1's best 0.4 is shared by p1 and p3 (a tie: both).
    # p3 gets gt1; p1 gets its *own* best gt, gt0 (0.5) -- torchvision's rule
    assert lq(iou).tolist() == [0, 0, -1, 1, -1, 0, -2]
    assert Matcher(0.5, 0.5)(iou).tolist() == [0, 0, -1, -1, -1, 0, -1]
    assert m(iou).dtype == torch.int64
    with pytest.raises(ValueError, match="ground-truth"):
        m(torch.zeros(0, 4))
    with pytest.raises(ValueError, match="proposal"):
        m(torch.zeros(2, 0))
    with pytest.raises(ValueError):
        Matcher(0.3, 0.7)


# --------------------------------------------------------------------------- sampler
def _labels(n_pos, n_neg, n_ign, g):
    lab = torch.cat(
        [
            torch.randint(1, 4, (n_pos,), generator=g),
            torch.zeros(n_neg, dtype=torch.long),
            torch.full((n_ign,), -1),
        ]
    )
    return lab[torch.randperm(len(lab), generator=g)]


def test_balanced_sampler_counts_and_reproducibility():
    g = torch.Generator().manual_seed(1)
    images = [
        _labels(3, 10, 2, g),
        _labels(10, 100, 5, g),
        _labels(2, 1, 7, g),
        _labels(0, 4, 0, g),
    ]
    sampler = BalancedPositiveNegativeSampler(8, 0.5)
    pos, neg = sampler(images, generator=torch.Generator().manual_seed(0))
    counts = [(int(p.sum()), int(n.sum())) for p, n in zip(pos, neg)]
    # positives capped by availability (3 < 4), negatives fill up to 8, never beyond availability
    assert counts == [(3, 5), (4, 4), (2, 1), (0, 4)]
    for lab, p, n in zip(images, pos, neg):
        assert p.dtype == torch.uint8 and p.shape == lab.shape
        assert torch.all(lab[p.bool()] >= 1) and torch.all(lab[n.bool()] == 0)
        assert not torch.any(p.bool() & n.bool())
    s16 = BalancedPositiveNegativeSampler(16, 0.25)
    p, n = s16([images[1]])
    assert (int(p[0].sum()), int(n[0].sum())) == (4, 12)
    # the same seed gives the same sample; another seed another one
    seeded = BalancedPositiveNegativeSampler(16, 0.25, generator=torch.Generator().manual_seed(5))
    a = seeded([images[1]])
    b = s16([images[1]], generator=torch.Generator().manual_seed(5))
    c = s16([images[1]], generator=torch.Generator().manual_seed(6))
    assert torch.equal(a[0][0], b[0][0]) and torch.equal(a[1][0], b[1][0])
    assert not (torch.equal(a[0][0], c[0][0]) and torch.equal(a[1][0], c[1][0]))


# --------------------------------------------------------------------------- anchors
def test_anchor_generator_counts_and_coordinates():
    gen = AnchorGenerator(sizes=((32,), (64,)), aspect_ratios=((0.5, 1.0, 2.0),) * 2)
    assert gen.num_anchors_per_location() == [3, 3]
    images = torch.zeros(2, 3, 16, 16)
    feats = [torch.zeros(2, 8, 4, 4), torch.zeros(2, 8, 2, 2)]  # strides 4 and 8
    anchors = gen(images, feats)
    assert len(anchors) == 2 and anchors[0].shape == (48 + 12, 4)
    assert torch.equal(anchors[0], anchors[1]) and anchors[0] is not anchors[1]
    a = anchors[0]
    # ratio 0.5 (h / w), size 32: w = 32 sqrt 2 = 45.25, h = 22.63 -> halves 22.6, 11.3 rounded
    assert a[0].tolist() == [-23.0, -11.0, 23.0, 11.0]
    assert a[1].tolist() == [-16.0, -16.0, 16.0, 16.0]  # ratio 1
    assert a[2].tolist() == [-11.0, -23.0, 11.0, 23.0]  # ratio 2
    assert a[3].tolist() == [-19.0, -11.0, 27.0, 11.0]  # next position: x + 4
    assert a[3 * 4].tolist() == [-23.0, -7.0, 23.0, 15.0]  # next row: y + 4
    assert a[47].tolist() == [1.0, -11.0, 23.0, 35.0]  # position (3, 3) = (12, 12), ratio 2
    assert a[48].tolist() == [-45.0, -23.0, 45.0, 23.0]  # level 2, size 64, ratio 0.5
    assert a[59].tolist() == [8 - 23.0, 8 - 45.0, 8 + 23.0, 8 + 45.0]  # (8, 8), ratio 2
    # an ImageList gives the same; flat sizes / ratios are per level / shared
    il = ImageList(images, [(16, 16), (12, 14)])
    assert torch.equal(gen(il, feats)[1], a)
    flat = AnchorGenerator(sizes=(32, 64), aspect_ratios=(0.5, 1.0, 2.0))
    assert torch.equal(flat(images, feats)[0], a)
    levels = gen.grid_anchors([(4, 4), (2, 2)], [(4, 4), (8, 8)])
    assert [len(x) for x in levels] == [48, 12] and torch.equal(torch.cat(levels), a)
    # several sizes per level: ratio-major order
    multi = AnchorGenerator(sizes=((16, 32),), aspect_ratios=((1.0, 4.0),))
    assert multi.num_anchors_per_location() == [4]
    assert multi.cell_anchors[0].tolist() == [
        [-8.0, -8.0, 8.0, 8.0],
        [-16.0, -16.0, 16.0, 16.0],
        [-4.0, -16.0, 4.0, 16.0],
        [-8.0, -32.0, 8.0, 32.0],
    ]
    assert gen(images.double(), [f.double() for f in feats])[0].dtype == torch.float64
    with pytest.raises(ValueError):
        gen(images, feats[:1])


# --------------------------------------------------------------------------- paste masks
def test_paste_constant_mask_gives_exactly_the_box():
    masks = torch.ones(3, 28, 28)
    boxes = torch.tensor([[3.0, 7.0, 6.0, 9.0], [-5.0, 2.0, 4.0, 30.0], [2.6, 1.2, 8.4, 3.5]])
    out = paste_masks_in_image(masks, boxes, (12, 10))
    assert out.shape == (3, 12, 10) and out.dtype == torch.bool
    ref = torch.zeros(3, 12, 10, dtype=torch.bool)
    ref[0, 7:9, 3:6] = True
    ref[1, 2:12, 0:4] = True  # clipped to the image
    ref[2, 1:3, 3:8] = True  # pixel centres in [2.6, 8.4) x [1.2, 3.5): columns 3..7, rows 1..2
    assert torch.equal(out, ref)
    # a constant mask below the threshold gives nothing; threshold None gives probabilities
    assert not paste_masks_in_image(torch.full((1, 5, 5), 0.4), boxes[:1], (12, 10)).any()
    soft = paste_masks_in_image(torch.full((1, 5, 5), 0.4), boxes[:1], (12, 10), threshold=None)
    assert soft.dtype == torch.float32 and torch.allclose(soft, 0.4 * ref[:1].float())
    # degenerate boxes and empty input
    assert not paste_masks_in_image(
        torch.ones(1, 4, 4), torch.tensor([[5.0, 5, 5, 9]]), (12, 10)
    ).any()
    assert paste_masks_in_image(torch.ones(0, 4, 4), torch.zeros(0, 4), (6, 7)).shape == (0, 6, 7)


def test_paste_equals_interpolate_for_integer_boxes():
    g = torch.Generator().manual_seed(9)
    masks = torch.rand(4, 1, 14, 14, generator=g, dtype=torch.float64)  # mask-head layout
    boxes = torch.tensor([[2, 3, 30, 20], [0, 0, 7, 5], [10, 11, 13, 40], [5, 5, 19, 19]])
    h, w = 40, 32
    got = paste_masks_in_image(masks, boxes, (h, w), threshold=None)
    for k, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        ref = torch.zeros(h, w, dtype=torch.float64)
        up = F.interpolate(masks[k : k + 1], size=(y2 - y1, x2 - x1), mode="bilinear")[0, 0]
        ref[y1:y2, x1:x2] = up[: h - y1, : w - x1]
        assert torch.allclose(got[k], ref, atol=1e-12)
    bools = paste_masks_in_image(masks, boxes, (h, w), threshold=0.5)
    assert torch.equal(bools, got >= 0.5)


def test_paste_chunks_give_the_same_result(monkeypatch):
    from instembed.detection import masks as masks_mod

    g = torch.Generator().manual_seed(10)
    masks = torch.rand(5, 7, 9, generator=g)  # non-square masks
    boxes = _random_boxes(g, 5, 20.0).float()
    full = paste_masks_in_image(masks, boxes, (25, 30), threshold=None)
    monkeypatch.setattr(masks_mod, "_MAX_ELEMENTS", 1)
    chunked = paste_masks_in_image(masks, boxes, (25, 30), threshold=None)
    assert torch.allclose(chunked, full, atol=1e-6)


# --------------------------------------------------------------------------- package
def test_import_does_not_need_torchvision(monkeypatch):
    import instembed.detection

    monkeypatch.setitem(sys.modules, "torchvision", None)  # any import of it now fails
    folder = Path(instembed.detection.__file__).parent
    files = sorted(folder.glob("*.py"))
    assert {"__init__.py", "ops.py", "pooling.py"} <= {f.name for f in files}
    for path in files:  # execute every module of the package afresh (under another name)
        spec = importlib.util.spec_from_file_location(f"_probe_{path.stem}", path)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))

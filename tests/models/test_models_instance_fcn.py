"""Instance-sensitive FCN (Dai et al. 2016) and spatial-centre ordering: the assembling module
against a per-window loop, the window labelling rule and the slot order on hand cases, both
methods over-fitting a tiny scene, finite losses on an empty image, and the registries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instembed.cluster import cluster_embeddings
from instembed.data.dataset import collate, image_targets, sample_to_item
from instembed.data.sample import Sample
from instembed.losses.build import build_loss
from instembed.losses.ordering import slot_targets, spatial_order
from instembed.models.build import build_model
from instembed.models.isfcn import assemble_windows, window_labels
from instembed.structures import IGNORE_INDEX, Outputs


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these tiny networks run several times faster than with threads
    competing for two shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- helpers
def _slow_assemble(maps: torch.Tensor, tops, m: int, k: int) -> torch.Tensor:
    """The assembling module written as the paper describes it, one window at a time: the
    k x k sub-windows (i, j) (boundaries floor(i * m / k)) each copy their region of score map
    i * k + j; 0 outside the image."""
    _, h, w = maps.shape
    edges = [next(a for a in range(m + 1) if a * k // m >= i) for i in range(k)] + [m]
    out = torch.zeros(len(tops), m, m)
    for n, (y0, x0) in enumerate(tops):
        for i in range(k):
            for j in range(k):
                for a in range(edges[i], edges[i + 1]):
                    for b in range(edges[j], edges[j + 1]):
                        y, x = y0 + a, x0 + b
                        if 0 <= y < h and 0 <= x < w:
                            out[n, a, b] = maps[i * k + j, y, x]
    return out


def _scene(size=(48, 48), discs=((12, 12, 5.0), (14, 34, 6.0), (34, 22, 5.5))) -> Sample:
    h, w = size
    lab = np.zeros(size, np.int32)
    yy, xx = np.mgrid[:h, :w]
    for k, (cy, cx, r) in enumerate(discs, start=1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    noise = 0.05 * np.random.default_rng(0).random((1, h, w), np.float32)
    return Sample(image=(lab > 0).astype(np.float32)[None] + noise, instances=lab)


def _box_masks(boxes, size=(32, 32)) -> torch.Tensor:
    """(N, H, W) masks of rectangles (y0, y1, x0, x1), end exclusive."""
    m = torch.zeros(len(boxes), *size, dtype=torch.bool)
    for n, (y0, y1, x0, x1) in enumerate(boxes):
        m[n, y0:y1, x0:x1] = True
    return m


# --------------------------------------------------------------------------- assembling
@pytest.mark.parametrize("m,k", [(9, 3), (10, 3), (7, 2), (8, 4), (5, 1)])
def test_assembling_matches_a_per_window_loop(m, k):
    g = torch.Generator().manual_seed(m * 10 + k)
    maps = torch.randn(k * k, 13, 11, generator=g)
    # windows inside, across every border and a corner, and fully outside
    tops = [(0, 0), (2, 1), (13 - m, 11 - m), (-3, 4), (6, -2), (10, 8), (-m, 0), (-2, -2)]
    values, valid = assemble_windows(maps, torch.tensor(tops), m, k)
    assert values.shape == valid.shape == (len(tops), m, m)
    torch.testing.assert_close(values, _slow_assemble(maps, tops, m, k), rtol=0, atol=0)
    assert not valid[6].any() and valid[0].all()


def test_assembling_is_differentiable_and_sub_windows_copy_their_own_map():
    maps = torch.zeros(9, 12, 12, requires_grad=True)
    values, _ = assemble_windows(maps, torch.tensor([[1, 2]]), 9, 3)
    values.sum().backward()
    # each map receives the gradient of exactly its 3 x 3 sub-window
    assert maps.grad.flatten(1).sum(1).tolist() == [9.0] * 9
    assert maps.grad[4, 4:7, 5:8].eq(1).all() and maps.grad[4].sum() == 9  # centre part
    assert maps.grad[0, 1:4, 2:5].eq(1).all()  # top-left part


# --------------------------------------------------------------------------- window labels
def test_window_labelling_rule_on_hand_cases():
    m = 9  # window centred at (cy, cx): rows cy - 4 .. cy + 4; margin 9/8 = 1.125 px
    # object 0: a 5 x 5 square centred at (10, 10); object 1: 7 x 7 centred at (10, 22);
    # object 2: a 3 x 3 square (side < min_fill * m = 4.5: too small for this window size)
    masks = _box_masks([(8, 13, 8, 13), (7, 14, 19, 26), (24, 27, 4, 7)])
    lab = window_labels(masks, m, margin=0.125, min_fill=0.5)
    # centred: |10 - cy| <= 1.125 and |10 - cx| <= 1.125 -> centres 9..11 on both axes
    pos0 = (lab == 0).nonzero().tolist()
    assert sorted(pos0) == [[y, x] for y in (9, 10, 11) for x in (9, 10, 11)]
    # object 1 (7 wide in a 9 window): centred within 1.125 px AND inside the window
    # (rows cy-4 <= 7 and 14 <= cy+5 -> cy in 9..11): the same 3 x 3 centres
    assert sorted((lab == 1).nonzero().tolist()) == [
        [y, x] for y in (9, 10, 11) for x in (21, 22, 23)
    ]
    assert not (lab == 2).any()  # too small for m = 9 ...
    small = window_labels(masks, m, margin=0.125, min_fill=0.5, smallest=True)
    assert (small == 2).sum() == 9  # ... unless it is the smallest window size
    # the object must fit: a 9-wide object in a 9 window fits only when exactly centred
    wide = _box_masks([(6, 15, 6, 15)])
    assert (window_labels(wide, 9) == 0).nonzero().tolist() == [[10, 10]]
    assert not (window_labels(wide, 7) == 0).any()  # larger than the window
    # margin: m = 16 -> 2 px; an even window centred at pixel c has its centre at c - 0.5
    sq = _box_masks([(8, 16, 8, 16)])  # centroid (11.5, 11.5), side 8 = 0.5 * 16
    ys = (window_labels(sq, 16) == 0).nonzero()[:, 0].unique().tolist()
    assert ys == [10, 11, 12, 13, 14]  # |11.5 - (c - 0.5)| <= 2 and rows c-8 <= 8, 16 <= c+8
    # two objects centred in one window: the nearer centroid wins
    a_b = _box_masks([(8, 13, 8, 13), (9, 14, 9, 14)], size=(24, 24))  # centroids 10 and 11
    both = window_labels(a_b, 9, margin=0.25)
    assert both[10, 10] == 0 and both[11, 11] == 1 and both[10, 11] == 0  # tie -> lower index
    assert window_labels(torch.zeros(0, 8, 8, dtype=torch.bool), 5).eq(-1).all()


# --------------------------------------------------------------------------- slot order
def test_instances_are_ordered_by_centroid_x_then_y():
    # centroids (y, x): A (2, 5), B (8, 1), C (1, 5), D (5, 9), E (9, 5)
    centres = torch.tensor([[2.0, 5.0], [8.0, 1.0], [1.0, 5.0], [5.0, 9.0], [9.0, 5.0]])
    # x first (B at x = 1, then the x = 5 column top to bottom: C, A, E, then D at x = 9)
    assert spatial_order(centres).tolist() == [1, 2, 0, 4, 3]
    labels = torch.zeros(12, 12, dtype=torch.long)
    for n, (y, x) in enumerate(centres.long().tolist(), start=1):
        labels[y, x] = n  # one-pixel instances: the centroid is the pixel
    slots = slot_targets(labels, num_slots=4)
    assert [int(slots[y, x]) for y, x in centres.long().tolist()] == [3, 1, 2, IGNORE_INDEX, 4]
    assert int((slots == 0).sum()) == 144 - 5


# --------------------------------------------------------------------------- over-fitting
def _fit(model, loss, batch, steps: int, lr: float) -> None:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        out = model(batch["image"], targets=image_targets(batch))
        total, _ = loss(out, batch)
        opt.zero_grad()
        total.backward()
        opt.step()
    model.eval()


def test_isfcn_overfits_a_tiny_scene():
    from instembed.engine.evaluation import score

    torch.manual_seed(0)
    sample = _scene()
    batch = collate([sample_to_item(sample)])
    model = build_model("isfcn", depth=2, width=8, norm="group", window_sizes=[15], stride=1)
    _fit(model, build_loss("isfcn"), batch, steps=40, lr=1e-2)
    with torch.no_grad():
        out = model(batch["image"])
    raw = out.instances[0]
    assert raw.masks.dtype == torch.float32 and len(raw) > 3  # soft candidates, duplicates
    inst = cluster_embeddings(out, "detections", score_thresh=0.5, nms_iou=0.3)
    assert len(inst) == 3
    metrics = score([sample], [inst])
    assert metrics["AP50"] == pytest.approx(1.0)


def test_ordering_overfits_a_tiny_scene():
    from instembed.engine.evaluation import score

    torch.manual_seed(0)
    sample = _scene()
    batch = collate([sample_to_item(sample)])
    model = build_model("ordering", num_slots=5, depth=2, width=8, norm="group")
    # background down-weighted: the 3 objects cover 12 % of the pixels
    _fit(model, build_loss("ordering", background_weight=0.1), batch, steps=80, lr=1e-2)
    with torch.no_grad():
        out = model(batch["image"])
    assert out.semantic.shape == (1, 6, 48, 48)
    inst = cluster_embeddings(out, "slots", min_size=5)
    assert len(inst) == 3  # every object recovered, each in its own slot
    assert sorted(inst.meta["slots"]) == [1, 2, 3]
    assert score([sample], [inst])["AP50"] == pytest.approx(1.0)


# --------------------------------------------------------------------------- edge cases
def test_an_empty_image_gives_finite_losses_and_no_positive_window():
    sample = Sample(image=np.zeros((1, 32, 32), np.float32), instances=np.zeros((32, 32), np.int32))
    batch = collate([sample_to_item(sample)] * 2)
    model = build_model("isfcn", depth=1, width=4, window_sizes=[9, 13])
    out = model(batch["image"], targets=image_targets(batch))
    assert out.aux["window_labels"].sum() == 0 and out.aux["mask_logits"].numel() == 0
    assert out.aux["window_logits"].numel() == 2 * 256
    total, terms = build_loss("isfcn")(out, batch)
    assert torch.isfinite(total) and terms["mask"] == 0
    total.backward()
    order = build_model("ordering", num_slots=3, depth=1, width=4)
    total, _ = build_loss("ordering")(order(batch["image"]), batch)
    assert torch.isfinite(total)
    assert len(cluster_embeddings(Outputs(semantic=torch.zeros(1, 4, 8, 8)), "slots")) == 0


def test_isfcn_sampling_respects_the_budget_and_the_positive_cap():
    torch.manual_seed(0)
    sample = _scene()
    batch = collate([sample_to_item(sample)])
    model = build_model(
        "isfcn", depth=1, width=4, window_sizes=[13, 17], windows_per_image=64, max_positive=8
    )
    out = model(batch["image"], targets=image_targets(batch))
    a = out.aux
    assert a["window_logits"].shape == (64,) and a["window_labels"].sum() == 8
    assert int(a["num_positive"]) == 8
    assert a["mask_logits"].shape == a["mask_targets"].shape and a["mask_targets"].any()
    # raw candidates: scores sorted, soft masks in [0, 1], window centres as centres
    raw = out.instances[0]
    assert (raw.scores[:-1] >= raw.scores[1:]).all() and len(raw) <= model.max_candidates
    assert raw.masks.min() >= 0 and raw.masks.max() <= 1 and raw.centers.shape == (len(raw), 2)


def test_slots_modes_on_a_slot_spread_over_two_blobs():
    logits = torch.full((3, 10, 10), -5.0)
    logits[0] = 5.0
    logits[1, 1:3, 1:3] = 10.0  # slot 1 on two separate blobs (4 and 9 pixels)
    logits[1, 6:9, 6:9] = 10.0
    logits[2, 1:3, 6:9] = 10.0
    out = Outputs(semantic=logits[None])
    inst = cluster_embeddings(out, "slots")  # "largest": one instance per slot
    assert len(inst) == 2 and inst.meta["slots"] == [1, 2]
    assert inst.labels[7, 7] == 1 and inst.labels[1, 1] == 0 and (inst.scores > 0.99).all()
    assert len(cluster_embeddings(out, "slots", mode="components")) == 3
    whole = cluster_embeddings(out, "slots", mode="slot")
    assert len(whole) == 2 and whole.labels[1, 1] == whole.labels[7, 7] == 1
    assert len(cluster_embeddings(out, "slots", mode="components", min_size=5)) == 2
    with pytest.raises(ValueError, match="mode"):
        cluster_embeddings(out, "slots", mode="bad")

"""The table of post-processing methods (instembed.cluster.methods): registry, parameter
validation, the shared sample -> centres -> assign pattern, and the instance methods
"detections" (score threshold + greedy NMS) and "steps" (recurrent models) on hand-built cases."""

import numpy as np
import pytest
import torch

from instembed.cluster import (
    GRIDS,
    METHODS,
    Method,
    box_iou,
    cluster_batch,
    cluster_embeddings,
    exportable_methods,
    filter_detections,
    filter_steps,
    get_method,
    greedy_nms,
    hdbscan_cluster,
    kmeans,
    kmeans_cluster,
    mask_iou,
    mean_shift,
    meanshift_cluster,
    register,
    registered_methods,
    threshold_cluster,
    validate_method,
)
from instembed.cluster.assign import assign_pixels
from instembed.cluster.methods import run_embedding, unregister
from instembed.cluster.sampling import foreground_sample
from instembed.cluster.threshold import merge_close_centers, threshold_modes
from instembed.structures import DENSE_FIELDS, Instances, Outputs


# --------------------------------------------------------------------------- registry
def test_every_method_has_fields_function_run_and_grid():
    names = [m.name for m in registered_methods()]
    assert tuple(METHODS) == tuple(names) and len(set(names)) == len(names)
    assert {"meanshift", "threshold", "seeded", "kmeans", "hdbscan", "center_offset"} <= set(names)
    assert {"detections", "steps"} <= set(names)
    for m in registered_methods():
        assert m.fields and set(m.fields) <= {*DENSE_FIELDS, "instances"}, m.name
        assert callable(m.function) and callable(m.run), m.name
        assert isinstance(m.grid, dict), m.name
        for key, values in m.grid.items():  # every grid value is a valid parameter setting
            assert values, (m.name, key)
            validate_method(m.name, {key: values[0]}, require=False)
        if m.grid:
            assert GRIDS[m.name] == m.grid
        else:
            assert m.name not in GRIDS
        # methods that read a model's own instances return Instances directly (not dense);
        # a dense-input method may too ("slots": the slot map is the instance identity)
        if "instances" in m.fields:
            assert not m.dense, m.name
    assert set(exportable_methods()) == {"seeded", "center_offset"}
    assert get_method("kmeans").required == ("k",)
    assert get_method("meanshift").required == ("bandwidth",)
    assert get_method("threshold").required == ("delta_v",)
    assert get_method("seeded").required == () and get_method("hdbscan").params is None
    assert GRIDS["detections"] == {"score_thresh": [0.3, 0.5, 0.7], "nms_iou": [0.3, 0.5, 0.7]}
    assert GRIDS["steps"] == {"stop_thresh": [0.3, 0.5, 0.7]}
    assert "kmeans" not in GRIDS and "hdbscan" not in GRIDS


def test_tuning_grids_come_from_the_table():
    from instembed.engine.tune import GRIDS as TUNE_GRIDS
    from instembed.engine.tune import OVERLAP_GRID, default_grid

    assert dict(TUNE_GRIDS) == dict(GRIDS)
    assert default_grid("detections") == GRIDS["detections"]
    assert default_grid("steps") == {"stop_thresh": [0.3, 0.5, 0.7]}
    assert OVERLAP_GRID == [None, 0.3, 0.4, 0.5]
    grid = default_grid("detections")
    grid["nms_iou"].append(0.9)  # a copy: the table is left alone
    assert GRIDS["detections"]["nms_iou"] == [0.3, 0.5, 0.7]


def test_register_a_method_in_one_place():
    def nearest_of_two(embedding, foreground=None, *, gap: float):
        labels = (embedding[0] > gap).long() + 1
        return labels, torch.tensor([[0.0], [1.0]])

    spec = register(
        Method(
            "two",
            ("embedding",),
            nearest_of_two,
            run_embedding(nearest_of_two),
            grid={"gap": [0.5]},
        )
    )
    try:
        assert "two" in METHODS and GRIDS["two"] == {"gap": [0.5]}
        assert spec.required == ("gap",)
        emb = torch.zeros(1, 4, 6)
        emb[0, :, 3:] = 1.0
        res = cluster_embeddings(emb, "two", gap=0.5, min_size=2)
        assert res.num_instances == 2 and res.labels[0].tolist() == [1, 1, 1, 2, 2, 2]
        with pytest.raises(ValueError, match="already registered"):
            register(spec)
        with pytest.raises(ValueError, match="not accepted"):
            register(Method("bad", ("embedding",), nearest_of_two, spec.run, grid={"gapp": [1]}))
        with pytest.raises(ValueError, match="unknown Outputs field"):
            register(Method("bad", ("embeddings",), nearest_of_two, spec.run))
    finally:
        unregister("two")
    assert "two" not in METHODS and "two" not in GRIDS


def test_validate_method_name_and_params():
    assert validate_method("kmeans", {"k": 3, "min_size": 10}).name == "kmeans"
    with pytest.raises(ValueError, match="unknown clustering method 'dbscan'") as e:
        validate_method("dbscan", {})
    for name in METHODS:
        assert name in str(e.value)
    with pytest.raises(ValueError, match=r"method 'kmeans' needs parameter\(s\) \['k'\]"):
        validate_method("kmeans", {"n_init": 2})
    validate_method("kmeans", {"n_init": 2}, require=False)  # k filled in later
    with pytest.raises(ValueError, match="bandwith") as e:
        validate_method("meanshift", {"bandwidth": 1.0, "bandwith": 1.0})
    assert "'bandwidth'" in str(e.value) and "'min_size'" in str(e.value)  # lists valid ones
    with pytest.raises(ValueError, match="foreground_classes"):
        validate_method("threshold", {"delta_v": 0.5, "foreground_classes": [1]})
    validate_method(
        "threshold", {"delta_v": 0.5, "foreground_classes": [1]}, extra=["foreground_classes"]
    )
    with pytest.raises(ValueError, match="overlap_thresh .* needs method 'seeded'"):
        validate_method("threshold", {"delta_v": 0.5, "overlap_thresh": 0.5})
    validate_method("seeded", {"overlap_thresh": 0.5, "seed_thresh": 0.7})
    validate_method("hdbscan", {"min_cluster_size": 5, "metric": "manhattan"})  # scikit-learn's
    validate_method("detections", {"score_thresh": 0.3, "nms_iou": 0.5, "batch_index": 1})
    with pytest.raises(ValueError, match="fill_holes") as e:
        validate_method("detections", {"fill_holes": True})
    assert "'mask_thresh'" in str(e.value) and "'score_thresh'" in str(e.value)
    with pytest.raises(ValueError, match="nms_iou"):
        validate_method("steps", {"nms_iou": 0.5})


def test_dispatch_keeps_its_errors_and_accepts_the_kmeans_seed():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(2, 12, 14, generator=g)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['bandwith'\]"):
        cluster_embeddings(emb, "meanshift", bandwith=1.0)
    with pytest.raises(ValueError, match="overlap_thresh .* needs method 'seeded'"):
        cluster_embeddings(emb, "threshold", delta_v=0.5, overlap_thresh=0.5)
    with pytest.raises(ValueError, match="needs outputs.sigma"):
        cluster_embeddings(Outputs(embedding=emb[None], seed=emb[None, :1]), "seeded")
    a = cluster_embeddings(emb, "kmeans", k=3, seed=1)  # k-means's random seed is a parameter
    b = kmeans_cluster(emb, k=3, seed=1)[0]
    assert torch.equal(a.labels > 0, b > 0) and a.num_instances == 3


# --------------------------------------------------------------------------- sample -> assign
def _scene(seed, h=40, w=44, d=3, k=5, noise=0.5):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g) * 1.5
    lab = torch.randint(k, (h // 4, w // 4), generator=g)
    lab = lab.repeat_interleave(4, 0).repeat_interleave(4, 1)
    emb = centers[lab].permute(2, 0, 1) + noise * torch.randn(d, h, w, generator=g)
    fg = torch.rand(h, w, generator=g) > 0.25
    return emb, fg


def _old_pattern(emb, fg, centers_of, max_points, stride=4):
    """The sample -> centres -> assign code each method had before it was written once."""
    fg, sample = foreground_sample(emb, fg, max_points)
    centers = centers_of(sample)
    index, q2 = assign_pixels(emb, fg, centers, None, stride)
    return index + 1, centers, q2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shared_pattern_gives_the_results_of_the_former_per_method_code(seed):
    emb, fg = _scene(seed)
    # k-means
    ref, cen, _ = _old_pattern(emb, fg, lambda s: kmeans(s, 4, seed=3)[1], 600)
    labels, centers = kmeans_cluster(emb, fg, k=4, seed=3, max_points=600)
    assert torch.equal(labels, ref) and torch.equal(centers, cen)
    # mean-shift, also with cluster_all=False (pixels beyond the bandwidth -> background)
    for bw, cluster_all in [(0.8, True), (0.6, False)]:
        ref, cen, q2 = _old_pattern(emb, fg, lambda s, bw=bw: mean_shift(s, bw)[1], 500)
        if not cluster_all:
            ref = torch.where(q2 <= bw * bw, ref, 0)
            assert (ref == 0).sum() > (~fg).sum()  # some pixels are cut
        labels, centers = meanshift_cluster(
            emb, fg, bandwidth=bw, cluster_all=cluster_all, max_points=500
        )
        assert torch.equal(labels, ref) and torch.equal(centers, cen)

    # HDBSCAN: cluster means of the sample points
    def hdb(s):
        from sklearn.cluster import HDBSCAN

        lab = torch.as_tensor(
            HDBSCAN(min_cluster_size=10, copy=True).fit_predict(s.double().numpy())
        )
        return torch.stack([s[lab == c].mean(0) for c in range(int(lab.max()) + 1)])

    ref, cen, _ = _old_pattern(emb, fg, hdb, 400)
    labels, centers = hdbscan_cluster(emb, fg, min_cluster_size=10, max_points=400)
    assert torch.equal(labels, ref) and torch.allclose(centers, cen, atol=1e-6)
    # threshold with merged fragments: pixels go to the nearest fragment, then to its cluster
    _, sample = foreground_sample(emb, fg, 700)
    _, frags = threshold_modes(sample, 0.4)
    comp = merge_close_centers(frags, 0.7)
    assert comp.max() + 1 < frags.shape[0]  # some fragments do merge
    ref, _, q2 = _old_pattern(emb, fg, lambda s: frags, 700)
    ref = torch.where(
        (ref > 0) & (q2 <= 0.9 * 0.9), torch.cat([comp.new_zeros(1), comp + 1])[ref], 0
    )
    labels, centers = threshold_cluster(
        emb, fg, delta_v=0.4, merge_radius=0.7, max_distance=0.9, max_points=700
    )
    assert torch.equal(labels, ref) and centers.shape == (int(comp.max()) + 1, 3)


def test_shared_pattern_edge_cases():
    emb, _ = _scene(0, h=8, w=8)
    none = torch.zeros(8, 8, dtype=torch.bool)
    for labels, centers in [
        kmeans_cluster(emb, none, k=2),
        meanshift_cluster(emb, none, bandwidth=1.0),
        threshold_cluster(emb, none, delta_v=0.5),
        hdbscan_cluster(emb, none),
    ]:
        assert labels.shape == (8, 8) and not labels.any() and centers.shape == (0, 3)
    one = none.clone()
    one[3, 4] = True  # HDBSCAN on one point: that point is the instance
    labels, centers = hdbscan_cluster(emb, one)
    assert labels.sum() == 1 and labels[3, 4] == 1 and torch.equal(centers, emb[:, 3, 4][None])
    with pytest.raises(ValueError, match=r"foreground must have shape \(8, 8\)"):
        kmeans_cluster(emb, torch.ones(8, 9, dtype=torch.bool), k=2)


# --------------------------------------------------------------------------- NMS
def _slow_nms(iou, scores, thresh, classes=None):
    """The textbook loop: take the best remaining, drop everything overlapping it."""
    remaining = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    keep = []
    while remaining:
        i = remaining.pop(0)
        keep.append(i)
        remaining = [
            j
            for j in remaining
            if not (float(iou[i, j]) > thresh and (classes is None or classes[i] == classes[j]))
        ]
    return keep


def _random_boxes(g, n, size=40):
    xy = torch.randint(0, size - 8, (n, 2), generator=g)
    wh = torch.randint(2, 14, (n, 2), generator=g)
    return torch.cat([xy, (xy + wh).clamp(max=size)], 1).float()


def _box_masks(boxes, size=40):
    m = torch.zeros(len(boxes), size, size, dtype=torch.bool)
    for k, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
        m[k, y1:y2, x1:x2] = True
    return m


def test_iou_and_greedy_nms_against_slow_loops():
    g = torch.Generator().manual_seed(5)
    for trial in range(6):
        n = 25
        boxes = _random_boxes(g, n)
        masks = _box_masks(boxes)
        scores = torch.randint(0, 6, (n,), generator=g).float() / 5  # with ties
        classes = torch.randint(0, 3, (n,), generator=g)
        mi = mask_iou(masks)
        m = masks.flatten(1).double()
        inter = m @ m.t()
        ref = inter / (m.sum(1)[:, None] + m.sum(1)[None] - inter)
        assert torch.allclose(mi, ref) and torch.allclose(box_iou(boxes), ref)  # boxes = masks
        assert torch.allclose(mask_iou(masks, chunk_elements=n * 37), mi)  # chunked the same
        for thresh in (0.0, 0.3, 0.5):
            cls = classes if trial % 2 else None
            kept = greedy_nms(mi, scores, thresh, cls)
            assert kept.tolist() == _slow_nms(mi, scores, thresh, cls)
    assert greedy_nms(torch.zeros(0, 0), torch.zeros(0), 0.5).shape == (0,)
    empty = torch.zeros(2, 5, 5, dtype=torch.bool)
    assert mask_iou(empty).tolist() == [[0.0, 0.0], [0.0, 0.0]]


# --------------------------------------------------------------------------- detections
def _three(classes=None, soft=False):
    """Boxes-as-masks: A (rows 0-9, cols 0-9, score 0.9) and B (rows 0-9, cols 0-5, 0.8) overlap
    with IoU 60 / 100 = 0.6; C (rows 20-24, cols 20-29, 0.6) is apart."""
    m = torch.zeros(3, 30, 32)
    m[0, 0:10, 0:10] = 1.0
    m[1, 0:10, 0:6] = 1.0
    m[2, 20:25, 20:30] = 1.0
    if soft:  # soft masks: 0.7 inside, 0.3 in a one-pixel rim around each box
        rim = torch.nn.functional.max_pool2d(m[None], 3, 1, 1)[0]
        m = 0.7 * m + 0.3 * (rim - m)
    else:
        m = m.bool()
    return Instances(masks=m, scores=torch.tensor([0.8, 0.9, 0.6])[[1, 0, 2]], classes=classes)


def test_detections_nms_on_the_hand_case():
    inst = _three()
    assert abs(float(mask_iou(inst.masks)[0, 1]) - 0.6) < 1e-12
    res = filter_detections(inst, score_thresh=0.5, nms_iou=0.5)
    assert res.scores.tolist() == pytest.approx([0.9, 0.6])  # B (0.8) suppressed by A
    assert torch.equal(res.masks, inst.masks[[0, 2]]) and res.masks.dtype == torch.bool
    assert res.boxes.tolist() == [[0, 0, 10, 10], [20, 20, 30, 25]]
    assert res.labels.max() == 2 and (res.labels == 1).sum() == 100
    res = filter_detections(inst, score_thresh=0.5, nms_iou=0.7)  # IoU 0.6 <= 0.7: both kept
    assert res.scores.tolist() == pytest.approx([0.9, 0.8, 0.6])
    assert res.masks[0].sum() == 100 and res.masks[1].sum() == 60  # overlapping masks kept
    assert (res.labels == 1).sum() == 100 and (res.labels == 2).sum() == 0  # A paints on top
    # the score threshold: C (0.6) goes at 0.7, B too (below 0.85)
    assert filter_detections(inst, score_thresh=0.7, nms_iou=0.7).scores.tolist() == pytest.approx(
        [0.9, 0.8]
    )
    assert filter_detections(inst, score_thresh=0.85).scores.tolist() == pytest.approx([0.9])
    # minimum size: B (60 pixels) and C (50) go at 61
    assert filter_detections(inst, nms_iou=0.9, min_size=61).scores.tolist() == pytest.approx([0.9])


def test_detections_per_class_nms_and_boxes_without_masks():
    res = filter_detections(_three(classes=torch.tensor([1, 2, 1])), nms_iou=0.5)
    assert res.scores.tolist() == pytest.approx([0.9, 0.8, 0.6])  # A and B differ in class
    assert res.classes.tolist() == [1, 2, 1]
    res = filter_detections(_three(classes=torch.tensor([1, 1, 2])), nms_iou=0.5)
    assert res.classes.tolist() == [1, 2]
    # no mask stack: NMS on the boxes (given ones), masks from the label image
    labels = torch.zeros(30, 32, dtype=torch.long)
    labels[0:10, 0:10] = 1
    labels[20:25, 20:30] = 2
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 6, 10], [20, 20, 30, 25]])
    inst = Instances(labels=labels, scores=torch.tensor([0.9, 0.8]), boxes=boxes[[0, 2]])
    res = filter_detections(inst, nms_iou=0.5)
    assert res.scores.tolist() == pytest.approx([0.9, 0.8]) and res.masks.shape == (2, 30, 32)
    three = Instances(
        labels=torch.zeros(30, 32, dtype=torch.long),
        scores=torch.tensor([0.9, 0.8, 0.6]),
        boxes=boxes,
    )  # labels say nothing, the boxes overlap with IoU 0.6
    assert filter_detections(three, nms_iou=0.5).boxes.tolist() == boxes[[0, 2]].tolist()
    assert len(filter_detections(three, nms_iou=0.7)) == 3


def test_detections_soft_masks_and_empty_input():
    soft = _three(soft=True)
    assert soft.masks.dtype == torch.float32
    res = filter_detections(soft, nms_iou=0.7)  # at 0.5 the rim (0.3) is out
    assert res.masks.dtype == torch.bool and res.masks.sum((1, 2)).tolist() == [100, 60, 50]
    res = filter_detections(
        soft, nms_iou=0.9, mask_thresh=0.2
    )  # rim in: 11x11, 11x7 (at the border), 7x12
    assert res.masks.sum((1, 2)).tolist() == [121, 77, 84]
    assert res.boxes.tolist()[2] == [19, 19, 31, 26]
    empty = Instances(
        masks=torch.zeros(0, 30, 32),
        scores=torch.zeros(0),
        classes=torch.zeros(0, dtype=torch.long),
    )
    for res in (filter_detections(empty), filter_steps(empty)):
        assert len(res) == 0 and res.masks.shape == (0, 30, 32) and res.boxes.shape == (0, 4)
        assert res.labels.shape == (30, 32) and not res.labels.any()
    none_left = filter_detections(_three(), score_thresh=0.95)
    assert len(none_left) == 0 and none_left.masks.shape == (0, 30, 32)
    numpy_in = filter_detections(_three().numpy(), nms_iou=0.5)  # numpy fields work too
    assert numpy_in.scores.tolist() == pytest.approx([0.9, 0.6])


# --------------------------------------------------------------------------- steps
def test_steps_stop_at_the_first_low_score():
    m = torch.zeros(4, 10, 10)
    for k in range(4):
        m[k, 2 * k : 2 * k + 2, :] = 0.4 + 0.2 * (k % 2)  # soft: 0.4, 0.6, 0.4, 0.6
    inst = Instances(masks=m, scores=torch.tensor([0.9, 0.6, 0.3, 0.95]))
    res = filter_steps(inst)  # step 3 (0.3) stops; step 4 (0.95) comes after it: dropped
    assert res.scores.tolist() == pytest.approx([0.9, 0.6])
    assert res.masks.dtype == torch.bool and res.masks.sum((1, 2)).tolist() == [0, 20]
    res = filter_steps(inst, stop_thresh=0.2, mask_thresh=0.3)  # in order, every step kept
    assert res.scores.tolist() == pytest.approx([0.9, 0.6, 0.3, 0.95])
    assert res.masks.sum((1, 2)).tolist() == [20, 20, 20, 20]
    assert res.labels[0, 0] == 1 and res.labels[7, 0] == 4
    assert res.boxes.tolist()[1] == [0, 2, 10, 4]
    assert len(filter_steps(inst, stop_thresh=0.95)) == 0


# --------------------------------------------------------------------------- through the engine
def test_instance_methods_through_cluster_embeddings_and_the_engine():
    from instembed.engine.build import cluster_outputs
    from instembed.engine.config import ClusterConfig

    first, second = _three(classes=torch.tensor([1, 2, 2])), _three()
    out = Outputs(instances=[first, second])
    res = cluster_embeddings(out, "detections", nms_iou=0.7, batch_index=1)
    assert res.scores.tolist() == pytest.approx([0.9, 0.8, 0.6]) and res.classes is None
    batch = cluster_batch(out, "detections", score_thresh=0.7)
    assert [len(r) for r in batch] == [2, 1]
    res = cluster_outputs(
        Outputs(instances=[second]),
        ClusterConfig("detections", {"score_thresh": 0.7, "nms_iou": 0.7}),
    )
    assert res.scores.tolist() == pytest.approx([0.9, 0.8]) and res.masks.dtype == torch.bool
    res = cluster_outputs(
        Outputs(instances=[second]), ClusterConfig("steps", {"stop_thresh": 0.85})
    )
    assert res.scores.tolist() == pytest.approx([0.9])
    with pytest.raises(ValueError, match="needs outputs.instances"):
        cluster_embeddings(torch.zeros(2, 5, 5), "detections")
    with pytest.raises(ValueError, match="min_siz"):
        cluster_embeddings(out, "detections", min_siz=3)
    with pytest.raises(ValueError, match="no foreground"):
        cluster_embeddings(out, "steps", torch.ones(30, 32, dtype=torch.bool))
    with pytest.raises(ValueError, match="out of range"):
        cluster_embeddings(out, "steps", batch_index=2)
    assert np.asarray(res.numpy().masks).dtype == bool

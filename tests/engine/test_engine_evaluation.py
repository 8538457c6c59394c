"""The one evaluation path (instembed.engine.evaluation): hand-computed cases."""

import numpy as np
import pytest
import torch

from instembed.data.sample import Sample
from instembed.engine.config import ClusterConfig
from instembed.engine.distributed import DistInfo
from instembed.engine.evaluation import Scorer, cluster_config_for, evaluate_outputs, score
from instembed.structures import Instances, Outputs

H, W = 4, 12


def _two_objects() -> np.ndarray:
    """GT label image: object 1 in columns 0-3, object 2 in columns 6-9 (16 pixels each)."""
    gt = np.zeros((H, W), np.int32)
    gt[:, 0:4] = 1
    gt[:, 6:10] = 2
    return gt


def _one_exact_one_half() -> Instances:
    """Prediction 1 = object 1; prediction 2 in columns 8-11: 8 pixels shared with object 2,
    IoU 8 / (16 + 16 - 8) = 1/3."""
    pred = np.zeros((H, W), np.int64)
    pred[:, 0:4] = 1
    pred[:, 8:12] = 2
    return Instances(labels=torch.from_numpy(pred), scores=torch.tensor([0.9, 0.8]))


def _sample(instances, **kw) -> Sample:
    return Sample(image=np.zeros((1, H, W), np.float32), instances=instances, **kw)


def test_label_image_one_exact_one_partial_match():
    m = score([_sample(_two_objects())], [_one_exact_one_half()])
    # at IoU 0.5: TP 1 (object 1), FP 1 (prediction 2), FN 1 (object 2)
    assert (m["TP@0.5"], m["FP@0.5"], m["FN@0.5"]) == (1.0, 1.0, 1.0)
    assert m["AP_dsb@0.5"] == pytest.approx(1 / 3)  # TP / (TP + FP + FN)
    assert m["n_gt"] == 2 and m["n_pred"] == 2 and m["n_images"] == 1
    assert all(isinstance(v, float) for v in m.values())
    # torch or numpy Instances: the same numbers
    assert score([_sample(_two_objects())], [_one_exact_one_half().numpy()]) == m


def test_ignore_pixels_are_excluded():
    ignore = np.zeros((H, W), bool)
    ignore[:, 6:8] = True  # left half of object 2
    ignore[:, 10:12] = True  # right half of prediction 2
    # what is left of object 2 and of prediction 2 is columns 8-9 for both: IoU 1
    m = score([_sample(_two_objects(), ignore=ignore)], [_one_exact_one_half()])
    assert (m["TP@0.5"], m["FP@0.5"], m["FN@0.5"]) == (2.0, 0.0, 0.0)
    assert m["AP_dsb@0.5"] == 1.0 and m["AP"] == pytest.approx(1.0)


def _overlapping_stack() -> np.ndarray:
    """Two masks: A in columns 0-5, B in columns 2-7 (they share columns 2-5)."""
    stack = np.zeros((2, H, W), bool)
    stack[0, :, 0:6] = True
    stack[1, :, 2:8] = True
    return stack


def test_mask_stacks_are_scored_as_stacks():
    gt = _overlapping_stack()
    exact = Instances(masks=torch.from_numpy(gt.copy()), scores=torch.tensor([0.9, 0.8]))
    m = score([_sample(gt)], [exact])
    assert (m["TP@0.5"], m["FP@0.5"], m["FN@0.5"]) == (2.0, 0.0, 0.0)
    assert m["AP"] == pytest.approx(1.0)
    # soft masks count where >= 0.5
    soft = Instances(masks=torch.from_numpy(np.where(gt, 0.9, 0.1).astype(np.float32)))
    assert score([_sample(gt)], [soft])["TP@0.5"] == 2.0
    # the same prediction as a label image only: the higher score (A) takes the shared columns,
    # so B keeps columns 6-7 (IoU 2/6 with its ground truth): 1 TP, 1 FN
    flat = Instances(labels=exact.labels, scores=exact.scores)
    m_flat = score([_sample(gt)], [flat])
    assert (m_flat["TP@0.5"], m_flat["FN@0.5"]) == (1.0, 1.0)


def test_classes_only_when_both_sides_give_them():
    gt = _two_objects()
    pred = torch.from_numpy(gt.astype(np.int64))
    swapped = Instances(labels=pred, classes=torch.tensor([2, 1]))  # each object, wrong class
    right = Instances(labels=pred, classes=torch.tensor([1, 2]))
    agnostic = Instances(labels=pred)
    with_classes = _sample(gt, classes=np.array([1, 2]))
    assert score([with_classes], [swapped])["TP@0.5"] == 0.0  # class-aware: no match
    assert score([with_classes], [right])["TP@0.5"] == 2.0
    assert score([with_classes], [agnostic])["TP@0.5"] == 2.0  # prediction without classes
    assert score([_sample(gt)], [swapped])["TP@0.5"] == 2.0  # ground truth without classes


def test_scores_rank_the_predictions_by_instance_id():
    gt = np.zeros((H, W), np.int32)
    gt[:, 0:4] = 1
    pred = np.zeros((H, W), np.int64)
    pred[:, 0:4] = 1  # the object
    pred[:, 8:12] = 3  # a false positive; id 2 has no pixel
    tp_first = Instances(labels=torch.from_numpy(pred), scores=torch.tensor([0.9, 0.5, 0.1]))
    fp_first = Instances(labels=torch.from_numpy(pred), scores=torch.tensor([0.1, 0.5, 0.9]))
    # COCO AP, one object: TP ranked first -> precision 1 at recall 1; FP first -> 1/2
    assert score([_sample(gt)], [tp_first])["AP"] == pytest.approx(1.0)
    assert score([_sample(gt)], [fp_first])["AP"] == pytest.approx(0.5)


def test_scorer_accumulates_and_checks_lengths():
    sc = Scorer()
    sc.add(_sample(_two_objects()), _one_exact_one_half())
    sc.add(_sample(_two_objects()), Instances(labels=torch.from_numpy(_two_objects())))
    assert len(sc) == 2
    m = sc.gather(DistInfo()).summary()  # one process: nothing to gather
    assert m["AP_dsb@0.5"] == pytest.approx((1 / 3 + 1.0) / 2)  # mean over images
    assert m["TP@0.5"] == 3.0
    with pytest.raises(ValueError, match="predictions for"):
        score([_sample(_two_objects())], [])
    with pytest.raises(ValueError):  # evaluator groups are checked
        score([_sample(_two_objects())], [_one_exact_one_half()], metrics=("nope",))


def test_evaluate_outputs_and_kmeans_k_rule():
    gt = _two_objects()
    emb = torch.zeros(2, H, W)
    emb[0][torch.from_numpy(gt == 2)] = 4.0
    out = Outputs(embedding=emb[None])
    sample = _sample(gt)
    cc = cluster_config_for(sample, ClusterConfig(method="kmeans"))
    assert cc.params["k"] == 2  # the true number of objects
    fixed = ClusterConfig(method="kmeans", params={"k": 3})
    assert cluster_config_for(sample, fixed) is fixed
    assert cluster_config_for(sample, ClusterConfig(method="meanshift")).params == {}
    with pytest.raises(ValueError, match="outputs for"):
        evaluate_outputs([out, out], [sample], cc)


def test_headline_numbers_by_hand():
    from instembed.engine.evaluation import headline

    gt1 = np.zeros((20, 20), np.int32)
    gt1[0:5, 0:5], gt1[10:15, 10:15] = 1, 2
    pred1 = np.zeros_like(gt1)
    pred1[0:5, 0:5], pred1[0:4, 14:18] = 1, 2  # one exact match, one false positive
    gt2 = np.zeros((20, 20), np.int32)
    gt2[5:9, 5:9] = 1
    pred2 = np.zeros_like(gt2)  # nothing found: one false negative
    h = headline(score([gt1, gt2], [pred1, pred2]), 2)
    # image 1: TP 1, FP 1, FN 1 -> 1/3; image 2: TP 0, FN 1 -> 0; mean 1/6
    assert h["AP_dsb@0.5"] == pytest.approx(1 / 6)
    assert (h["TP@0.5"], h["FP@0.5"], h["FN@0.5"]) == (1, 1, 2)
    assert (h["FP_per_image@0.5"], h["FN_per_image@0.5"]) == (0.5, 1.0)
    assert (h["n_gt"], h["n_pred"]) == (3, 2)
    with pytest.raises(ValueError, match="n_images must be >= 1"):
        headline({}, 0)


def test_per_image_scores_by_hand():
    from instembed.engine.evaluation import per_image

    gt1 = np.zeros((20, 20), np.int32)
    gt1[0:5, 0:5], gt1[10:15, 10:15] = 1, 2
    pred1 = np.zeros_like(gt1)
    pred1[0:5, 0:5] = 1  # one of two found: 1 / (1 + 0 + 1)
    gt2 = np.zeros((20, 20), np.int32)
    gt2[5:9, 5:9] = 1
    np.testing.assert_allclose(per_image([gt1, gt2], [pred1, gt2]), [0.5, 1.0])
    with pytest.raises(ValueError, match="2 samples"):
        per_image([gt1, gt2], [pred1])

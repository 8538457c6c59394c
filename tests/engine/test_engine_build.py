"""engine.build: the weighted multi-task loss (CompositeLoss) and ``foreground_classes`` in
``cluster_outputs``, against values computed by hand."""

import math

import pytest
import torch

from instembed.engine.build import CompositeLoss, build_loss_from_config, cluster_outputs
from instembed.engine.config import ClusterConfig, LossConfig
from instembed.losses import build_loss
from instembed.structures import Outputs

# ------------------------------------------------------------------------------ CompositeLoss
# A 1 x 4 image, 1-D embedding [0, 2, 2.5, 7], labels [1, 1, 2, 0]:
# discriminative (delta_v 0.5, delta_d 1, alpha = beta = 1, gamma = 0.001), by hand:
#   instance 1 = {0, 2}, mean 1, both pixels 1 from it: (1 - 0.5)^2 = 0.25 each -> var_1 = 0.25;
#   instance 2 = {2.5}: var_2 = 0 -> L_var = 0.125. Means 1 and 2.5 are 1.5 apart, 2 delta_d = 2:
#   (2 - 1.5)^2 = 0.25 for each of the 2 ordered pairs / (C (C - 1) = 2) -> L_dist = 0.25.
#   L_reg = (1 + 2.5) / 2 = 1.75. Total = 0.125 + 0.25 + 0.001 * 1.75 = 0.37675.
# semantic_ce, no semantic target in the batch -> target = labels > 0 = [1, 1, 1, 0]; logits
#   (0, ln 3) at every pixel: p(class 1) = 3/4, so CE = ln(4/3) on the 3 foreground pixels and
#   ln 4 on the background one; mean = (3 ln(4/3) + ln 4) / 4.
DISC = 0.125 + 0.25 + 0.001 * 1.75
CE = (3 * math.log(4 / 3) + math.log(4)) / 4
DISC_PARAMS = {"delta_v": 0.5, "delta_d": 1.0}


def _loss_case():
    emb = torch.tensor([[[[0.0, 2.0, 2.5, 7.0]]]], dtype=torch.float64, requires_grad=True)
    sem = torch.zeros(1, 2, 1, 4, dtype=torch.float64)
    sem[:, 1] = math.log(3)
    sem.requires_grad_(True)
    batch = {"labels": torch.tensor([[[1, 1, 2, 0]]])}
    return Outputs(embedding=emb, semantic=sem), batch


def test_composite_loss_is_the_weighted_sum_with_named_terms():
    outputs, batch = _loss_case()
    loss = CompositeLoss(
        [
            ("disc", 2.0, build_loss("discriminative", **DISC_PARAMS)),
            ("ce", 0.5, build_loss("semantic_ce")),
        ]
    )
    total, terms = loss(outputs, batch)
    assert total.item() == pytest.approx(2.0 * DISC + 0.5 * CE, rel=1e-12)
    # each loss's own (unweighted) total under its name, its terms under "<name>/<term>"
    assert set(terms) == {"disc", "disc/var", "disc/dist", "disc/reg", "ce", "ce/semantic"}
    assert terms["disc"].item() == pytest.approx(DISC, rel=1e-12)
    assert terms["disc/var"].item() == pytest.approx(0.125, rel=1e-12)
    assert terms["disc/dist"].item() == pytest.approx(0.25, rel=1e-12)
    assert terms["disc/reg"].item() == pytest.approx(1.75, rel=1e-12)
    assert terms["ce"].item() == pytest.approx(CE, rel=1e-12)
    assert terms["ce/semantic"].item() == pytest.approx(CE, rel=1e-12)
    # the weights reach the gradients: d total / d semantic logits = 0.5 * d CE / d logits;
    # for pixel 4 (target 0, softmax (1/4, 3/4)): d CE_4 / d logits = (1/4 - 1, 3/4) / 4 pixels
    total.backward()
    g = outputs.semantic.grad[0, :, 0, 3]
    assert g.tolist() == pytest.approx([0.5 * (0.25 - 1) / 4, 0.5 * 0.75 / 4], rel=1e-12)


def test_loss_config_extra_builds_the_composite():
    outputs, batch = _loss_case()
    lc = LossConfig(
        name="discriminative",
        params=dict(DISC_PARAMS),
        extra=[{"name": "semantic_ce", "weight": 0.25}],
    )
    loss = build_loss_from_config(lc)
    assert isinstance(loss, CompositeLoss)
    total, terms = loss(outputs, batch)
    assert total.item() == pytest.approx(DISC + 0.25 * CE, rel=1e-12)  # main loss weight 1
    assert set(terms) == {
        "discriminative",
        "discriminative/var",
        "discriminative/dist",
        "discriminative/reg",
        "semantic_ce",
        "semantic_ce/semantic",
    }
    with pytest.raises(ValueError, match=r"loss.extra\[0\]"):
        build_loss_from_config(LossConfig(extra=[{"weight": 1.0}]))


# ------------------------------------------------------------------------ foreground_classes
def _semantic_scene():
    """12 x 14 image; semantic argmax: class 2 on objects A and B, class 1 on region C, class 0
    elsewhere. Embeddings (2-D, constant per region): A (0, 0), B (5, 0), C (0, 5), the rest
    (5, 5) -- four well separated clusters if every pixel were clustered."""
    h, w = 12, 14
    region = torch.zeros(h, w, dtype=torch.long)  # 0 rest, 1 A, 2 B, 3 C
    region[1:5, 1:5] = 1
    region[7:11, 2:6] = 2
    region[2:9, 8:12] = 3
    cls = torch.tensor([0, 2, 2, 1])[region]
    logits = torch.nn.functional.one_hot(cls, 3).permute(2, 0, 1).float() * 4.0 - 2.0
    emb_of = torch.tensor([[5.0, 5.0], [0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    emb = emb_of[region].permute(2, 0, 1)
    return Outputs(embedding=emb[None], semantic=logits[None]), region


def test_foreground_classes_keep_exactly_the_objects_of_those_classes():
    outputs, region = _semantic_scene()
    res = cluster_outputs(outputs, ClusterConfig("threshold", {"delta_v": 0.5}))
    assert int(res.labels.max()) == 4  # control: without the option every region is clustered

    res = cluster_outputs(
        outputs, ClusterConfig("threshold", {"delta_v": 0.5, "foreground_classes": [2]})
    )
    labels = res.labels
    assert labels.shape == region.shape
    assert (labels[(region == 0) | (region == 3)] == 0).all()  # class 0 and class 1: background
    ids = []
    for r in (1, 2):  # A and B: one instance each, exactly their pixels
        (i,) = torch.unique(labels[region == r]).tolist()
        assert i > 0 and torch.equal(labels == i, region == r)
        ids.append(i)
    assert sorted(ids) == [1, 2] and int(labels.max()) == 2

    res = cluster_outputs(
        outputs, ClusterConfig("threshold", {"delta_v": 0.5, "foreground_classes": [1, 2]})
    )
    assert int(res.labels.max()) == 3  # A, B and now C
    assert (res.labels[region == 0] == 0).all()
    for r in (1, 2, 3):
        (i,) = torch.unique(res.labels[region == r]).tolist()
        assert i > 0 and torch.equal(res.labels == i, region == r)


def test_foreground_classes_need_a_semantic_head():
    outputs, _ = _semantic_scene()
    no_sem = Outputs(embedding=outputs.embedding)
    with pytest.raises(ValueError, match="foreground_classes needs a model with a semantic head"):
        cluster_outputs(
            no_sem, ClusterConfig("threshold", {"delta_v": 0.5, "foreground_classes": [2]})
        )

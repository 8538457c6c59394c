"""Post-processing: relabel, minimum size, hole filling, scores."""

import torch

from instembed.cluster import (
    fill_holes,
    instance_scores,
    relabel_sequential,
    remove_small_instances,
)


def test_relabel_and_remove_small():
    lab = torch.tensor([[0, 7, 7, 3], [0, 7, 9, 3]])
    new, old = relabel_sequential(lab)
    assert new.tolist() == [[0, 2, 2, 1], [0, 2, 3, 1]] and old.tolist() == [3, 7, 9]
    # sizes: 7 -> 3 pixels, 3 -> 2, 9 -> 1
    assert remove_small_instances(lab, 2).tolist() == [[0, 7, 7, 3], [0, 7, 0, 3]]


def test_fill_holes_by_hand():
    lab = torch.zeros(7, 9, dtype=torch.long)
    lab[1:6, 1:6] = 1
    lab[3, 3] = 0  # hole inside instance 1 -> filled
    lab[1:4, 6:9] = 2
    lab[2, 8] = 0  # notch touching the border -> stays background
    lab[5, 6] = 2  # background pixel (4, 6) and (5, 7)... are open to the border
    out = fill_holes(lab)
    assert out[3, 3] == 1 and out[2, 8] == 0
    assert (out[lab > 0] == lab[lab > 0]).all()
    # a hole enclosed by two instances is not filled
    two = torch.tensor([[1, 1, 2], [1, 0, 2], [1, 2, 2]])
    assert fill_holes(two)[1, 1] == 0


def test_scores_modes():
    lab = torch.tensor([[1, 1, 2, 0]])
    prob = torch.tensor([[0.8, 0.6, 0.5, 0.1]])
    seed = torch.tensor([0.9, 0.4])
    assert torch.allclose(instance_scores(lab, 2, mode="seed", seed_scores=seed), seed)
    fg = instance_scores(lab, 2, mode="foreground", foreground_prob=prob)
    assert torch.allclose(fg, torch.tensor([0.7, 0.5]))
    prod = instance_scores(lab, 2, mode="product", seed_scores=seed, foreground_prob=prob)
    assert torch.allclose(prod, torch.tensor([0.63, 0.2]))
    assert torch.equal(instance_scores(lab, 2, mode="constant"), torch.ones(2))

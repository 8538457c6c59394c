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


def test_piece_ids_and_main_pieces_by_hand():
    from instembed.cluster.postprocess import main_pieces, piece_ids

    # label 1: a 2-pixel piece at the top left and a 3-pixel piece whose pixels (1, 3) and
    # (2, 2) touch only diagonally (one piece under 8-connectivity); label 2: one L-shaped piece
    lab = torch.tensor([[1, 1, 0, 1], [0, 0, 0, 1], [2, 0, 1, 0], [2, 2, 0, 0]])
    # ids: raster index + 1 of each piece's first pixel: (0, 0) -> 1, (0, 3) -> 4, (2, 0) -> 9
    assert piece_ids(lab).tolist() == [[1, 1, 0, 4], [0, 0, 0, 4], [9, 0, 4, 0], [9, 9, 0, 0]]
    # label 1 keeps its 3-pixel piece; label 2 is one piece and stays; ids are kept
    assert main_pieces(lab).tolist() == [[0, 0, 0, 1], [0, 0, 0, 1], [2, 0, 1, 0], [2, 2, 0, 0]]
    scripted = torch.jit.script(main_pieces)
    assert torch.equal(scripted(lab), main_pieces(lab))


def test_main_pieces_crossing_ties_and_empty():
    from instembed.cluster.postprocess import main_pieces

    # a worm (1) crossed by another (2): its two halves touch only label-2 pixels, but they are
    # one piece of foreground, so both stay; the stray 1 at the right end is cut off by background
    cross = torch.tensor([[0, 2, 0, 0, 0], [1, 2, 1, 0, 1], [0, 2, 0, 0, 0]])
    assert main_pieces(cross).tolist() == [[0, 2, 0, 0, 0], [1, 2, 1, 0, 0], [0, 2, 0, 0, 0]]
    # two 2-pixel pieces of label 3 in separate foreground pieces: the first in raster order stays
    tie = torch.tensor([[0, 0, 3, 3], [0, 0, 0, 0], [3, 3, 0, 0]])
    assert main_pieces(tie).tolist() == [[0, 0, 3, 3], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert main_pieces(torch.zeros(3, 4, dtype=torch.long)).tolist() == [[0] * 4] * 3
    assert main_pieces(torch.zeros(0, 4, dtype=torch.long)).shape == (0, 4)
    assert main_pieces(cross.to(torch.int32)).dtype == torch.int32  # int32 in, int32 out


def test_main_pieces_against_scipy_labelling():
    """Independent reference: scipy.ndimage.label (8-connectivity) of the foreground; each label
    keeps its pixels in the component holding most of them (ties: the lower scipy number, i.e.
    the component whose first pixel comes first in raster order)."""
    import numpy as np
    from scipy import ndimage

    from instembed.cluster.postprocess import main_pieces

    rng = np.random.default_rng(0)
    for trial in range(20):
        h, w = rng.integers(1, 30, size=2)
        lab = rng.integers(0, 4, size=(h, w)) * (rng.random((h, w)) < 0.5)
        comp, n = ndimage.label(lab > 0, structure=np.ones((3, 3)))
        ref = np.zeros_like(lab)
        for k in range(1, 4):
            if (lab == k).any():
                share = np.bincount(comp[lab == k], minlength=n + 1)
                ref[(lab == k) & (comp == int(np.argmax(share)))] = k
        got = main_pieces(torch.from_numpy(lab)).numpy()
        assert np.array_equal(got, ref), trial

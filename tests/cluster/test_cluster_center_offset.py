"""Center + offset grouping (Panoptic-DeepLab)."""

import torch

from instembed.cluster import center_offset_cluster, find_instance_centers, group_pixels


def test_find_centers_by_hand():
    heat = torch.zeros(9, 9)
    heat[1, 1] = 0.9  # peak
    heat[1, 2] = 0.8  # neighbour of a higher value: suppressed by the 3x3 max-pool
    heat[5, 5] = 0.5  # peak
    heat[8, 0] = 0.3  # peak
    heat[7, 7] = 0.05  # below threshold 0.1
    cen, sc = find_instance_centers(heat, threshold=0.1, nms_kernel=3, top_k=0)
    assert cen.tolist() == [[1, 1], [5, 5], [8, 0]]
    assert torch.allclose(sc, torch.tensor([0.9, 0.5, 0.3]))
    # top-k keeps exactly k (detectron2's "> k-th score" keeps k - 1)
    cen, _ = find_instance_centers(heat, threshold=0.1, nms_kernel=3, top_k=2)
    assert cen.tolist() == [[1, 1], [5, 5]]
    # kernel 11 (reach 5 in Chebyshev distance): (5, 5) is 4 from (1, 1) (0.9 > 0.5) and (8, 0)
    # is 5 from (5, 5) (0.5 > 0.3): both suppressed
    cen, _ = find_instance_centers(heat, threshold=0.1, nms_kernel=11, top_k=0)
    assert cen.tolist() == [[1, 1]]


def test_group_pixels_equals_dense_argmin():
    g = torch.Generator().manual_seed(0)
    h, w, k = 45, 61, 12
    centers = torch.stack(
        [torch.randint(0, h, (k,), generator=g), torch.randint(0, w, (k,), generator=g)], 1
    )
    offset = 6 * torch.randn(2, h, w, generator=g)
    thing = torch.rand(h, w, generator=g) > 0.3
    labels = group_pixels(centers, offset, thing)
    # dense reference: (K, H, W) distance table
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    py, px = yy + offset[0], xx + offset[1]
    d2 = (py[None] - centers[:, 0, None, None]) ** 2 + (px[None] - centers[:, 1, None, None]) ** 2
    ref = torch.where(thing, d2.argmin(0) + 1, 0)
    assert torch.equal(labels, ref)


def test_perfect_offsets_recover_instances_and_script():
    h, w = 32, 48
    truth = torch.zeros(h, w, dtype=torch.long)
    truth[2:14, 3:20] = 1
    truth[16:30, 5:40] = 2
    truth[3:12, 25:45] = 3
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    offset = torch.zeros(2, h, w)
    heat = torch.zeros(h, w)
    for i in (1, 2, 3):
        m = truth == i
        cy, cx = yy[m].mean().round(), xx[m].mean().round()
        offset[0][m] = cy - yy[m]
        offset[1][m] = cx - xx[m]
        heat[int(cy), int(cx)] = 1.0
    scripted = torch.jit.script(center_offset_cluster)
    labels, scores, centers = scripted(heat[None], offset, truth > 0, 0.1, 7, 200, 4)
    assert centers.shape == (3, 2) and torch.allclose(scores, torch.ones(3))
    # same partition as the truth
    pairs = torch.unique(torch.stack([truth.flatten(), labels.flatten()]), dim=1)
    assert pairs.shape[1] == 4


def test_no_centers():
    labels, scores, centers = center_offset_cluster(torch.zeros(8, 8), torch.zeros(2, 8, 8))
    assert (labels == 0).all() and scores.numel() == 0 and centers.shape == (0, 2)

"""Threshold clustering (De Brabandere et al.) on constructed embeddings."""

import torch
from sklearn.metrics import adjusted_rand_score

from instembed.cluster import cluster_embeddings, threshold_cluster, threshold_modes


def stripes(h, w, centers, noise=0.0, seed=0):
    """Vertical stripes, stripe i has embedding centers[i] (+ Gaussian noise)."""
    k, d = centers.shape
    truth = (torch.arange(w) * k // w).expand(h, w)
    emb = centers[truth].permute(2, 0, 1).clone()
    if noise:
        emb += noise * torch.randn(d, h, w, generator=torch.Generator().manual_seed(seed))
    return emb, truth + 1


def test_separated_clusters_recovered_exactly():
    centers = torch.tensor([[0.0, 0, 0], [3, 0, 0], [0, 3, 0], [0, 0, 3]])
    emb, truth = stripes(20, 40, centers, noise=0.05)
    labels, cen = threshold_cluster(emb, delta_v=0.5)
    assert cen.shape[0] == 4
    assert adjusted_rand_score(truth.flatten(), labels.flatten()) == 1.0


def test_two_clusters_just_inside_and_outside_delta_v():
    # points exactly at a and at b = a + (d, 0); the first ball (around a) holds b iff d < delta_v,
    # then the mean is the midpoint whose ball holds both -> one cluster; else two clusters
    dv = 1.0
    for d, expected in ((0.99, 1), (1.01, 2)):
        emb, _ = stripes(4, 8, torch.tensor([[0.0, 0.0], [d, 0.0]]))
        labels, _ = threshold_cluster(emb, delta_v=dv)
        assert int(labels.max()) == expected


def test_single_cluster_no_foreground_and_one_pixel():
    emb = torch.randn(3, 10, 10) * 0.01
    labels, _ = threshold_cluster(emb, delta_v=0.5)
    assert (labels == 1).all()
    none = torch.zeros(10, 10, dtype=torch.bool)
    res = cluster_embeddings(emb, "threshold", none, delta_v=0.5)
    assert res.num_instances == 0 and (res.labels == 0).all() and res.scores.shape == (0,)
    one = none.clone()
    one[3, 4] = True
    res = cluster_embeddings(emb, "threshold", one, delta_v=0.5)
    assert res.num_instances == 1 and res.labels[3, 4] == 1 and res.labels.sum() == 1


def test_translation_invariance():
    centers = torch.randn(6, 5, generator=torch.Generator().manual_seed(1)) * 4
    emb, truth = stripes(16, 48, centers, noise=0.1)
    a, _ = threshold_cluster(emb, delta_v=0.6)
    b, _ = threshold_cluster(emb + torch.tensor([100.0, -50, 3, 7, 0]).view(5, 1, 1), delta_v=0.6)
    assert torch.equal(a, b)


def test_sequential_procedure_by_hand():
    # points 0, 0.4, 0.8 and 5 on a line, delta_v = 0.5: from 0 the ball holds {0, 0.4}, mean 0.2,
    # ball around 0.2 holds {0, 0.4}: cluster A = {0, 0.4}; next seed 0.8: ball {0.4, 0.8} (all
    # points take part in re-centring), mean 0.6 -> ball {0.4, 0.8} stable; unassigned members {0.8}
    # -> cluster B = {0.8}; then C = {5}
    pts = torch.tensor([[0.0], [0.4], [0.8], [5.0]])
    labels, centers = threshold_modes(pts, 0.5)
    assert labels.tolist() == [0, 0, 1, 2]
    assert torch.allclose(centers.squeeze(1), torch.tensor([0.2, 0.8, 5.0]))


def test_merge_radius_fixes_fragmentation_of_wide_clusters():
    # clusters uniform in a ball of radius 1.5 * delta_v: after the first ball around the centre,
    # the rim points (80 % of the volume in 4-D) start many small clusters without merging
    g = torch.Generator().manual_seed(0)
    k, d, h, w = 4, 4, 10, 40
    centers = torch.randn(k, d, generator=g) * 8
    truth = (torch.arange(w) * k // w).expand(h, w)
    direction = torch.randn(d, h, w, generator=g)
    direction /= direction.norm(dim=0, keepdim=True)
    radius = 1.5 * torch.rand(1, h, w, generator=g) ** (1 / d)
    emb = centers[truth].permute(2, 0, 1) + direction * radius
    plain, _ = threshold_cluster(emb, delta_v=1.0)
    merged, _ = threshold_cluster(emb, delta_v=1.0, merge_radius=2.0)
    assert int(plain.max()) > k
    assert int(merged.max()) == k
    assert adjusted_rand_score(truth.flatten(), merged.flatten()) == 1.0


def test_grid_sample_path_on_large_map():
    centers = torch.randn(8, 4, generator=torch.Generator().manual_seed(2)) * 5
    emb, truth = stripes(200, 320, centers, noise=0.05)
    labels, _ = threshold_cluster(emb, delta_v=0.5, max_points=500)  # grid step 12
    assert adjusted_rand_score(truth.flatten(), labels.flatten()) == 1.0

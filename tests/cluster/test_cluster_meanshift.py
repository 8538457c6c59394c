"""Mean-shift against scikit-learn's MeanShift."""

import numpy as np
import pytest
import torch
from sklearn.cluster import MeanShift, get_bin_seeds
from sklearn.metrics import adjusted_rand_score

from instembed.cluster import bin_seeds, mean_shift, meanshift_cluster


def blobs(n_per, centers, spread, seed):
    rng = np.random.default_rng(seed)
    pts = np.concatenate([c + spread * rng.standard_normal((n_per, len(c))) for c in centers])
    truth = np.repeat(np.arange(len(centers)), n_per)
    return pts, truth


@pytest.mark.parametrize("bin_seeding", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_sklearn_meanshift(bin_seeding, seed):
    rng = np.random.default_rng(100 + seed)
    centers = rng.uniform(-6, 6, size=(5, 3))
    pts, _ = blobs(60, centers, 0.7, seed)  # overlapping-ish blobs: modes are not trivial
    bw = 1.5
    ref = MeanShift(bandwidth=bw, bin_seeding=bin_seeding).fit(pts)
    labels, cen = mean_shift(torch.as_tensor(pts), bw, seeding="bin" if bin_seeding else "all")
    assert cen.shape[0] == ref.cluster_centers_.shape[0]
    assert adjusted_rand_score(ref.labels_, labels.numpy()) >= 0.999
    assert np.allclose(np.sort(cen.numpy(), 0), np.sort(ref.cluster_centers_, 0), atol=1e-2)


def test_cluster_all_false_equals_sklearn():
    pts, _ = blobs(40, np.array([[0.0, 0.0], [5.0, 0.0]]), 0.3, 3)
    pts = np.concatenate([pts, [[20.0, 20.0]]])  # an outlier far from both modes, its own bin
    ref = MeanShift(bandwidth=1.0, bin_seeding=True, min_bin_freq=2, cluster_all=False).fit(pts)
    labels, _ = mean_shift(torch.as_tensor(pts), 1.0, min_bin_freq=2, cluster_all=False)
    assert labels[-1] == -1 and ref.labels_[-1] == -1
    assert adjusted_rand_score(ref.labels_, labels.numpy()) == 1.0


def test_bin_seeds_equal_sklearn():
    pts, _ = blobs(50, np.array([[0.0, 0.0], [3.0, 1.0]]), 0.8, 4)
    ref = get_bin_seeds(pts, 0.5, min_bin_freq=3)
    ours = bin_seeds(torch.as_tensor(pts), 0.5, min_bin_freq=3).numpy()
    as_set = lambda a: {tuple(np.round(r, 5)) for r in a}  # noqa: E731
    assert as_set(ours) == as_set(ref)


def test_two_clusters_just_inside_and_outside_bandwidth():
    # points at 0 and d: a seed at 0 reaches d iff d <= bandwidth, its mean is then the midpoint,
    # which reaches both -> one cluster; else two modes more than a bandwidth apart stay
    for d, expected in ((0.99, 1), (1.01, 2)):
        pts = torch.tensor([[0.0, 0.0]] * 5 + [[d, 0.0]] * 5)
        _, cen = mean_shift(pts, 1.0, seeding="all")
        assert cen.shape[0] == expected


def test_gaussian_kernel_and_image_translation_invariance():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 3, generator=g) * 6
    truth = (torch.arange(32) * 4 // 32).expand(16, 32)
    emb = centers[truth].permute(2, 0, 1) + 0.1 * torch.randn(3, 16, 32, generator=g)
    for kernel in ("flat", "gaussian"):
        a, _ = meanshift_cluster(emb, bandwidth=1.0, kernel=kernel)
        b, _ = meanshift_cluster(emb + 50.0, bandwidth=1.0, kernel=kernel)
        assert adjusted_rand_score(truth.flatten(), a.flatten()) == 1.0
        assert torch.equal(a, b)

"""cluster_embeddings: method names, inputs, baselines against scikit-learn, batch, per class."""

import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from instembed.cluster import METHODS, cluster_batch, cluster_embeddings, cluster_per_class
from instembed.structures import Outputs


def scene(seed=0, h=24, w=48, k=4, d=4, noise=0.1):
    g = torch.Generator().manual_seed(seed)
    truth = (torch.arange(w) * k // w).expand(h, w)
    centers = torch.randn(k, d, generator=g) * 5
    emb = centers[truth].permute(2, 0, 1) + noise * torch.randn(d, h, w, generator=g)
    return emb, truth + 1


def test_unknown_method_and_parameter_errors():
    emb, _ = scene()
    with pytest.raises(ValueError) as e:
        cluster_embeddings(emb, "dbscan")
    for name in METHODS:
        assert name in str(e.value)
    with pytest.raises(ValueError, match="bandwith"):
        cluster_embeddings(emb, "meanshift", bandwith=1.0)
    with pytest.raises(ValueError, match="outputs.center"):
        cluster_embeddings(Outputs(embedding=emb[None]), "center_offset")


def test_every_embedding_method_recovers_separated_clusters():
    emb, truth = scene()
    params = {
        "meanshift": dict(bandwidth=1.0),
        "threshold": dict(delta_v=0.5),
        "kmeans": dict(k=4),
        "hdbscan": dict(min_cluster_size=20),
    }
    for method, p in params.items():
        res = cluster_embeddings(emb, method, **p)
        assert res.num_instances == 4, method
        assert adjusted_rand_score(truth.flatten(), res.labels.flatten()) == 1.0, method
        assert res.scores.shape == (4,)


def test_kmeans_equals_sklearn_on_overlapping_points():
    emb, _ = scene(seed=3, noise=2.0)
    ours = cluster_embeddings(emb, "kmeans", k=4, n_init=8).labels.flatten()
    ref = KMeans(4, n_init=8, random_state=0).fit_predict(emb.reshape(4, -1).t().double().numpy())
    assert adjusted_rand_score(ref, ours.numpy()) >= 0.95


def test_outputs_fields_foreground_classes_and_batch():
    emb, truth = scene()
    emb2, truth2 = scene(seed=1)
    fg = torch.ones(24, 48, dtype=torch.bool)
    fg[:, :6] = False
    seed = torch.stack([fg.float(), torch.ones(24, 48)])[:, None] * 0.9
    semantic = torch.zeros(2, 3, 24, 48)
    semantic[:, 2] = 1.0  # class 2 everywhere
    out = Outputs(embedding=torch.stack([emb, emb2]), seed=seed, semantic=semantic)
    res = cluster_embeddings(out, "threshold", delta_v=0.5)  # foreground from seed > 0.5
    assert (res.labels[:, :6] == 0).all() and res.num_instances == 4
    assert res.classes.tolist() == [2, 2, 2, 2]
    assert torch.allclose(res.scores, torch.full((4,), 0.9))  # mean foreground probability
    batch = cluster_batch(out, "threshold", delta_v=0.5)
    for i in range(2):
        single = cluster_embeddings(out.index(i), "threshold", delta_v=0.5)
        assert torch.equal(batch[i].labels, single.labels)
    plain = cluster_batch(torch.stack([emb, emb2]), "kmeans", k=4)
    assert adjusted_rand_score(truth2.flatten(), plain[1].labels.flatten()) == 1.0


def test_per_class_clustering():
    emb, truth = scene()
    semantic = torch.where(truth <= 2, 1, 2)
    res = cluster_per_class(
        Outputs(embedding=emb[None]), "threshold", [1, 2], semantic, delta_v=0.5
    )
    assert res.num_instances == 4 and res.classes.tolist() == [1, 1, 2, 2]
    assert adjusted_rand_score(truth.flatten(), res.labels.flatten()) == 1.0
    # per-class embeddings: class 2 uses its own (all-identical) embedding -> one instance
    ce = torch.stack([emb, emb, torch.zeros_like(emb)])[None]
    res = cluster_per_class(Outputs(class_embedding=ce), "threshold", [1, 2], semantic, delta_v=0.5)
    assert res.num_instances == 3 and res.classes.tolist() == [1, 1, 2]

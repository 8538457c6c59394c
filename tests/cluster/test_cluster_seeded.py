"""Seeded clustering (Neven et al. 2019; Novotny Laplacian kernel) against a slow reference."""

import math

import torch
from sklearn.metrics import adjusted_rand_score

from instembed.cluster import cluster_batch, cluster_embeddings, seeded_cluster
from instembed.structures import Outputs


def slow_seeded(emb, seed, scale, fg, seed_thresh, min_size, q2_max, new_fraction=0.5):
    """Reference: Neven's loop over pixels written plainly, then each pixel to the accepted
    instance with the smallest scaled distance below the threshold."""
    e = emb.shape[0]
    pix = [tuple(p) for p in fg.nonzero().tolist()]
    unclustered = set(pix)
    accepted = []
    while len(unclustered) > min_size:
        best = max(unclustered, key=lambda p: (float(seed[p]), -pix.index(p)))
        if float(seed[best]) < seed_thresh:
            break
        c, s = emb[:, best[0], best[1]], scale[:, best[0], best[1]]
        prop = {p for p in pix if float((s * (emb[:, p[0], p[1]] - c) ** 2).sum()) < q2_max}
        if len(prop) > min_size and len(prop & unclustered) > new_fraction * len(prop):
            accepted.append((c, s, float(seed[best])))
        unclustered.discard(best)
        unclustered -= prop
    labels = torch.zeros(fg.shape, dtype=torch.long)
    for p in pix:
        d = [float((s * (emb[:, p[0], p[1]] - c) ** 2).sum()) for c, s, _ in accepted]
        if d and min(d) < q2_max:
            labels[p] = min(range(len(d)), key=lambda k: (d[k], k)) + 1
    del e
    return labels, [a[2] for a in accepted]


def random_scene(seed, h=24, w=30):
    g = torch.Generator().manual_seed(seed)
    k = 4
    truth = (torch.arange(w) * k // w).expand(h, w)
    centers = torch.randn(k, 2, generator=g) * 2.5
    emb = centers[truth].permute(2, 0, 1) + 0.4 * torch.randn(2, h, w, generator=g)
    seed_map = torch.rand(h, w, generator=g)
    sigma = 0.5 + 0.3 * torch.rand(1, h, w, generator=g)  # std
    return emb, seed_map, sigma, truth + 1


def test_matches_slow_reference():
    for s in range(3):
        emb, seed_map, sigma, _ = random_scene(s)
        fg = seed_map > 0.3
        labels, scores, _ = seeded_cluster(
            emb, seed_map, sigma, fg, seed_thresh=0.6, min_size=10, sigma_mode="std"
        )
        scale = 0.5 / sigma**2
        ref, ref_scores = slow_seeded(emb, seed_map, scale, fg, 0.6, 10, math.log(2))
        assert torch.equal(labels, ref)
        assert torch.allclose(scores, torch.tensor(ref_scores))

    # one sigma per embedding dimension (the per-dimension seed loop and scaled certificate)
    g = torch.Generator().manual_seed(11)
    for s in range(2):
        emb, seed_map, _, _ = random_scene(10 + s, 32, 36)
        sigma = 0.4 + 0.5 * torch.rand(2, 32, 36, generator=g)
        fg = seed_map > 0.3
        labels, scores, _ = seeded_cluster(
            emb, seed_map, sigma, fg, seed_thresh=0.6, min_size=10, sigma_mode="std"
        )
        ref, ref_scores = slow_seeded(emb, seed_map, 0.5 / sigma**2, fg, 0.6, 10, math.log(2))
        assert torch.equal(labels, ref)
        assert torch.allclose(scores, torch.tensor(ref_scores))


def test_separated_instances_and_seed_scores():
    # four stripes with tight embeddings; the seed map peaks at one known pixel per stripe, so the
    # instance scores are exactly those peak values, in decreasing order
    h, w, k = 10, 40, 4
    truth = (torch.arange(w) * k // w).expand(h, w)
    centers = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [5.0, 5.0]])
    emb = centers[truth].permute(2, 0, 1).clone()
    seed = torch.full((h, w), 0.95)
    peaks = [0.99, 0.98, 0.97, 0.96]
    for i, p in enumerate(peaks):
        seed[5, 10 * i + 5] = p
    res = cluster_embeddings(
        Outputs(embedding=emb[None], seed=seed[None, None], sigma=torch.zeros(1, 1, h, w)),
        "seeded",
        min_size=5,
    )
    assert res.num_instances == 4
    assert adjusted_rand_score(truth.flatten(), res.labels.flatten()) == 1.0
    assert torch.allclose(res.scores, torch.tensor(peaks))


def test_kernel_threshold_just_inside_and_outside():
    # two tight groups d apart, sigma std 1: Gaussian exp(-d^2 / 2) > 0.5 iff d < sqrt(2 ln 2);
    # Laplacian exp(-d) > 0.5 iff d < ln 2. Inside: the first seed's proposal takes both groups.
    for kernel, d_star in (("gaussian", math.sqrt(2 * math.log(2))), ("laplacian", math.log(2))):
        for d, expected in ((0.99 * d_star, 1), (1.01 * d_star, 2)):
            emb = torch.zeros(2, 4, 8)
            emb[0, :, 4:] = d
            seed = torch.full((4, 8), 0.95)
            seed[0, 0] = 0.99
            labels, _, _ = seeded_cluster(
                emb, seed, torch.ones(1, 4, 8), min_size=2, kernel=kernel, sigma_mode="std"
            )
            assert int(labels.max()) == expected, (kernel, d)


def test_no_foreground_low_seeds_and_one_pixel():
    emb = torch.zeros(2, 6, 6)
    sigma = torch.zeros(1, 6, 6)
    labels, scores, _ = seeded_cluster(emb, torch.zeros(6, 6), sigma)
    assert (labels == 0).all() and scores.numel() == 0
    labels, scores, _ = seeded_cluster(emb, torch.full((6, 6), 0.8), sigma, min_size=1)
    assert scores.numel() == 0  # foreground, but no seed reaches seed_thresh = 0.9
    one = torch.zeros(6, 6)
    one[2, 3] = 0.95
    labels, scores, _ = seeded_cluster(emb, one, sigma, min_size=0)
    assert labels[2, 3] == 1 and labels.sum() == 1 and scores.tolist() == [0.949999988079071]


def test_translation_invariance_scripted_and_batch():
    emb, seed_map, sigma, _ = random_scene(5, 40, 48)
    scripted = torch.jit.script(seeded_cluster)
    args = dict(seed_thresh=0.6, min_size=10, sigma_mode="std")
    a, sa, _ = seeded_cluster(emb, seed_map, sigma, None, **args)
    b, sb, _ = scripted(
        emb + torch.tensor([30.0, -7.0]).view(2, 1, 1),
        seed_map,
        sigma,
        None,
        0.5,
        0.6,
        10,
        0.5,
        0.5,
        "gaussian",
        "std",
        16384,
        4,
    )
    assert torch.equal(a, b) and torch.allclose(sa, sb)
    emb2, seed2, sigma2, _ = random_scene(6, 40, 48)
    out = Outputs(
        embedding=torch.stack([emb, emb2]),
        seed=torch.stack([seed_map, seed2])[:, None],
        sigma=torch.stack([sigma, sigma2]),
    )
    batch = cluster_batch(out, "seeded", **args)
    for i in range(2):
        single = cluster_embeddings(out.index(i), "seeded", **args)
        assert torch.equal(batch[i].labels, single.labels)
        assert torch.equal(batch[i].scores, single.scores)


def _two_worms_crossing():
    """Two instances with embedding centres A = (0, 0) and B = (3, 0); the middle column's
    embeddings lie half-way, (1.5, 0): the crossing that belongs to both."""
    h, w = 6, 9
    emb = torch.zeros(2, h, w)
    emb[0, :, 5:] = 3.0
    emb[0, :, 4] = 1.5
    seed = torch.full((h, w), 0.6)
    seed[2, 1], seed[2, 7] = 0.95, 0.9  # seeds at the ends, far from the crossing
    sigma = torch.ones(1, h, w)  # std 1: kernel exp(-|e - c|^2 / 2)
    return Outputs(embedding=emb[None], seed=seed[None, None], sigma=sigma[None])


def test_overlap_masks_by_hand():
    out = _two_worms_crossing()
    kw = dict(fg_thresh=0.5, seed_thresh=0.8, min_size=2, prob_thresh=0.3)
    plain = cluster_embeddings(out, "seeded", **kw)
    assert plain.masks is None
    # kernel at the crossing to either centre: exp(-1.5^2 / 2) = 0.325
    low = cluster_embeddings(out, "seeded", overlap_thresh=0.32, **kw)
    high = cluster_embeddings(out, "seeded", overlap_thresh=0.33, **kw)
    assert torch.equal(low.labels, plain.labels) and torch.equal(high.labels, plain.labels)
    assert plain.num_instances == 2 and low.masks.shape == (2, 6, 9)
    # without the overlap: the masks are exactly the label image's instances
    for k in range(2):
        assert torch.equal(high.masks[k], plain.labels == k + 1)
    # with it: the crossing column (and only it) is in both masks
    both = low.masks[0] & low.masks[1]
    assert both[:, 4].all() and int(both.sum()) == 6
    assert torch.equal(low.masks.any(0), plain.labels > 0)


def test_overlap_masks_against_slow_reference():
    """Each instance's scale is the mean sigma over its pixels; a pixel joins every instance
    whose kernel exceeds the threshold (literal loops over pixels and instances)."""
    from instembed.cluster.seeded import overlap_masks

    for s in range(3):
        emb, seed_map, sigma, _ = random_scene(s)
        fg = seed_map > 0.3
        labels, _, centers = seeded_cluster(
            emb, seed_map, sigma, fg, seed_thresh=0.6, min_size=10, sigma_mode="std"
        )
        masks = overlap_masks(emb, sigma, labels, centers, fg, overlap_thresh=0.2)
        k = centers.shape[0]
        ref = torch.zeros(k, *labels.shape, dtype=torch.bool)
        for i in range(k):
            sd = float(sigma[0][labels == i + 1].mean())
            for y in range(labels.shape[0]):
                for x in range(labels.shape[1]):
                    if labels[y, x] == i + 1:
                        ref[i, y, x] = True
                    elif fg[y, x]:
                        q2 = float(((emb[:, y, x] - centers[i]) ** 2).sum()) / (2 * sd * sd)
                        ref[i, y, x] = math.exp(-q2) > 0.2
        assert torch.equal(masks, ref)
        assert int((masks.sum(0) > 1).sum()) > 0  # the scenes do overlap at 0.2


def test_overlap_thresh_needs_seeded():
    emb = torch.zeros(2, 4, 4)
    try:
        cluster_embeddings(emb, "threshold", overlap_thresh=0.5, delta_v=0.5)
    except ValueError as err:
        assert "overlap_thresh" in str(err) and "seeded" in str(err)
    else:
        raise AssertionError("overlap_thresh with method 'threshold' did not raise")


def _scattered_scene():
    """A 16-pixel object A (embedding (0, 0), seed 0.95 at its centre, 0.92 elsewhere), one
    stray pixel with A's embedding far from it (seed 0.6: foreground, never a seed), and an
    "object" B of three isolated pixels with embedding (10, 10) (seeds 0.93, 0.91, 0.91), the
    kind of instance a noisy field gives. sigma std 1, fg_thresh 0.5, seed_thresh 0.9."""
    h, w = 6, 12
    emb = torch.zeros(2, h, w)
    seed = torch.zeros(h, w)
    seed[1:5, 1:5] = 0.92
    seed[2, 2] = 0.95
    seed[1, 10] = 0.6  # the stray pixel of A
    for (y, x), s in (((4, 7), 0.93), ((4, 9), 0.91), ((2, 8), 0.91)):  # no two 8-adjacent
        seed[y, x] = s
        emb[:, y, x] = 10.0
    return Outputs(embedding=emb[None], seed=seed[None, None], sigma=torch.ones(1, 1, h, w))


def test_connected_keeps_the_main_piece_and_min_size_drops_scattered_instances():
    out = _scattered_scene()
    kw = dict(fg_thresh=0.5, seed_thresh=0.9, min_size=2, sigma_mode="std")
    # without connected (the default): A's seed proposes its 16 pixels and the stray one (17 > 2,
    # all new); then B's seed its 3 pixels (3 > 2): 2 instances, B of 3 scattered pixels
    plain = cluster_embeddings(out, "seeded", **kw)
    assert plain.num_instances == 2 and torch.allclose(plain.scores, torch.tensor([0.95, 0.93]))
    assert plain.labels[1, 10] == 1 and int((plain.labels == 1).sum()) == 17
    assert int((plain.labels == 2).sum()) == 3
    # connected: A loses the stray pixel (its own piece of foreground); B's pixels are three
    # 1-pixel pieces, B keeps one, below min_size 2: dropped
    conn = cluster_embeddings(out, "seeded", connected=True, **kw)
    assert conn.num_instances == 1 and torch.allclose(conn.scores, torch.tensor([0.95]))
    expected = torch.zeros(6, 12, dtype=torch.long)
    expected[1:5, 1:5] = 1
    assert torch.equal(conn.labels, expected)
    # the clusterer alone (before min_size): B is its first piece in raster order, (2, 8)
    labels, _, _ = seeded_cluster(
        out.embedding[0], out.seed[0, 0], out.sigma[0], None, 0.5, 0.9, 2, connected=True
    )
    assert labels[2, 8] == 2 and int((labels == 2).sum()) == 1 and labels[1, 10] == 0


def test_a_seed_inside_a_claimed_instance_starts_no_second_instance():
    # one object with two seed peaks; the second peak's embedding is 0.5 from the first's:
    # Gaussian kernel exp(-0.5^2 / 2) = 0.88 > prob_thresh 0.5, so the first seed's proposal
    # claims it and it can never seed (SpatialEmbeddings' masking of clustered pixels)
    h, w = 5, 5
    emb = torch.zeros(2, h, w)
    emb[0, 3, 3] = 0.5
    seed = torch.full((h, w), 0.9)
    seed[1, 1], seed[3, 3] = 0.99, 0.98
    labels, scores, _ = seeded_cluster(emb, seed, torch.ones(1, h, w), None, 0.5, 0.85, 2)
    assert scores.tolist() == [0.9900000095367432] and int(labels.max()) == 1
    assert bool((labels == 1).all())


def test_connected_from_the_config_the_cluster_option_and_the_export():
    from instembed.commands.predict import apply_cluster_overrides
    from instembed.engine.config import ClusterConfig, ConfigError, check_cluster
    from instembed.engine.export import postprocessing_wrapper

    base = ClusterConfig("seeded", {"seed_thresh": 0.9, "min_size": 2})
    cc = check_cluster(apply_cluster_overrides(base, ["connected=true"]), key="--cluster")
    assert cc.params["connected"] is True
    try:
        check_cluster(apply_cluster_overrides(base, ["connected=[1]"]), key="--cluster")
    except ConfigError as err:
        assert "connected" in str(err)
    else:
        raise AssertionError("connected=[1] was accepted")
    out = _scattered_scene()

    class Maps(torch.nn.Module):  # a stand-in network returning the scene's maps
        def __init__(self):
            super().__init__()
            self.embedding, self.sigma, self.seed = out.embedding, out.sigma, out.seed

        def forward(self, x):
            return self.embedding, self.sigma, self.seed

    params = {"fg_thresh": 0.5, "seed_thresh": 0.9, "min_size": 2, "connected": True}
    net = torch.jit.script(Maps())
    ts = postprocessing_wrapper(net, ["embedding", "sigma", "seed"], 1, "seeded", params)
    labels, scores = torch.jit.script(ts).segment(torch.zeros(1, 1, 6, 12))
    ref = cluster_embeddings(out, "seeded", **params)
    assert ref.num_instances == 1 and torch.equal(labels, ref.labels)
    assert torch.allclose(scores, ref.scores)

"""The fast paths of the clusterers against slow, independent references.

* ``relabel_sequential`` (lookup table from one bincount) against ``torch.unique``;
* ``assign_labels`` / ``assign_pixels`` (guess pyramid, corner and neighbour-centre
  certification) against a dense float64 distance table, on maps large enough for a 2-level
  pyramid, with close centre pairs that defeat the first certificate;
* ``threshold_modes`` against the sequential procedure written with Python lists;
* the one-thread scope of the clusterers: caller's thread count restored, same result.
"""

import math

import torch

import instembed.cluster.assign as assign_module
from instembed.cluster import (
    assign_labels,
    assign_pixels,
    cluster_embeddings,
    relabel_sequential,
    remove_small_instances,
    seeded_cluster,
    threshold_modes,
)
from instembed.cluster.seeded import _seed_loop, _seed_loop_numpy
from instembed.cluster.threads import one_intra_op_thread
from instembed.cluster.threshold import _modes_torch
from instembed.structures import Outputs


def unique_relabel(labels, min_size=0):
    """Reference: drop small ids by their counts, then rank the remaining ids with unique."""
    ids, counts = torch.unique(labels, return_counts=True)
    keep = [int(i) for i, c in zip(ids, counts, strict=True) if i > 0 and c >= max(min_size, 1)]
    out = torch.zeros_like(labels)
    for new, old in enumerate(keep, start=1):
        out[labels == old] = new
    return out, torch.tensor(keep, dtype=torch.long)


def test_relabel_lookup_table_matches_unique():
    g = torch.Generator().manual_seed(0)
    for trial in range(6):
        lab = torch.randint(0, 40, (30, 50), generator=g) * 7  # gaps between ids
        if trial % 2:
            lab = lab + 1  # no background pixel at all
        for min_size in (0, 30, 45):
            ref, ref_old = unique_relabel(lab, min_size)
            # no hint, the exact largest id, a hint above it, a wrong (too small) hint
            top = int(lab.max())
            for hint in (None, top, top + 5, top - 7):
                new, old = relabel_sequential(lab, min_size, hint)
                assert torch.equal(new, ref) and torch.equal(old, ref_old)
    # already sequential: unchanged (ids 1..3 all present; 3 has one pixel, dropped by min_size 2)
    seq = torch.tensor([[0, 1, 1, 2], [3, 2, 2, 0]])
    new, old = relabel_sequential(seq)
    assert torch.equal(new, seq) and old.tolist() == [1, 2, 3]
    new, old = relabel_sequential(seq, 2)
    assert new.tolist() == [[0, 1, 1, 2], [0, 2, 2, 0]] and old.tolist() == [1, 2]
    # ids far above the pixel count take the unique (sort) path: same contract
    big = torch.tensor([[0, 10**12, 10**12], [5, 5, 0]])
    new, old = relabel_sequential(big)
    assert new.tolist() == [[0, 2, 2], [1, 1, 0]] and old.tolist() == [5, 10**12]
    new, old = relabel_sequential(big, min_size=2)
    assert new.tolist() == [[0, 2, 2], [1, 1, 0]]
    new, old = relabel_sequential(big, min_size=3)  # both have 2 pixels
    assert new.tolist() == [[0, 0, 0], [0, 0, 0]] and old.numel() == 0
    assert remove_small_instances(big, 3).tolist() == [[0, 0, 0], [0, 0, 0]]
    new, old = relabel_sequential(torch.zeros(0, 4, dtype=torch.long))
    assert new.shape == (0, 4) and old.numel() == 0


def scene(h, w, k, d, seed, noise, pairs):
    """Voronoi regions of k pixel sites, each with its own float64 embedding centre plus noise;
    the first ``pairs`` regions get a second centre at distance 0.3 (two close centres whose
    guaranteed radius, 0.15, is below the noise: the first certificate fails there)."""
    g = torch.Generator().manual_seed(seed)
    sites = torch.stack(
        [torch.randint(0, h, (k,), generator=g), torch.randint(0, w, (k,), generator=g)], 1
    )
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    d2 = (yy[None] - sites[:, 0, None, None]) ** 2 + (xx[None] - sites[:, 1, None, None]) ** 2
    region = d2.argmin(0)
    cen = torch.randn(k, d, generator=g, dtype=torch.float64) * 4
    emb = cen[region].permute(2, 0, 1) + noise * torch.randn(
        d, h, w, generator=g, dtype=torch.float64
    )
    twin = cen[:pairs] + 0.3 * torch.nn.functional.normalize(
        torch.randn(pairs, d, generator=g, dtype=torch.float64), dim=1
    )
    fg = torch.rand(h, w, generator=g) > 0.25
    return emb.contiguous(), fg, torch.cat([cen, twin])


def dense_reference(emb, fg, cen, scale):
    """(H, W) nearest centre (-1 outside fg) and its q2, from the full (K, H, W) float64 table."""
    sc = scale.reshape(cen.shape[0], -1).expand(cen.shape[0], cen.shape[1])
    q = ((emb[None] - cen[:, :, None, None]) ** 2 * sc[:, :, None, None]).sum(1)
    q2, idx = q.min(0)
    return torch.where(fg, idx, -1), torch.where(fg, q2, 0)


def test_assign_labels_equals_dense_table_on_a_pyramid(monkeypatch):
    h, w, k, d = 301, 290, 30, 4  # (301 // 4) * (290 // 4) > 4096: 2 levels, odd remainders
    emb, fg, cen = scene(h, w, k, d, seed=3, noise=0.2, pairs=6)
    g = torch.Generator().manual_seed(4)
    brute_points = []
    real_brute = assign_module._brute

    def counting_brute(points, centers, sc, chunk_elements):
        brute_points.append(points.shape[1])
        return real_brute(points, centers, sc, chunk_elements)

    monkeypatch.setattr(assign_module, "_brute", counting_brute)
    kk = cen.shape[0]
    scales = (
        torch.ones(kk, 1, dtype=torch.float64),
        0.5 + torch.rand(kk, 1, generator=g, dtype=torch.float64),
        0.5 + torch.rand(kk, d, generator=g, dtype=torch.float64),
    )
    for scale in scales:
        ref, ref_q2 = dense_reference(emb, fg, cen, scale)
        brute_points.clear()
        index, q2 = assign_pixels(emb, fg, cen, scale)
        assert torch.equal(index, ref)
        assert torch.allclose(q2, ref_q2, rtol=1e-9, atol=1e-12)
        # the fast path resolved nearly everything: the twins' pixels went through the
        # neighbour-centre certificate, not the brute-force comparison with all centres
        assert sum(brute_points) < 0.02 * int(fg.sum())
        # labels form, with the kernel cut of seeded clustering at the median q2
        # (halfway between two neighbouring q2 values, so no pixel is within rounding of it)
        srt = ref_q2[fg].sort().values
        mid = srt.numel() // 2
        cut = float(0.5 * (srt[mid] + srt[mid + 1]))
        labels = assign_labels(emb, fg, cen, scale, 4, cut)
        expected = torch.where(fg & (ref_q2 < cut), ref + 1, 0)
        assert torch.equal(labels, expected)
        assert torch.equal(assign_labels(emb, fg, cen, scale), torch.where(fg, ref + 1, 0))


def test_assign_labels_scripts_and_small_inputs():
    emb, fg, cen = scene(40, 37, 5, 3, seed=5, noise=0.3, pairs=1)
    emb = emb.float()
    cen = cen.float()
    scripted = torch.jit.script(assign_labels)
    assert torch.equal(
        scripted(emb, fg, cen, None, 4, 2.0, 1 << 21), assign_labels(emb, fg, cen, None, 4, 2.0)
    )
    # one centre; a map smaller than two guess blocks: brute-force path, same contract
    one = assign_labels(emb, fg, cen[:1])
    assert torch.equal(one, fg.long())
    tiny = assign_labels(emb[:, :5, :6], fg[:5, :6], cen)
    ref, _ = dense_reference(emb[:, :5, :6].double(), fg[:5, :6], cen.double(), torch.ones(6, 1))
    assert torch.equal(tiny, ref + 1)


def loop_threshold_modes(points, delta_v, tol, max_iter=100):
    """Reference: the sequential procedure with Python lists and exact float arithmetic."""
    pts = [list(map(float, p)) for p in points]
    labels = [-1] * len(pts)
    centers = []

    def dist2(a, b):
        return sum((x - y) ** 2 for x, y in zip(a, b, strict=True))

    while -1 in labels:
        i = labels.index(-1)
        c = pts[i]
        for _ in range(max_iter):
            ball = [p for p in pts if dist2(p, c) < delta_v**2]
            new = [sum(col) / len(ball) for col in zip(*ball, strict=True)]
            shift = math.sqrt(dist2(new, c))
            c = new
            if shift <= tol:
                break
        members = [j for j, p in enumerate(pts) if labels[j] == -1 and dist2(p, c) < delta_v**2]
        members = sorted(set(members) | {i})
        for j in members:
            labels[j] = len(centers)
        centers.append([sum(pts[j][t] for j in members) / len(members) for t in range(len(c))])
    return labels, centers


def test_threshold_modes_matches_list_reference():
    g = torch.Generator().manual_seed(7)
    means = torch.tensor([[0.0, 0.0, 0.0], [3.0, 0.0, 1.0], [0.0, 3.0, -1.0]], dtype=torch.float64)
    pts = means[torch.randint(0, 3, (150,), generator=g)]
    # spread close to delta_v: fragments, re-centring over assigned points, several iterations
    pts = pts + 0.35 * torch.randn(150, 3, generator=g, dtype=torch.float64)
    for delta_v in (0.6, 1.0):
        ref_labels, ref_centers = loop_threshold_modes(pts, delta_v, 1e-3 * delta_v)
        ref_centers = torch.tensor(ref_centers, dtype=torch.float64)
        # public function (numpy steps for CPU tensors) and the torch steps (other devices)
        for labels, centers in (
            threshold_modes(pts, delta_v),
            _modes_torch(pts, delta_v, 1e-3 * delta_v, 100),
        ):
            assert labels.tolist() == ref_labels
            assert torch.allclose(centers, ref_centers)
    # float32 keeps its dtype on both paths
    labels, centers = threshold_modes(pts.float(), 0.6)
    assert centers.dtype == torch.float32 and labels.dtype == torch.long


def test_one_thread_scope_restores_the_callers_setting_and_result():
    before = torch.get_num_threads()
    emb, fg, cen = scene(64, 80, 6, 4, seed=9, noise=0.1, pairs=0)
    emb = emb.float()
    seed = torch.rand(64, 80, generator=torch.Generator().manual_seed(1))
    out = Outputs(embedding=emb[None], seed=seed[None, None], sigma=torch.full((1, 1, 64, 80), 0.6))
    try:
        results = {}
        for n in (1, 2):
            torch.set_num_threads(n)
            a = cluster_embeddings(emb, "threshold", fg, delta_v=0.5)
            b = cluster_embeddings(out, "seeded", fg, sigma_mode="std", seed_thresh=0.5)
            c, _, _ = seeded_cluster(emb, seed, torch.full((1, 64, 80), 0.6), fg, sigma_mode="std")
            assert torch.get_num_threads() == n
            results[n] = (a.labels, b.labels, c)
        assert all(torch.equal(x, y) for x, y in zip(results[1], results[2], strict=True))
        torch.set_num_threads(2)
        try:
            with one_intra_op_thread():
                assert torch.get_num_threads() == 1
                raise KeyError("inside")
        except KeyError:
            pass
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_seed_loop_numpy_equals_torch_steps():
    # the eager CPU path runs the seed loop in numpy, compiled/other devices run the torch steps:
    # same seeds, same order, same scores, for isotropic and per-dimension scales
    g = torch.Generator().manual_seed(12)
    for ns in (1, 3):
        for trial in range(3):
            means = torch.randn(12, 3, generator=g) * 3
            pts = (
                (
                    means[torch.randint(0, 12, (4000,), generator=g)]
                    + 0.3 * torch.randn(4000, 3, generator=g)
                )
                .t()
                .contiguous()
            )
            scale = 0.5 + torch.rand(ns, 4000, generator=g)
            score = torch.rand(4000, generator=g)
            args = (math.log(2), 1 + trial, 20, 0.3, 0.5)
            ref = _seed_loop(pts, scale, score, *args)
            got = _seed_loop_numpy(pts.numpy(), scale.numpy(), score.numpy(), *args)
            assert got == ref and len(ref[0]) >= 5


def test_seeded_accepts_an_embedding_that_requires_grad():
    emb, fg, _ = scene(40, 44, 4, 2, seed=13, noise=0.1, pairs=0)
    emb = emb.float().requires_grad_()
    seed = torch.rand(40, 44, generator=torch.Generator().manual_seed(2))
    sigma = torch.full((1, 40, 44), 0.6)
    a, _, _ = seeded_cluster(emb, seed, sigma, fg, sigma_mode="std", seed_thresh=0.5)
    b, _, _ = seeded_cluster(emb.detach(), seed, sigma, fg, sigma_mode="std", seed_thresh=0.5)
    assert torch.equal(a, b) and int(a.max()) > 0

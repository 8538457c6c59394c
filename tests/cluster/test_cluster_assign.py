"""Nearest-centre assignment: fast paths against a slow loop reference."""

import torch

from instembed.cluster import assign_pixels, guaranteed_radius, nearest_center


def slow_nearest(points, centers, scale):
    """Reference: loop over points, full list of distances, first minimum."""
    out = []
    for x in points:
        d = [float((scale[k] * (x - centers[k]) ** 2).sum()) for k in range(len(centers))]
        out.append(min(range(len(d)), key=lambda k: (d[k], k)))
    return torch.tensor(out)


def test_nearest_center_matches_loop_reference_with_scales():
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(300, 3, generator=g, dtype=torch.float64) * 4
    cen = torch.randn(7, 3, generator=g, dtype=torch.float64) * 4
    for scale in (
        torch.ones(7, 1),
        torch.rand(7, 1, generator=g) + 0.2,
        torch.rand(7, 3, generator=g) + 0.2,
    ):
        scale = scale.to(torch.float64)
        idx, q2 = nearest_center(pts, cen, scale)
        ref = slow_nearest(pts, cen, scale.expand(7, 3))
        assert torch.equal(idx, ref)
        exp = (scale.expand(7, 3)[ref] * (pts - cen[ref]) ** 2).sum(1)
        assert torch.allclose(q2, exp)


def blobs_image(h, w, k, d, seed, noise):
    """Voronoi regions of k random pixel sites, each with its own embedding plus noise."""
    g = torch.Generator().manual_seed(seed)
    sites = torch.stack(
        [torch.randint(0, h, (k,), generator=g), torch.randint(0, w, (k,), generator=g)], 1
    )
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    d2 = (yy[None] - sites[:, 0, None, None]) ** 2 + (xx[None] - sites[:, 1, None, None]) ** 2
    region = d2.argmin(0)
    cen = torch.randn(k, d, generator=g) * 3
    emb = cen[region].permute(2, 0, 1) + noise * torch.randn(d, h, w, generator=g)
    return emb, region, cen


def test_assign_pixels_equals_brute_force_everywhere():
    # odd sizes (remainder rows and columns of the guess grid), a hole in the foreground, noise
    # large enough that some guesses fail and take the brute-force path
    emb, _, cen = blobs_image(37, 45, 6, 4, seed=1, noise=1.0)
    fg = torch.rand(37, 45, generator=torch.Generator().manual_seed(2)) > 0.2
    for scale in (None, torch.rand(6) + 0.5, torch.rand(6, 4) + 0.5):
        fast, q_fast = assign_pixels(emb, fg, cen, scale, stride=4)
        slow, q_slow = assign_pixels(emb, fg, cen, scale, stride=1)
        assert torch.equal(fast, slow)
        assert torch.allclose(q_fast, q_slow, atol=1e-5)
        assert (fast[~fg] == -1).all() and (fast[fg] >= 0).all()
        pts = emb[:, fg].t()
        ref = slow_nearest(
            pts.double(),
            cen.double(),
            (torch.ones(6, 4) if scale is None else scale.reshape(6, -1).expand(6, 4)).double(),
        )
        assert torch.equal(slow[fg], ref)


def test_assign_pixels_scripts():
    scripted = torch.jit.script(assign_pixels)
    emb, _, cen = blobs_image(40, 40, 5, 3, seed=3, noise=0.2)
    fg = torch.ones(40, 40, dtype=torch.bool)
    a, _ = scripted(emb, fg, cen, None, 4, 1 << 21)
    b, _ = assign_pixels(emb, fg, cen)
    assert torch.equal(a, b)


def test_guaranteed_radius_by_hand():
    # two centres 2 apart, unit metric: any point within 1 of a centre is nearest to it
    cen = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 0.0]])
    r = guaranteed_radius(cen)
    assert torch.allclose(r, torch.tensor([1.0, 1.0, 4.0]), rtol=1e-3)
    # scales 4 and 1 (q = 2|x - c0| vs |x - c1|): with a = 2, b = 1, R_0 = 1 * 2 / (2 + 1)
    r = guaranteed_radius(cen[:2], torch.tensor([4.0, 1.0]))
    assert abs(float(r[0]) - 2 / 3) < 1e-3

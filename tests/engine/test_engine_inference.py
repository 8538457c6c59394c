import pytest
import torch
from torch import nn

from instembed.engine.inference import (
    TTA_TRANSFORMS,
    default_overlap,
    infer,
    measured_receptive_field,
    tile_grid,
    tta_forward,
)
from instembed.models import build_model
from instembed.structures import Outputs

pytestmark = pytest.mark.usefixtures("one_thread")


def _unet(semiconv=True, seed=0):
    torch.manual_seed(seed)
    m = build_model(
        "unet",
        heads={"embedding": 4, "offset": 2, "seed": 1},
        semiconv=semiconv,
        coord_scale=1 / 32,
        depth=2,
        width=8,
    )
    # non-trivial BatchNorm statistics, so eval mode is not an identity
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


@pytest.mark.parametrize(
    "h, w, tile, overlap, d", [(100, 70, 48, 16, 8), (64, 64, 64, 8, 4), (37, 130, 32, 8, 4)]
)
def test_tile_cores_partition_the_image(h, w, tile, overlap, d):
    tiles = tile_grid(h, w, tile, overlap, d)
    count = torch.zeros(h, w, dtype=torch.int32)
    for t in tiles:
        assert t.y0 % d == 0 and t.x0 % d == 0  # aligned with the pooling grid
        assert t.y1 - t.y0 <= tile and t.x1 - t.x0 <= tile
        # the core keeps >= overlap // 2 px from every inner tile border
        assert t.cy0 == 0 or t.cy0 - t.y0 >= overlap // 2
        assert t.cx0 == 0 or t.cx0 - t.x0 >= overlap // 2
        assert t.cy1 == h or t.y1 - t.cy1 >= overlap // 2
        assert t.cx1 == w or t.x1 - t.cx1 >= overlap // 2
        count[t.cy0 : t.cy1, t.cx0 : t.cx1] += 1
    assert bool((count == 1).all())


def test_tile_too_small_for_overlap_is_rejected():
    with pytest.raises(ValueError, match="too small"):
        tile_grid(100, 100, 32, 32, 4)


def test_receptive_field_measured_matches_theory():
    m = _unet()
    # depth-2 U-Net: 2 convs (+4) at level 0; each level down: pool (+1 jump) and 2 convs;
    # the model reports the theoretical size; back-propagation from the centre pixel agrees
    assert measured_receptive_field(m, size=129) == m.receptive_field == 44
    assert default_overlap(m) == 48  # 44 rounded up to a multiple of 2 * divisor (8)


def test_tiled_equals_untiled_outputs():
    m = _unet(semiconv=True)
    img = torch.rand(1, 100, 90)
    full = infer(m, img)
    tiled = infer(m, img, tile=64, batch=3)  # default overlap 48 >= receptive field 44
    for name, a in full.to_dict().items():
        b = getattr(tiled, name)
        assert b.shape == a.shape
        # float rounding only (different conv problem sizes): ~5e-7 measured
        torch.testing.assert_close(b, a, atol=5e-6, rtol=0, msg=name)


def test_too_small_overlap_changes_tiled_outputs():
    # control for the test above: with an 8 px overlap (receptive field 44) tiles miss context
    # and the outputs move by far more than the rounding tolerance used there
    m = _unet(semiconv=False)
    img = torch.rand(1, 100, 90)
    full = infer(m, img).embedding
    tiled = infer(m, img, tile=64, overlap=8).embedding
    assert (full - tiled).abs().max() > 5e-5


class CentroidNet(nn.Module):
    """Rotation/mirror-equivariant toy: every pixel points at the intensity centroid.

    offset (dy, dx) = centroid - pixel (pixels); embedding Phi = offset * s plus the mean
    intensity as an appearance dim, Psi = Phi + u * s with u = coords_origin + (i, j):
    every pixel's semi-conv embedding is the centroid's position in the original frame.
    """

    semiconv = True
    coord_scale = 0.1
    size_divisor = 1
    receptive_field = 10_000
    in_channels = 1

    def forward(self, x, coords_origin=None):
        b, _, h, w = x.shape
        wgt = x[:, 0]
        ii = torch.arange(h, dtype=x.dtype).view(1, h, 1)
        jj = torch.arange(w, dtype=x.dtype).view(1, 1, w)
        mass = wgt.sum((1, 2))
        cy = (wgt * ii).sum((1, 2)) / mass
        cx = (wgt * jj).sum((1, 2)) / mass
        off = torch.stack(
            [cy.view(b, 1, 1) - ii.expand(b, h, w), cx.view(b, 1, 1) - jj.expand(b, h, w)], 1
        )
        origin = torch.zeros(b, 2) if coords_origin is None else coords_origin.to(x.dtype)
        u = torch.stack([ii.expand(b, h, w), jj.expand(b, h, w)], 1) + origin.view(b, 2, 1, 1)
        emb = torch.cat(
            [(off + u) * self.coord_scale, wgt.mean((1, 2)).view(b, 1, 1, 1).expand(b, 1, h, w)], 1
        )
        return Outputs(embedding=emb, offset=off, seed=x.clamp(0, 1))


def test_tta_recovers_equivariant_outputs_exactly():
    net = CentroidNet()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 13, 21, generator=gen) ** 4  # non-square: odd rotations change shape
    origin = torch.tensor([[5, 7], [0, 3]])
    plain = net(x, origin)
    avg = tta_forward(net, x, origin)
    assert len(TTA_TRANSFORMS) == 8
    for name in ("embedding", "offset", "seed"):
        torch.testing.assert_close(getattr(avg, name), getattr(plain, name), atol=1e-4, rtol=1e-5)
    # every single transform on its own is already mapped back exactly
    for t in TTA_TRANSFORMS:
        one = tta_forward(net, x, origin, transforms=(t,))
        torch.testing.assert_close(one.offset, plain.offset, atol=1e-4, rtol=1e-5, msg=str(t))


def test_tta_without_vector_remap_would_differ():
    # control: moving the offsets back without rotating the vectors gives a different field
    net = CentroidNet()
    x = torch.rand(1, 1, 12, 12, generator=torch.Generator().manual_seed(2)) ** 4
    plain = net(x).offset
    rotated = net(torch.rot90(x, 1, dims=(-2, -1))).offset
    naive = torch.rot90(rotated, -1, dims=(-2, -1))
    assert (naive - plain).abs().max() > 0.5


def test_tta_with_tiling_matches_untiled_tta_for_real_model():
    m = _unet(semiconv=True)
    img = torch.rand(1, 72, 80)
    a = infer(m, img, tta=True)
    b = infer(m, img, tta=True, tile=64, overlap=48)
    torch.testing.assert_close(b.embedding, a.embedding, atol=2e-5, rtol=1e-5)

"""Semi-convolutional operator: coordinates, crops/tiles, flips."""

from __future__ import annotations

import pytest
import torch

from instembed.models import semiconv, unflip_outputs
from instembed.structures import Outputs, pixel_coordinates


def test_pixel_coordinates_by_hand():
    # pixel (i=1, j=2) of a crop at origin (y0, x0) = (4, 6) with scale 0.5 -> (2.5, 4.0)
    u = pixel_coordinates(1, (3, 4), torch.tensor([[4, 6]]), 0.5)
    assert u.shape == (1, 2, 3, 4)
    assert u[0, :, 1, 2].tolist() == [2.5, 4.0]
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        pixel_coordinates(2, (3, 4), torch.tensor([[4, 6]]), 0.5)


def test_crop_gets_coordinates_of_original_image():
    torch.manual_seed(0)
    phi = torch.randn(1, 5, 20, 24)
    full = semiconv(phi, None, 0.1)
    y0, x0 = 7, 9
    crop = semiconv(phi[..., y0 : y0 + 8, x0 : x0 + 10], torch.tensor([[y0, x0]]), 0.1)
    torch.testing.assert_close(crop, full[..., y0 : y0 + 8, x0 : x0 + 10])
    # only dims 0 and 1 change
    torch.testing.assert_close(full[:, 2:], phi[:, 2:])


def test_class_embedding_gets_same_coordinates():
    phi = torch.zeros(2, 3, 4, 5, 6)
    psi = semiconv(phi, torch.tensor([[1, 2], [3, 4]]), 1.0)
    assert psi[1, 2, 0, 4, 5].item() == 3 + 4 and psi[1, 2, 1, 4, 5].item() == 4 + 5
    assert (psi[:, :, 2:] == 0).all()


@pytest.mark.parametrize("dim", [-1, -2])
def test_unflip_recovers_output_of_mirror_equivariant_network(dim):
    # A mirror-equivariant network maps the flipped image to the flipped Phi with the component
    # along the flipped axis negated (Phi is a displacement). The same holds for offsets. Its
    # semi-conv output on the flipped image, un-flipped, must equal the output on the original.
    torch.manual_seed(1)
    s, origin = 0.2, torch.tensor([[5, 11]])
    phi = torch.randn(1, 4, 6, 7)
    offset = torch.randn(1, 2, 6, 7)
    seed = torch.rand(1, 1, 6, 7)
    axis = dim + 2

    def mirrored(v):
        v = v.flip(dim).clone()
        v[:, axis] = -v[:, axis]
        return v

    psi_flipped_input = semiconv(mirrored(phi), origin, s)
    out = unflip_outputs(
        Outputs(embedding=psi_flipped_input, offset=mirrored(offset), seed=seed.flip(dim)),
        dim,
        origin,
        s,
    )
    torch.testing.assert_close(out.embedding, semiconv(phi, origin, s))
    torch.testing.assert_close(out.offset, offset)
    torch.testing.assert_close(out.seed, seed)


def test_unflip_rejects_bad_dim():
    with pytest.raises(ValueError, match="flip dim"):
        unflip_outputs(Outputs(seed=torch.zeros(1, 1, 2, 2)), 0)

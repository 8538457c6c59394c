"""The semi-convolutional operator of Novotny et al. (2018), eq. 4: ``Psi_u = Phi_u + u``.

``u`` is the pixel's position in the **original image**, ``u = (y, x) * coord_scale`` with
``y, x`` in pixels (row, column; pixel centres at integers, ``(0, 0)`` the top-left pixel of
the original image). Only the first two embedding dimensions receive ``u`` (dim 0 gets y, dim 1
gets x); the remaining ``E - 2`` dimensions stay plain convolutional ("appearance" dims).

Crops and tiles: pass ``coords_origin`` = (y0, x0) of the crop's top-left pixel in the original
image (``batch["coords_origin"]``); a pixel at row i, column j of the crop then gets
``u = (y0 + i, x0 + j) * coord_scale`` -- the same value it gets in the full image.

Flips (test-time augmentation): run the network on the flipped input with the **same**
``coords_origin``, then call :func:`unflip_outputs`. It removes the coordinates of the flipped
grid, flips the learned part ``Phi`` back, negates the component along the flipped axis (``Phi``
is a displacement in the image plane, so a mirror reverses it) and adds the coordinates of the
unflipped grid. For a network whose ``Phi`` is exactly mirror-equivariant this recovers the
un-augmented ``Psi`` exactly. ``offset`` (dy, dx) gets the same flip + negation; scalar maps
(seed, sigma, center, semantic) are only flipped back.
"""

from __future__ import annotations

import torch

from instembed.structures import DEFAULT_COORD_SCALE, Outputs, pixel_coordinates


def semiconv(
    embedding: torch.Tensor,
    coords_origin: torch.Tensor | None = None,
    coord_scale: float = DEFAULT_COORD_SCALE,
) -> torch.Tensor:
    """``Psi = Phi + u`` on dims 0 (y) and 1 (x) of ``embedding`` (B, E, H, W), E >= 2.

    Also accepts per-class embeddings (B, K, E, H, W): every class gets the same ``u``.
    """
    if embedding.ndim not in (4, 5) or embedding.shape[-3] < 2:
        raise ValueError(
            "semiconv needs an embedding (B, E, H, W) or (B, K, E, H, W) with E >= 2, "
            f"got shape {tuple(embedding.shape)}"
        )
    b, h, w = embedding.shape[0], embedding.shape[-2], embedding.shape[-1]
    u = pixel_coordinates(b, (h, w), coords_origin, coord_scale, embedding.device, embedding.dtype)
    if embedding.ndim == 5:
        u = u.unsqueeze(1)
    zeros = torch.zeros_like(embedding[..., 2:, :, :])
    return embedding + torch.cat([u.expand_as(embedding[..., :2, :, :]), zeros], dim=-3)


def _axis(dim: int) -> int:
    """Spatial axis 0 (rows, y) or 1 (columns, x) from a tensor dim -2 / -1."""
    if dim not in (-2, -1):
        raise ValueError(f"flip dim must be -2 (vertical) or -1 (horizontal), got {dim}")
    return dim + 2


def unflip_vectors(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Flip a (.., 2+, H, W) map of (dy, dx, ...) vectors back and negate the flipped component."""
    out = t.flip(dim).clone()
    out[..., _axis(dim), :, :] = -out[..., _axis(dim), :, :]
    return out


def unflip_semiconv(
    embedding: torch.Tensor,
    dim: int,
    coords_origin: torch.Tensor | None = None,
    coord_scale: float = DEFAULT_COORD_SCALE,
) -> torch.Tensor:
    """Undo a flip along ``dim`` (-2 or -1) of a semi-convolutional embedding (see module doc)."""
    phi = semiconv(embedding, coords_origin, -coord_scale)  # Psi - u on the flipped grid
    return semiconv(unflip_vectors(phi, dim), coords_origin, coord_scale)


def unflip_outputs(
    outputs: Outputs,
    dim: int,
    coords_origin: torch.Tensor | None = None,
    coord_scale: float = DEFAULT_COORD_SCALE,
    semiconv_embedding: bool = True,
) -> Outputs:
    """Map the outputs of a flipped input back to the unflipped frame (see module doc).

    ``semiconv_embedding``: True when the model adds coordinates (``model.semiconv``); a plain
    embedding has no geometric meaning and is only flipped back.
    """
    _axis(dim)
    d = outputs.to_dict()
    out = {}
    for name, t in d.items():
        if name in ("embedding", "class_embedding"):
            out[name] = (
                unflip_semiconv(t, dim, coords_origin, coord_scale)
                if semiconv_embedding
                else t.flip(dim)
            )
        elif name == "offset":
            out[name] = unflip_vectors(t, dim)
        else:
            out[name] = t.flip(dim)
    return Outputs(**out)

"""Network inference on whole images: tiling with overlap + stitching, test-time augmentation.

Tiling. A large image is cut into tiles of ``tile`` pixels whose origins are multiples of the
model's ``size_divisor`` (so pooling grids line up with the untiled pass) and that overlap by
``overlap`` pixels. Each tile runs with ``coords_origin`` = its origin, so semi-convolutional
coordinates are those of the whole image. From every tile only its *core* is kept: the tile minus
``overlap // 2`` on each side that borders another tile. When ``overlap // 2`` is at least half
the receptive field, every kept pixel saw exactly the input it sees in the untiled pass, so the
stitched network outputs equal the untiled ones (up to float rounding) and the clustering, run
once on the stitched outputs, gives the same instances. The default overlap is derived from
``model.receptive_field``. (Exactness needs per-pixel normalisation in eval mode: BatchNorm or
none; GroupNorm / InstanceNorm use whole-tile statistics and make tiles differ slightly.)

Test-time augmentation. The 8 symmetries of the square (4 rotations x optional mirror) are
applied to the input; each output is mapped back to the original frame and the results are
averaged. Scalar maps (seed, sigma, center, semantic, plain embeddings) are only moved back;
vector maps are also rotated: ``offset`` (dy, dx) and, for semi-convolutional models, the learned
part ``Phi = Psi - u`` of the first two embedding dims (the coordinates ``u`` of the transformed
grid are removed, ``Phi`` is moved and rotated back, and the coordinates of the original grid
are added), as EmbedSeg does for its offset channels.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from instembed.structures import Outputs

log = logging.getLogger(__name__)

VECTOR_FIELDS = ("offset",)  # (dy, dx) maps
EMBEDDING_FIELDS = ("embedding", "class_embedding")  # (.., E, H, W), dims 0/1 = (y, x) if semiconv


# --------------------------------------------------------------------------- model facts
def model_facts(model: nn.Module) -> dict:
    """``size_divisor``, ``receptive_field``, ``semiconv``, ``coord_scale`` of a network.

    Missing attributes fall back to divisor 1, no semi-conv, and a receptive field measured
    by back-propagating from the centre pixel of a zero image (see :func:`measured_receptive_field`).
    """
    divisor = int(getattr(model, "size_divisor", 1) or 1)
    rf = getattr(model, "receptive_field", None)
    if callable(rf):
        rf = rf()
    if rf is None:
        rf = measured_receptive_field(model)
    return {
        "size_divisor": divisor,
        "receptive_field": int(rf),
        "semiconv": bool(getattr(model, "semiconv", False)),
        "coord_scale": float(getattr(model, "coord_scale", 1.0)),
    }


def measured_receptive_field(model: nn.Module, size: int = 257, channels: int | None = None) -> int:
    """Side of the input window that the centre output pixel depends on (gradient support)."""
    channels = channels or int(getattr(model, "in_channels", 1))
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    gen = torch.Generator().manual_seed(0)  # random input: a zero image kills ReLU gradients
    x = torch.randn(1, channels, size, size, generator=gen).to(device).requires_grad_(True)
    was = model.training
    model.eval()
    out = _dense_only(model(x), "tiling (--tile)")
    total = sum(t[..., size // 2, size // 2].sum() for t in out.to_dict().values())
    (grad,) = torch.autograd.grad(total, x)
    model.train(was)
    nz = grad.abs().sum((0, 1)).nonzero()
    if len(nz) == 0:
        return 1
    return int(max(nz[:, 0].max() - nz[:, 0].min(), nz[:, 1].max() - nz[:, 1].min()) + 1)


def default_overlap(model: nn.Module) -> int:
    """Overlap (pixels) between neighbouring tiles: the receptive field rounded up to the divisor.

    Each tile then drops ``overlap // 2 >= receptive_field / 2`` pixels on its inner sides.
    """
    f = model_facts(model)
    d = f["size_divisor"]
    return int(math.ceil(f["receptive_field"] / (2 * d)) * 2 * d)


# --------------------------------------------------------------------------- tiling
@dataclass(frozen=True)
class Tile:
    """One tile: input window ``[y0:y1, x0:x1]`` and the core ``[cy0:cy1, cx0:cx1]`` it keeps."""

    y0: int
    y1: int
    x0: int
    x1: int
    cy0: int
    cy1: int
    cx0: int
    cx1: int


def _axis_tiles(n: int, tile: int, overlap: int, divisor: int) -> list[tuple[int, int, int, int]]:
    """(start, stop, core_start, core_stop) along one axis of length ``n``."""
    if tile >= n:
        return [(0, n, 0, n)]
    step = tile - overlap
    step -= step % divisor
    if step <= 0:
        raise ValueError(
            f"tile size {tile} too small for overlap {overlap} (and divisor {divisor}):"
            f" need tile > overlap + {divisor}"
        )
    half = overlap // 2
    # aligned starts while the window does not reach the end, then one that does
    starts = list(range(0, n - tile, step))
    starts.append(starts[-1] + step)
    out = []
    for i, s in enumerate(starts):
        e = min(s + tile, n)
        cs = 0 if i == 0 else s + half
        ce = n if i == len(starts) - 1 else (starts[i + 1] + half)
        out.append((s, e, cs, ce))
    return out


def tile_grid(
    height: int, width: int, tile: int | tuple[int, int], overlap: int, divisor: int = 1
) -> list[Tile]:
    """Tiles covering an image; cores partition it exactly (each pixel in one core).

    Tile starts are multiples of ``divisor``; neighbouring tiles overlap by >= ``overlap``; a
    core ends ``overlap // 2`` before the inner border of its tile.
    """
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    # whole multiples of the divisor, so that no tile but the last needs the model's padding
    th, tw = max(divisor, th - th % divisor), max(divisor, tw - tw % divisor)
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    ys = _axis_tiles(height, th, overlap, divisor)
    xs = _axis_tiles(width, tw, overlap, divisor)
    return [
        Tile(y0, y1, x0, x1, cy0, cy1, cx0, cx1)
        for y0, y1, cy0, cy1 in ys
        for x0, x1, cx0, cx1 in xs
    ]


def _dense_only(out: Outputs, what: str) -> Outputs:
    """``out`` when it holds dense maps only; models that return instances themselves
    (proposal-based, recurrent) cannot be stitched or averaged map by map."""
    if out.instances is not None:
        raise ValueError(
            f"{what} combines dense output maps, but this model returns instances itself "
            "(Outputs.instances); run it on the whole image without --tile / --tta"
        )
    return out


def _run(model: nn.Module, x: torch.Tensor, origin: torch.Tensor | None) -> Outputs:
    return model(x, coords_origin=origin)


@torch.no_grad()
def tiled_outputs(
    model: nn.Module,
    image: torch.Tensor,
    tile: int | tuple[int, int],
    overlap: int | None = None,
    batch: int = 1,
    coords_origin: tuple[int, int] = (0, 0),
    forward=None,
) -> Outputs:
    """Outputs of ``model`` on ``image`` (C, H, W), computed tile by tile and stitched.

    ``forward(model, x (B,C,h,w), origin (B,2)) -> Outputs`` defaults to a plain forward pass
    (TTA passes its own). Returns Outputs with batch dimension 1, on the image's device.
    """
    forward = forward or _run
    divisor = model_facts(model)["size_divisor"]
    if overlap is None:
        overlap = default_overlap(model)
        cap = (tile if isinstance(tile, int) else min(tile)) // 2
        cap -= cap % (2 * divisor)
        if overlap > cap:
            log.warning(
                "receptive field needs an overlap of %d px, more than half the tile; using %d"
                " (tiles may differ from the untiled result near tile borders; use a larger"
                " --tile)",
                overlap,
                cap,
            )
            overlap = cap
    overlap = int(overlap)
    _, h, w = image.shape
    tiles = tile_grid(h, w, tile, overlap, divisor)
    stitched: dict[str, torch.Tensor] = {}
    # group same-shaped tiles into batches
    for k in range(0, len(tiles), max(1, batch)):
        group = tiles[k : k + max(1, batch)]
        shapes = {(t.y1 - t.y0, t.x1 - t.x0) for t in group}
        chunks = [group] if len(shapes) == 1 else [[t] for t in group]
        for chunk in chunks:
            x = torch.stack([image[:, t.y0 : t.y1, t.x0 : t.x1] for t in chunk])
            origin = torch.tensor(
                [[coords_origin[0] + t.y0, coords_origin[1] + t.x0] for t in chunk],
                device=image.device,
            )
            out = _dense_only(forward(model, x, origin), "tiling (--tile)").to_dict()
            for name, v in out.items():
                if name not in stitched:
                    stitched[name] = v.new_zeros((1, *v.shape[1:-2], h, w))
                for b, t in enumerate(chunk):
                    core = v[b, ..., t.cy0 - t.y0 : t.cy1 - t.y0, t.cx0 - t.x0 : t.cx1 - t.x0]
                    stitched[name][0, ..., t.cy0 : t.cy1, t.cx0 : t.cx1] = core
    return Outputs(**stitched)


# --------------------------------------------------------------------------- TTA
def _rot_vectors(v: torch.Tensor, k: int) -> torch.Tensor:
    """Rotate (dy, dx) vectors stored at dims [..., 0/1, H, W] by ``k`` quarter turns.

    Matches ``torch.rot90(x, k, dims=(-2, -1))``: one turn sends pixel (y, x) of an H x W image
    to (W - 1 - x, y), so a displacement (dy, dx) becomes (-dx, dy).
    """
    k %= 4
    if k == 0:
        return v
    dy, dx = v[..., 0:1, :, :], v[..., 1:2, :, :]
    if k == 1:
        ny, nx = -dx, dy
    elif k == 2:
        ny, nx = -dy, -dx
    else:
        ny, nx = dx, -dy
    return torch.cat([ny, nx, v[..., 2:, :, :]], dim=-3)


def _flip_vectors(v: torch.Tensor) -> torch.Tensor:
    """Mirror (dy, dx) vectors for a left-right flip: dx -> -dx."""
    return torch.cat([v[..., 0:1, :, :], -v[..., 1:2, :, :], v[..., 2:, :, :]], dim=-3)


def _semiconv_coords(t: torch.Tensor, origin: torch.Tensor | None, scale: float) -> torch.Tensor:
    """The coordinate part ``u`` the semi-conv operator adds to ``t`` (same shape as ``t``)."""
    from instembed.structures import pixel_coordinates

    b, h, w = t.shape[0], t.shape[-2], t.shape[-1]
    u = pixel_coordinates(b, (h, w), origin, scale, t.device, t.dtype)  # (B, 2, H, W)
    if t.ndim == 5:
        u = u.unsqueeze(1).expand(b, t.shape[1], 2, h, w)
    pad = torch.zeros_like(t[..., 2:, :, :])
    return torch.cat([u, pad], dim=-3)


TTA_TRANSFORMS: tuple[tuple[int, bool], ...] = tuple(
    (k, f) for f in (False, True) for k in range(4)
)


def _forward_transform(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    if flip:
        x = x.flip(-1)
    return torch.rot90(x, k, dims=(-2, -1))


def _inverse_transform(t: torch.Tensor, k: int, flip: bool, vector: bool) -> torch.Tensor:
    t = torch.rot90(t, -k, dims=(-2, -1))
    if vector:
        t = _rot_vectors(t, -k)
    if flip:
        t = t.flip(-1)
        if vector:
            t = _flip_vectors(t)
    return t


def tta_forward(
    model: nn.Module,
    x: torch.Tensor,
    origin: torch.Tensor | None = None,
    transforms: tuple[tuple[int, bool], ...] = TTA_TRANSFORMS,
) -> Outputs:
    """Average of the outputs over the symmetries ``transforms`` ((quarter turns, mirror) pairs).

    ``x`` (B, C, H, W); ``origin`` (B, 2) coords_origin of each image. Odd rotations of a
    non-square input are fine: outputs are rotated back before averaging. Vector channels are
    remapped (see module docstring).
    """
    facts = model_facts(model)
    semi, scale = facts["semiconv"], facts["coord_scale"]
    acc: dict[str, torch.Tensor] = {}
    for k, flip in transforms:
        xt = _forward_transform(x, k, flip)
        out = _dense_only(model(xt, coords_origin=origin), "test-time augmentation").to_dict()
        for name, t in out.items():
            vector = name in VECTOR_FIELDS
            if semi and name in EMBEDDING_FIELDS:
                u_t = _semiconv_coords(t, origin, scale)
                phi = _inverse_transform(t - u_t, k, flip, vector=True)
                t = phi + _semiconv_coords(phi, origin, scale)
            else:
                t = _inverse_transform(t, k, flip, vector)
            acc[name] = t if name not in acc else acc[name] + t
    n = len(transforms)
    return Outputs(**{name: t / n for name, t in acc.items()})


@torch.no_grad()
def infer(
    model: nn.Module,
    image: torch.Tensor,
    *,
    tile: int | tuple[int, int] | None = None,
    overlap: int | None = None,
    tta: bool = False,
    batch: int = 1,
) -> Outputs:
    """Outputs (batch dim 1) of ``model`` for one image (C, H, W): tiled and/or with TTA.

    Without ``tile`` the whole image is processed at once. ``image`` must be on the model's
    device; outputs are returned there.
    """
    if image.ndim != 3:
        raise ValueError(f"infer expects one image (C, H, W), got shape {tuple(image.shape)}")
    forward = (lambda m, x, o: tta_forward(m, x, o)) if tta else _run
    h, w = image.shape[-2:]
    th, tw = (tile, tile) if isinstance(tile, int) else (tile or (h, w))
    if tile is None or (th >= h and tw >= w):
        origin = torch.zeros(1, 2, dtype=torch.long, device=image.device)
        return forward(model, image[None], origin)
    return tiled_outputs(model, image, tile, overlap, batch=batch, forward=forward)

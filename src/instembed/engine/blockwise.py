"""Segmentation block by block: memory bounded by the block, recall independent of image size.

Clustering a whole large image at once has two costs that grow with the image: the network
outputs of every pixel must be held at once, and the sample-then-assign clusterers find their
centres on a grid sample of at most ``max_points`` foreground pixels, so the sample thins out as
the image grows and small objects are lost (a 4 x 4 mosaic of one BBBC039 image lost ~4 % of its
nuclei that way). Here the image is cut into **blocks**:

* the block's **core** (``block`` x ``block`` pixels; the cores partition the image);
* its **region**: the core plus a ``halo`` on every side (clipped to the image). The region's
  outputs are clustered on their own, so each clustering sees at most ``(block + 2 halo)^2``
  pixels whatever the image size;
* its **window**: the region plus ``context`` pixels (half the network's receptive field,
  rounded up to the size divisor), the input of one network pass. The region's outputs then
  equal the whole-image outputs (as in :mod:`instembed.engine.inference`'s tiling).

An instance found in a region is kept by the block whose core holds its **anchor** (the mean
pixel position of its mask, rounded down): every object is kept by exactly one block as long as
the halo is at least the object's extent beyond its anchor (its radius; worms: half their
length). Kept instances are pasted into the image's label image in block order; a pixel already
claimed by an instance of an earlier block keeps that instance (overlapping masks of mask-stack
models keep all their pixels). Only the label image (and, for mask-stack models, one cropped mask
per instance) grows with the image.

Coordinates: every window runs with ``coords_origin`` = its position in the image, so
semi-convolutional embeddings are those of the whole image and regions cluster consistently.

The steps of one block are shared with the out-of-memory version
(:mod:`instembed.engine.dask_blocks`, blocks as Dask tasks written to zarr):
:func:`window_for` + :func:`region_outputs` (the network on one window), :func:`keep_block`
(the anchor rule, drawing the kept instances on the region) and :func:`paste_first` (the first
claim wins), so both give the same label image.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from instembed.structures import Instances, Outputs

log = logging.getLogger(__name__)

DEFAULT_BLOCK = 512
DEFAULT_HALO = 64
AUTO_BLOCK_SIDE = 1024
"""Images with a side longer than this are segmented block by block even without ``--tile``."""


@dataclass(frozen=True)
class Block:
    """Core ``[cy0:cy1, cx0:cx1]`` and region ``[ry0:ry1, rx0:rx1]`` of one block (pixels)."""

    cy0: int
    cy1: int
    cx0: int
    cx1: int
    ry0: int
    ry1: int
    rx0: int
    rx1: int


def block_grid(height: int, width: int, block: int, halo: int) -> list[Block]:
    """Blocks whose cores partition an image of ``height`` x ``width`` (raster order)."""
    if block < 1 or halo < 0:
        raise ValueError(f"block must be >= 1 and halo >= 0, got block {block}, halo {halo}")
    out = []
    for cy0 in range(0, height, block):
        for cx0 in range(0, width, block):
            cy1, cx1 = min(cy0 + block, height), min(cx0 + block, width)
            out.append(
                Block(
                    cy0,
                    cy1,
                    cx0,
                    cx1,
                    max(cy0 - halo, 0),
                    min(cy1 + halo, height),
                    max(cx0 - halo, 0),
                    min(cx1 + halo, width),
                )
            )
    return out


def crop_outputs(outputs: Outputs, y0: int, y1: int, x0: int, x1: int) -> Outputs:
    """The dense fields of ``outputs`` (batch 1) cropped to rows y0:y1, columns x0:x1."""
    return Outputs(**{k: v[..., y0:y1, x0:x1] for k, v in outputs.to_dict().items()})


def _anchors(inst: Instances) -> np.ndarray:
    """(N, 2) integer (y, x) anchor of each instance of ``inst`` (numpy): the floor of the mean
    position of its pixels; -1 for an instance without pixels."""
    n = len(inst)
    out = np.full((n, 2), -1, np.int64)
    if inst.masks is not None:
        for k in range(n):
            ys, xs = np.nonzero(inst.masks[k])
            if ys.size:
                out[k] = (int(np.floor(ys.mean())), int(np.floor(xs.mean())))
        return out
    lab = inst.labels.ravel()
    h, w = inst.labels.shape
    yy, xx = np.divmod(np.arange(lab.size), w)
    cnt = np.bincount(lab, minlength=n + 1)[1:]
    sy = np.bincount(lab, weights=yy, minlength=n + 1)[1:]
    sx = np.bincount(lab, weights=xx, minlength=n + 1)[1:]
    ok = cnt > 0
    out[ok, 0] = np.floor(sy[ok] / cnt[ok]).astype(np.int64)
    out[ok, 1] = np.floor(sx[ok] / cnt[ok]).astype(np.int64)
    return out


def _extents(inst: Instances) -> list:
    """(rows, columns) slices of each instance's bounding box (numpy Instances); an empty
    instance gets empty slices."""
    from scipy import ndimage as ndi

    if inst.masks is None:
        found = ndi.find_objects(inst.labels.astype(np.int32, copy=False), max_label=len(inst))
    else:
        found = [ndi.find_objects(m.astype(np.int8), max_label=1)[0] for m in inst.masks]
    return [(slice(0, 0), slice(0, 0)) if f is None else f for f in found]


@dataclass
class KeptBlock:
    """The instances one block keeps (anchor in its core), drawn on the block's region.

    ``labels`` (region-sized int32): kept instance ``j`` (1-based, in the post-processing's
    order) on its pixels, an earlier one winning a pixel that two masks share; 0 elsewhere.
    ``scores`` (n,) float32, ``classes`` (n,) int64 or None, ``anchors`` (n, 2) whole-image
    (y, x), ``crops`` the (y0, x0, y1, x1, mask) of each kept mask in whole-image coordinates
    when the post-processing gives overlapping masks (else None), ``cut`` the number of kept
    instances touching an edge of the region that is not the image's edge (an object larger than
    the halo beyond its anchor may have been cut there).
    """

    labels: np.ndarray
    scores: np.ndarray
    classes: np.ndarray | None
    anchors: np.ndarray
    crops: list | None
    cut: int

    def __len__(self) -> int:
        return len(self.scores)


def keep_block(inst: Instances, b: Block, size: tuple[int, int]) -> KeptBlock:
    """The instances of ``inst`` (numpy, found on the region of ``b``) whose anchor lies in the
    core of ``b`` (the anchor rule of the module docstring), drawn on the region."""
    h, w = size
    rh, rw = b.ry1 - b.ry0, b.rx1 - b.rx0
    anchors = _anchors(inst) + np.array([b.ry0, b.rx0])
    keep = np.flatnonzero(
        (anchors[:, 0] >= b.cy0)
        & (anchors[:, 0] < b.cy1)
        & (anchors[:, 1] >= b.cx0)
        & (anchors[:, 1] < b.cx1)
    )
    extents = _extents(inst)
    inner = (b.ry0 > 0, b.ry1 < h, b.rx0 > 0, b.rx1 < w)  # region edges inside the image
    cut = 0
    for k in keep:
        ys, xs = extents[k]
        edges = (ys.start == 0, ys.stop == rh, xs.start == 0, xs.stop == rw)
        cut += ys.stop > ys.start and any(e and i for e, i in zip(edges, inner))
    crops = None
    if inst.masks is None:
        lut = np.zeros(len(inst) + 1, np.int32)
        lut[keep + 1] = np.arange(1, len(keep) + 1, dtype=np.int32)
        labels = lut[inst.labels]
    else:
        labels, crops = np.zeros((rh, rw), np.int32), []
        for j, k in enumerate(keep, start=1):
            sl = extents[k]  # work inside the instance's bounding box only
            m = inst.masks[k][sl]
            view = labels[sl]
            view[m & (view == 0)] = j
            y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
            crops.append((b.ry0 + y0, b.rx0 + x0, b.ry0 + y1, b.rx0 + x1, m))
    return KeptBlock(
        labels=labels,
        scores=np.asarray(inst.scores, np.float32)[keep],
        classes=None if inst.classes is None else np.asarray(inst.classes, np.int64)[keep],
        anchors=anchors[keep],
        crops=crops,
        cut=int(cut),
    )


def paste_first(view: np.ndarray, kept: np.ndarray, offset: int) -> None:
    """Paste the kept labels of a region (0 = none) into ``view`` (the same pixels of the image's
    labels) with ids shifted by ``offset``, where ``view`` is still 0: a pixel already claimed by
    an instance of an earlier block keeps it."""
    m = (kept > 0) & (view == 0)
    view[m] = kept[m] + offset


def warn_cut(cut: int, halo: int) -> None:
    if cut:
        log.warning(
            "%d instance(s) touch the edge of their block's region: objects reaching more than "
            "the halo (%d px) beyond their centre may be cut in two; use a larger halo",
            cut,
            halo,
        )


def segment_blockwise(
    region_outputs: Callable[[int, int, int, int], Outputs],
    size: tuple[int, int],
    cluster: Callable[[Outputs], Instances],
    block: int = DEFAULT_BLOCK,
    halo: int = DEFAULT_HALO,
    progress: Callable[[int, int], None] | None = None,
) -> Instances:
    """Instances of an image of ``size`` (H, W), block by block (see the module docstring).

    Args:
        region_outputs: ``(y0, y1, x0, x1) -> Outputs`` of that region (batch 1), whole-image
            coordinates.
        cluster: ``Outputs -> Instances`` (numpy), the post-processing of one region.
        block, halo: core size and halo in pixels.
        progress: called with (blocks done, blocks in all) after each block.

    Returns:
        Instances (numpy): ``labels`` (H, W) int32, scores, classes when the post-processing
        gives them, ``masks`` when it gives overlapping masks, ``semantic`` when the outputs
        have a semantic map (taken from each block's core).
    """
    h, w = size
    blocks = block_grid(h, w, block, halo)
    labels = np.zeros((h, w), np.int32)
    scores: list[np.ndarray] = []
    classes: list[np.ndarray] = []
    crops: list[tuple[int, int, int, int, np.ndarray]] = []  # (y0, x0, y1, x1, mask) per kept
    semantic: np.ndarray | None = None
    any_classes = any_masks = False
    n, cut = 0, 0
    for i, b in enumerate(blocks):
        out = region_outputs(b.ry0, b.ry1, b.rx0, b.rx1)
        inst = cluster(out)
        if out.semantic is not None:
            if semantic is None:
                semantic = np.zeros((h, w), np.int32)
            core = out.semantic[0, :, b.cy0 - b.ry0 : b.cy1 - b.ry0, b.cx0 - b.rx0 : b.cx1 - b.rx0]
            semantic[b.cy0 : b.cy1, b.cx0 : b.cx1] = core.argmax(0).cpu().numpy()
        kept = keep_block(inst, b, size)
        any_classes |= inst.classes is not None
        any_masks |= inst.masks is not None
        paste_first(labels[b.ry0 : b.ry1, b.rx0 : b.rx1], kept.labels, n)
        n += len(kept)
        cut += kept.cut
        scores.append(kept.scores)
        classes.append(kept.classes if kept.classes is not None else np.zeros(len(kept), np.int64))
        crops += kept.crops or []
        if progress is not None:
            progress(i + 1, len(blocks))
    warn_cut(cut, halo)
    masks = None
    if any_masks:
        masks = np.zeros((n, h, w), bool)
        for k, (y0, x0, y1, x1, m) in enumerate(crops):
            masks[k, y0:y1, x0:x1] = m
    return Instances(
        labels=labels,
        scores=np.concatenate(scores).astype(np.float32) if scores else np.zeros(0, np.float32),
        classes=np.concatenate(classes) if any_classes else None,
        masks=masks,
        semantic=semantic,
    )


def window_for(
    region: tuple[int, int, int, int], size: tuple[int, int], context: int, divisor: int
):
    """The network window around ``region`` (y0, y1, x0, x1): ``context`` more pixels on each
    side, clipped to the image, its start a multiple of ``divisor`` (so that pooling grids line up
    with the whole-image pass)."""
    y0, y1, x0, x1 = region
    h, w = size
    wy0 = max(y0 - context, 0) // divisor * divisor
    wx0 = max(x0 - context, 0) // divisor * divisor
    return wy0, min(y1 + context, h), wx0, min(x1 + context, w)


def region_outputs(
    model: torch.nn.Module,
    window: torch.Tensor,
    origin: tuple[int, int],
    region: tuple[int, int, int, int],
    forward: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], Outputs],
) -> Outputs:
    """``forward(model, window, origin)`` on one network window (C, h, w) whose top-left pixel
    is ``origin`` (y, x) in the image, cropped to ``region`` (y0, y1, x0, x1, whole-image
    coordinates); on the CPU, float32."""
    wy0, wx0 = origin
    y0, y1, x0, x1 = region
    with torch.no_grad():
        out = forward(model, window[None], torch.tensor([[wy0, wx0]], device=window.device))
    if out.instances is not None:
        raise ValueError(
            "block-wise segmentation combines dense output maps, but this model returns "
            "instances itself (Outputs.instances); run it on the whole image"
        )
    out = crop_outputs(out, y0 - wy0, y1 - wy0, x0 - wx0, x1 - wx0)
    return out.map(lambda t: t.float().cpu())


def network_regions(
    model: torch.nn.Module,
    image: torch.Tensor,
    forward: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], Outputs],
    context: int,
    divisor: int,
) -> Callable[[int, int, int, int], Outputs]:
    """``region_outputs`` for :func:`segment_blockwise` that runs ``forward(model, window,
    origin)`` on the window around each region of ``image`` (C, H, W) and crops the outputs to
    the region (on the CPU, float32)."""
    h, w = image.shape[-2:]

    def run(y0: int, y1: int, x0: int, x1: int) -> Outputs:
        wy0, wy1, wx0, wx1 = window_for((y0, y1, x0, x1), (h, w), context, divisor)
        window = image[:, wy0:wy1, wx0:wx1]
        return region_outputs(model, window, (wy0, wx0), (y0, y1, x0, x1), forward)

    return run


def auto_block(size: tuple[int, int], tile: int | None) -> int | None:
    """The block size to use: ``tile`` when given, ``DEFAULT_BLOCK`` for an image with a side
    over ``AUTO_BLOCK_SIDE`` (logged), else None (whole image at once)."""
    if tile is not None:
        return int(tile)
    if max(size) > AUTO_BLOCK_SIDE:
        log.info(
            "image of %d x %d px: segmented block by block (%d px blocks; --tile sets the size)",
            size[0],
            size[1],
            DEFAULT_BLOCK,
        )
        return DEFAULT_BLOCK
    return None


def n_blocks(size: tuple[int, int], block: int) -> int:
    return math.ceil(size[0] / block) * math.ceil(size[1] / block)

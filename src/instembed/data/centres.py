"""Object centres computed on the whole image and carried through augmentation.

The spatial-embedding loss (Neven et al. 2019) pulls every pixel of an object towards one
centre. By default it uses the centroid of the object's pixels *in the training crop*; for a
curved object (a C. elegans worm of BBBC010) the centroid may lie off the object, and a crop
that cuts the object gets another centre than the whole object has. This module computes a
centre per object on the whole image, once, and stores it in ``sample.meta["centres"]``; the
geometric transforms of :mod:`instembed.data.transforms` map it exactly like pixel coordinates,
and :func:`instembed.data.dataset.sample_to_item` hands it to the loss in crop coordinates.

Methods (:data:`CENTRE_METHODS`; ``"centroid"`` = no stored centre, the loss computes the
per-crop centroid as before):

* ``"image_centroid"``: the mean pixel coordinate of the whole object (may lie off the object).
* ``"medoid"``: the object pixel ``m`` minimising ``sum_q |m - q|`` (Euclidean distance) over
  all pixels ``q`` of the object -- always on the object. EmbedSeg (Lalit et al. 2021, "Embedding-
  based instance segmentation in microscopy") uses it on BBBC010. Exact, ``O(P^2)`` for an object
  of ``P`` pixels, evaluated in row blocks (about 0.1 s for P = 5000 on one CPU core).
* ``"approx_medoid"``: the same objective evaluated on a block summary. The object's pixels are
  binned into ``s x s`` blocks (``s`` = ``stride``, default 3); each non-empty block ``b`` is
  summarised by its pixel count ``n_b`` and mean ``mu_b``, and offers one candidate, its object
  pixel nearest to ``mu_b``. The candidate minimising ``sum_b n_b |c - mu_b|`` is returned.
  Cost ``O(P^2 / s^4)``. **Error bound**: with ``f(p) = 1/P sum_q |p - q|`` (mean distance, the
  medoid's objective) and ``d = (s - 1) sqrt(2)`` (a block's diameter),
  ``f(approx) <= f(medoid) + 3 d`` (``3 d`` = 8.5 px for ``s = 3``). Proof: ``f`` is
  1-Lipschitz; replacing each pixel by its block mean changes ``f`` by at most ``d`` everywhere
  (``|f~ - f| <= d``); the candidate ``c*`` of the medoid's block is within ``d`` of it, so
  ``f(c) <= f~(c) + d <= f~(c*) + d <= f(c*) + 2 d <= f(medoid) + 3 d``. The result is always
  an object pixel.

Centres are ``(N, 2)`` float64 ``(y, x)`` in pixel units, row ``k - 1`` for label id ``k`` of a
label image (NaN for ids the image lacks), row ``k`` for mask ``k`` of a mask stack (a stack's
masks keep their overlapping pixels, so a worm's medoid is that of its full mask). In
``meta["centres"]`` they are expressed in the sample's *frame* (see
:mod:`instembed.data.transforms`): image pixel ``(i, j)`` is frame pixel ``coords_origin +
(i, j)``, so a crop leaves them unchanged and only flips, rotations, scalings and elastic
deformations move them.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from instembed.data.sample import Sample

CENTRE_METHODS = ("centroid", "image_centroid", "medoid", "approx_medoid")
"""Values of ``data.center``; ``"centroid"`` (default) keeps the loss's per-crop centroid."""

_BLOCK = 4_000_000  # distance-matrix entries evaluated at once (32 MB of float64)


def _mean_distance_costs(cand: np.ndarray, pts: np.ndarray, weights=None) -> np.ndarray:
    """``cost[i] = sum_j w_j |cand_i - pts_j|`` (Euclidean), in row blocks."""
    out = np.empty(len(cand), np.float64)
    step = max(1, _BLOCK // max(len(pts), 1))
    for a in range(0, len(cand), step):
        c = cand[a : a + step]
        d = np.sqrt(((c[:, None, :] - pts[None, :, :]) ** 2).sum(-1))
        out[a : a + step] = d.sum(1) if weights is None else d @ weights
    return out


def _as_coords(mask_or_coords: np.ndarray) -> np.ndarray:
    a = np.asarray(mask_or_coords)
    if a.dtype == bool:
        if a.ndim != 2:
            raise ValueError(f"mask must be (H, W) bool, got shape {a.shape}")
        return np.argwhere(a).astype(np.float64)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"coords must be (P, 2) (y, x), got shape {a.shape}")
    return a.astype(np.float64)


def medoid(mask_or_coords: np.ndarray) -> np.ndarray:
    """``(y, x)`` of the object pixel with the smallest summed Euclidean distance to all pixels
    of the object (ties: the first in row-major order). Accepts an ``(H, W)`` bool mask or
    ``(P, 2)`` pixel coordinates; an empty object gives ``(nan, nan)``."""
    pts = _as_coords(mask_or_coords)
    if len(pts) == 0:
        return np.full(2, np.nan)
    return pts[int(np.argmin(_mean_distance_costs(pts, pts)))].copy()


def approx_medoid(mask_or_coords: np.ndarray, stride: int = 3) -> np.ndarray:
    """Block-summary approximation of :func:`medoid` (module doc: method and error bound
    ``f(approx) <= f(medoid) + 3 (stride - 1) sqrt(2)``); ``stride <= 1`` is the exact medoid."""
    pts = _as_coords(mask_or_coords)
    if len(pts) == 0:
        return np.full(2, np.nan)
    stride = int(stride)
    if stride <= 1:
        return medoid(pts)
    blk = np.floor(pts / stride).astype(np.int64)
    blk -= blk.min(0)
    key = blk[:, 0] * (int(blk[:, 1].max()) + 1) + blk[:, 1]
    _, inv, counts = np.unique(key, return_inverse=True, return_counts=True)
    nb = len(counts)
    means = np.stack([np.bincount(inv, pts[:, i], nb) for i in (0, 1)], 1) / counts[:, None]
    # candidate of each block: its pixel nearest to the block mean (ties: first pixel)
    dist = np.sqrt(((pts - means[inv]) ** 2).sum(1))
    order = np.lexsort((np.arange(len(pts)), dist, inv))
    first = order[np.r_[True, inv[order][1:] != inv[order][:-1]]]
    cand = pts[first]
    cost = _mean_distance_costs(cand, means, counts.astype(np.float64))
    return cand[int(np.argmin(cost))].copy()


def _centre(coords: np.ndarray, method: str, stride: int) -> np.ndarray:
    if len(coords) == 0:
        return np.full(2, np.nan)
    if method == "image_centroid":
        return coords.mean(0)
    if method == "medoid":
        return medoid(coords)
    return approx_medoid(coords, stride)


def object_centres(instances: np.ndarray, method: str = "medoid", stride: int = 3) -> np.ndarray:
    """``(N, 2)`` float64 ``(y, x)`` centres of the objects of a label image ``(H, W)`` (row
    ``k - 1`` = id ``k``, ``N`` = largest id, NaN for absent ids) or a bool mask stack
    ``(N, H, W)`` (row ``k`` = mask ``k``, NaN for empty masks)."""
    if method not in CENTRE_METHODS[1:]:
        raise ValueError(
            f'centre method must be one of {CENTRE_METHODS[1:]} ("centroid" is computed by the '
            f"loss per crop), got {method!r}"
        )
    inst = np.asarray(instances)
    if inst.ndim == 3:
        return np.stack([_centre(np.argwhere(m).astype(np.float64), method, stride) for m in inst])
    if inst.ndim != 2:
        raise ValueError(f"instances must be (H, W) or (N, H, W), got shape {inst.shape}")
    n = int(inst.max(initial=0))
    out = np.full((n, 2), np.nan)
    if n == 0:
        return out
    flat = inst.ravel()
    order = np.argsort(flat, kind="stable")
    ids = flat[order]
    starts = np.searchsorted(ids, np.arange(1, n + 2))
    w = inst.shape[1]
    for k in range(1, n + 1):
        idx = order[starts[k - 1] : starts[k]]
        if len(idx):
            coords = np.stack([idx // w, idx % w], 1).astype(np.float64)
            out[k - 1] = _centre(coords, method, stride)
    return out


def with_centres(
    sample: Sample, method: str, stride: int = 3, centres: np.ndarray | None = None
) -> Sample:
    """The sample with ``meta["centres"]`` set (frame coordinates, module doc), computed on the
    sample as given (call it on the whole image, before cropping) unless ``centres`` (in the
    sample's pixel coordinates, e.g. a cached result) are passed. ``method="centroid"``
    returns the sample unchanged."""
    if method == "centroid":
        return sample
    if centres is None:
        centres = object_centres(sample.instances, method, stride)
    y0, x0 = sample.meta.get("coords_origin", (0, 0))
    meta = dict(sample.meta)
    meta["centres"] = np.asarray(centres, np.float64) + np.array([y0, x0], np.float64)
    return replace(sample, meta=meta)

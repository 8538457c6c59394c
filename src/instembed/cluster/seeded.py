"""Seeded clustering with a learned bandwidth (Neven et al. 2019, "Instance segmentation by
jointly optimizing spatial embeddings and clustering bandwidth"; Novotny et al. 2018,
"Semi-convolutional operators for instance segmentation", Laplacian kernel variant).

The network predicts per pixel an embedding e, a seed (seediness) score and a bandwidth sigma.
Seeds are visited in descending seed score among foreground pixels that are not clustered yet:

* stop when the best remaining seed score is below ``seed_thresh`` or when at most ``min_size``
  foreground pixels remain unclustered;
* the seed s proposes the pixels where its kernel exceeds ``prob_thresh``:
  Gaussian ``exp(-q2)`` (Neven) or Laplacian ``exp(-sqrt(q2))`` (Novotny), with
  ``q2 = sum_j scale_sj (e_j - e_sj)^2`` and the scale from the seed's own sigma;
* the proposal becomes an instance when it has more than ``min_size`` pixels and more than
  ``new_fraction`` of them are still unclustered ("mostly new pixels"); either way its pixels
  (and the seed) leave the pool of unclustered pixels (the seed itself counts as a new pixel;
  SpatialEmbeddings removes it before counting, which rejects every one-pixel instance);
* the instance's score is its seed score;
* with ``connected`` each instance then keeps only its pixels in its main piece of foreground
  (the 8-connected component of the foreground holding most of its pixels,
  :func:`instembed.cluster.postprocess.main_pieces`; pieces joined through another instance,
  as a worm crossed by another, stay), the rest becomes background.

The kernel groups pixels by embedding only, so nothing above makes an instance spatially
coherent: on a noisy, empty field or a dim object the pixels that vote for one centre can lie
scattered over the image (dozens of pieces of a few pixels each). ``connected`` removes those
pieces (``min_size`` then drops what is left of an instance that was only scattered pixels);
SpatialEmbeddings has no such step. Default off (the behaviour before the option existed).
Overlapping masks (``overlap_thresh``, :func:`overlap_masks`) start from the cleaned labels.

``sigma_mode`` says how the sigma map turns into the scale of q2 (default ``"std"``, the convention of
``instembed.models``: the ``sigma`` head outputs sigma itself, > 0, in embedding units):
``"neven"`` scale = exp(10 sigma)
(SpatialEmbeddings' and EmbedSeg's parameterisation of the raw head output), ``"std"`` sigma is a
standard deviation (Gaussian: scale = 1 / (2 sigma^2); Laplacian: scale = 1 / sigma^2, i.e.
``exp(-|e - e_s| / sigma)`` as in Novotny's steered bilateral kernel), ``"scale"`` the map already
is the scale. sigma has 1 channel (isotropic) or one per embedding dimension.

Pixels covered by several instances go to the one with the highest kernel value (the nearest in
its scaled metric); SpatialEmbeddings lets the later instance overwrite the earlier one instead.

For speed the seed loop runs on a grid sample of at most ``max_points`` foreground pixels (pixel
counts are estimated as sample counts times step^2; exact when the foreground is smaller than
``max_points``), then every foreground pixel is assigned in one pass
(:func:`instembed.cluster.assign.assign_labels`). Compiles with ``torch.jit.script``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from instembed.cluster.assign import assign_labels
from instembed.cluster.postprocess import main_pieces
from instembed.cluster.sampling import grid_sample, grid_step
from instembed.cluster.threads import one_intra_op_thread


def sigma_to_scale(sigma: Tensor, sigma_mode: str = "std", kernel: str = "gaussian") -> Tensor:
    """Scale of the squared distance q2 from a sigma map or vector (see the module docstring).

    Args:
        sigma: any shape.
        sigma_mode: "neven", "std" or "scale".
        kernel: "gaussian" or "laplacian".
    """
    if sigma_mode == "neven":
        return torch.exp(10.0 * sigma)
    if sigma_mode == "std":
        s2 = (sigma * sigma).clamp(min=1e-12)
        if kernel == "gaussian":
            return 0.5 / s2
        return 1.0 / s2
    if sigma_mode == "scale":
        return sigma
    raise ValueError(f"sigma_mode must be 'neven', 'std' or 'scale', got '{sigma_mode}'")


def kernel_q2_threshold(prob_thresh: float, kernel: str = "gaussian") -> float:
    """Largest q2 with kernel value above ``prob_thresh`` (Gaussian exp(-q2), Laplacian
    exp(-sqrt(q2)))."""
    if not 0.0 < prob_thresh < 1.0:
        raise ValueError(f"prob_thresh must be in (0, 1), got {prob_thresh}")
    if kernel == "gaussian":
        return -math.log(prob_thresh)
    if kernel == "laplacian":
        return math.log(prob_thresh) ** 2
    raise ValueError(f"kernel must be 'gaussian' or 'laplacian', got '{kernel}'")


def seeded_cluster(
    embedding: Tensor,
    seed: Tensor,
    sigma: Tensor,
    foreground: Tensor | None = None,
    fg_thresh: float = 0.5,
    seed_thresh: float = 0.9,
    min_size: int = 128,
    new_fraction: float = 0.5,
    prob_thresh: float = 0.5,
    kernel: str = "gaussian",
    sigma_mode: str = "std",
    max_points: int = 16384,
    stride: int = 4,
    connected: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Seeded clustering of one image (see the module docstring).

    Args:
        embedding: (E, H, W) float.
        seed: (H, W) or (1, H, W) seed score in [0, 1].
        sigma: (S, H, W) with S = 1 or E (or (H, W)).
        foreground: (H, W) bool; None: ``seed > fg_thresh``.
        fg_thresh: foreground threshold on the seed map when ``foreground`` is None.
        seed_thresh: lowest seed score that may start an instance.
        min_size: a proposal needs more than this many pixels; the loop stops when at most this
            many foreground pixels are unclustered.
        new_fraction: a proposal needs more than this fraction of unclustered pixels.
        prob_thresh: kernel threshold of a proposal.
        kernel: "gaussian" or "laplacian".
        sigma_mode: "neven", "std" or "scale".
        max_points: size of the grid sample of the seed loop.
        stride: grid step of the final assignment (speed only).
        connected: keep only each instance's pixels in its main 8-connected piece of
            foreground (:func:`instembed.cluster.postprocess.main_pieces`).

    Returns:
        labels (H, W) int64 (0 = background, 1..K in order of decreasing seed score),
        scores (K,) seed scores, centers (K, E) seed embeddings.
    """
    if torch.jit.is_scripting():
        return _seeded_cluster(
            embedding,
            seed,
            sigma,
            foreground,
            fg_thresh,
            seed_thresh,
            min_size,
            new_fraction,
            prob_thresh,
            kernel,
            sigma_mode,
            max_points,
            stride,
            connected,
        )
    with one_intra_op_thread():  # see instembed.cluster.threads
        return _seeded_cluster(
            embedding,
            seed,
            sigma,
            foreground,
            fg_thresh,
            seed_thresh,
            min_size,
            new_fraction,
            prob_thresh,
            kernel,
            sigma_mode,
            max_points,
            stride,
            connected,
        )


def _seeded_cluster(
    embedding: Tensor,
    seed: Tensor,
    sigma: Tensor,
    foreground: Tensor | None,
    fg_thresh: float,
    seed_thresh: float,
    min_size: int,
    new_fraction: float,
    prob_thresh: float,
    kernel: str,
    sigma_mode: str,
    max_points: int,
    stride: int,
    connected: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    e, h, w = embedding.shape
    seed2 = seed.reshape(h, w).to(embedding.dtype)
    sig = sigma.reshape(-1, h, w).to(embedding.dtype)
    ns = sig.shape[0]
    if ns != 1 and ns != e:
        raise ValueError(f"sigma must have 1 or E = {e} channels, got {ns}")
    q2_max = kernel_q2_threshold(prob_thresh, kernel)
    if foreground is None:
        fg = seed2 > fg_thresh
    else:
        if foreground.shape[0] != h or foreground.shape[1] != w:
            raise ValueError(f"foreground must be ({h}, {w}), got {list(foreground.shape)}")
        fg = foreground.to(torch.bool)
    n_fg = int(fg.count_nonzero().item())
    empty_scores = torch.zeros(0, dtype=embedding.dtype, device=embedding.device)
    if n_fg == 0:
        return (
            torch.zeros(h, w, dtype=torch.long, device=embedding.device),
            empty_scores,
            embedding.new_zeros((0, e)),
        )
    step = grid_step(n_fg, max_points)
    weight = step * step
    # sample each map on the grid (no full-size concatenation of the maps)
    pts, flat = grid_sample(embedding, fg, step)  # (E, M), (M,)
    scale = sigma_to_scale(sig.reshape(ns, -1).index_select(1, flat), sigma_mode, kernel)
    score = seed2.reshape(-1).index_select(0, flat)  # (M,)
    if torch.jit.is_scripting():
        accepted, scores = _seed_loop(
            pts, scale, score, q2_max, weight, min_size, seed_thresh, new_fraction
        )
    elif pts.device.type == "cpu" and pts.dtype in (torch.float32, torch.float64):
        # the same steps in numpy: ~25 tiny operations per seed, each ~3x cheaper to launch
        accepted, scores = _seed_loop_numpy(
            pts.detach().numpy(),
            scale.detach().numpy(),
            score.detach().numpy(),
            q2_max,
            weight,
            min_size,
            seed_thresh,
            new_fraction,
        )
    else:
        accepted, scores = _seed_loop(
            pts, scale, score, q2_max, weight, min_size, seed_thresh, new_fraction
        )
    centers: list[Tensor] = [pts[:, i] for i in accepted]
    scales: list[Tensor] = [scale[:, i] for i in accepted]
    if len(centers) == 0:
        return (
            torch.zeros(h, w, dtype=torch.long, device=embedding.device),
            empty_scores,
            embedding.new_zeros((0, e)),
        )
    cen = torch.stack(centers)  # (K, E)
    sc = torch.stack(scales)  # (K, S)
    # nearest centre in its own scaled metric; pixels outside that centre's kernel -> 0
    labels = assign_labels(embedding, fg, cen, sc, stride, q2_max)
    if connected:
        labels = main_pieces(labels)
    return labels, torch.tensor(scores, dtype=embedding.dtype, device=embedding.device), cen


def _seed_loop(
    pts: Tensor,
    scale: Tensor,
    score: Tensor,
    q2_max: float,
    weight: int,
    min_size: int,
    seed_thresh: float,
    new_fraction: float,
) -> tuple[list[int], list[float]]:
    """The seed loop on the sample: pts (E, M), scale (S, M), score (M,). Returns the sample
    index and the score of each accepted seed, in order."""
    e, m = pts.shape
    ns = scale.shape[0]
    # seed score of the unclustered points, -inf once clustered
    avail = score.clone()
    n_unclustered = m
    accepted: list[int] = []
    scores: list[float] = []
    while n_unclustered * weight > min_size:
        i = int(avail.argmax().item())
        best = float(avail[i].item())
        if best < seed_thresh:
            break
        c = pts[:, i]
        s = scale[:, i]
        # one dimension at a time: (M,) operations, below PyTorch's parallel grain size, so the
        # loop never waits on OpenMP barriers (slow on a loaded machine)
        q2 = torch.zeros(m, dtype=pts.dtype, device=pts.device)
        for j in range(e):
            diff = pts[j] - c[j]
            if ns == 1:
                q2.addcmul_(diff, diff)
            else:
                q2.addcmul_(diff * s[j], diff)
        if ns == 1:
            q2 = q2 * s[0]
        proposal = q2 < q2_max
        n_prop = int(proposal.sum().item())
        # the seed is unclustered and inside its own proposal (q2 = 0), so it counts as a new
        # pixel (SpatialEmbeddings removes it first, which rejects every one-pixel instance)
        proposal[i] = True
        n_new = int((proposal & (avail > float("-inf"))).sum().item())
        if n_prop * weight > min_size and n_new > new_fraction * n_prop:
            accepted.append(i)
            scores.append(best)
        avail.masked_fill_(proposal, float("-inf"))
        n_unclustered -= n_new
    return accepted, scores


@torch.jit.unused
def _seed_loop_numpy(
    pts: np.ndarray,
    scale: np.ndarray,
    score: np.ndarray,
    q2_max: float,
    weight: int,
    min_size: int,
    seed_thresh: float,
    new_fraction: float,
) -> tuple[list[int], list[float]]:
    """:func:`_seed_loop` step for step (same operations in the same order) in numpy."""
    e, m = pts.shape
    ns = scale.shape[0]
    avail = score.copy()
    n_unclustered = m
    accepted: list[int] = []
    scores: list[float] = []
    while n_unclustered * weight > min_size:
        i = int(avail.argmax())
        best = float(avail[i])
        if best < seed_thresh:
            break
        s = scale[:, i]
        q2 = np.zeros(m, dtype=pts.dtype)
        for j in range(e):
            diff = pts[j] - pts[j, i]
            if ns == 1:
                q2 += diff * diff
            else:
                q2 += (diff * s[j]) * diff
        if ns == 1:
            q2 = q2 * s[0]
        proposal = q2 < q2_max
        n_prop = int(np.count_nonzero(proposal))
        proposal[i] = True
        n_new = int(np.count_nonzero(proposal & (avail > -np.inf)))
        if n_prop * weight > min_size and n_new > new_fraction * n_prop:
            accepted.append(i)
            scores.append(best)
        avail[proposal] = -np.inf
        n_unclustered -= n_new
    return accepted, scores


def overlap_masks(
    embedding: Tensor,
    sigma: Tensor,
    labels: Tensor,
    centers: Tensor,
    foreground: Tensor,
    overlap_thresh: float = 0.5,
    kernel: str = "gaussian",
    sigma_mode: str = "std",
) -> Tensor:
    """Overlapping instance masks from a seeded clustering (objects that cross, e.g. worms).

    Instance k keeps its own pixels (``labels == k``) and also takes every foreground pixel whose
    kernel value to its centre exceeds ``overlap_thresh`` although another centre is nearer:
    ``exp(-q2) > overlap_thresh`` (Gaussian) with ``q2 = sum_j scale_kj (e_j - c_kj)^2``. The
    scale of instance k comes from the mean sigma over its pixels (the quantity the spatial
    embedding loss pulls every pixel's sigma towards, Neven et al. 2019).

    Args:
        embedding: (E, H, W); sigma: (S, H, W) with S = 1 or E.
        labels: (H, W) int64, 0 = background, instances 1..K.
        centers: (K, E) centre of instance k + 1 (the seed embedding).
        foreground: (H, W) bool.
        overlap_thresh: kernel value in (0, 1) above which a pixel joins a second instance.
        kernel, sigma_mode: as in :func:`seeded_cluster`.

    Returns:
        (K, H, W) bool; ``masks[k]`` contains ``labels == k + 1``.
    """
    q2_max = kernel_q2_threshold(overlap_thresh, kernel)
    e, h, w = embedding.shape
    k = int(centers.shape[0])
    lab = labels.reshape(-1)
    masks = torch.zeros(k, h * w, dtype=torch.bool, device=labels.device)
    if k == 0:
        return masks.reshape(0, h, w)
    masks[lab[lab > 0] - 1, (lab > 0).nonzero().squeeze(1)] = True
    fg = (foreground.reshape(-1).to(torch.bool)) | (lab > 0)
    flat = fg.nonzero().squeeze(1)
    pts = embedding.reshape(e, -1).index_select(1, flat)  # (E, M)
    sig = sigma.reshape(sigma.shape[0], -1).to(embedding.dtype)
    # mean sigma of each instance: (S, K)
    counts = torch.bincount(lab, minlength=k + 1)[1:].clamp(min=1).to(embedding.dtype)
    sums = torch.zeros(sig.shape[0], k + 1, dtype=embedding.dtype, device=embedding.device)
    sums.index_add_(1, lab, sig)
    scale = sigma_to_scale(sums[:, 1:] / counts, sigma_mode, kernel)  # (S, K)
    for i in range(k):
        d = pts - centers[i].to(pts.dtype)[:, None]
        q2 = (d * d * scale[:, i : i + 1]).sum(0)
        masks[i, flat[q2 < q2_max]] = True
    return masks.reshape(k, h, w)

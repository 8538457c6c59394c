"""Spatial embedding loss of Neven et al. (2019, "Instance segmentation by jointly optimizing
spatial embeddings and clustering bandwidth").

The network's spatial embedding is e_i = x_i + o_i (pixel coordinate + predicted offset): in
instembed the first two dims of a semi-convolutional ``outputs.embedding`` (build the model
with ``semiconv=True``; ``coord_scale`` must match the model's). For instance S_k::

    sigma_k   = 1/|S_k| sum_{i in S_k} sigma_i                   (learnable bandwidth, S = 1 or 2)
    C_k       = centroid 1/|S_k| sum x_i (``center="centroid"``) or mean embedding
                1/|S_k| sum e_i (``center="mean_embedding"``, the paper's learnable centre);
                with ``centres`` given (the batch's ``"centres"``, whole-image medoids etc. of
                :mod:`instembed.data.centres`) and ``center="centroid"``, C_k is the given
                centre of instance k instead, (c_k + coords_origin) * coord_scale
    phi_k(e_i) = exp( - sum_d (e_id - C_kd)^2 / (2 sigma_kd^2) )  (Gaussian score)
    L_inst    = Lovász hinge of the logits 2 phi_k - 1 against the mask of S_k, over all
                non-ignored pixels of the image; mean over instances
    L_smooth  = 1/|S_k| sum_{i in S_k} ||sigma_i - sigma_k||^2; mean over instances
    L_seed    = 1/N ( sum_{i in bg} s_i^2 + w_fg sum_k sum_{i in S_k} (s_i - phi_k(e_i))^2 ),
                phi detached, N = non-ignored pixels of the image
    L         = w_instance L_inst + w_smooth L_smooth + w_seed L_seed

Overlapping ground truth (mask stacks such as BBBC010's worms): the label image gives pixels of
several masks to none and ignores them (``overlaps="ignore"``, the default). With
``overlaps="full"`` and the batch's ``instance_masks``, those pixels take part again: the mask of
S_k in L_inst is instance k's *full* mask, and a pixel of several masks gets the seed target
max_k phi_k(e_i) (the bandwidth terms still average over the pixels of one mask only). A pixel
has one embedding, so it cannot lie at two centres: "full" asks each worm's Gaussian to reach over
the crossing as far as its margin allows, instead of leaving the crossing unsupervised.

The weights the paper leaves open follow the authors' released training code: w_instance = 1,
w_smooth = 10, w_seed = 1, w_fg = 1 (10 in their Cityscapes car setting). ``outputs.sigma`` is
sigma itself (> 0, in embedding units). Batch reduction: mean over images; an image without
instances contributes its seed term only (push the seed map to 0).

:class:`SpatialEmbeddingLoss` uses ``outputs.embedding``; a model with an ``offset`` head and no
embedding gets ``e = (u + offset) * coord_scale`` (u, offset in pixels) instead.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from instembed.losses.lovasz import lovasz_hinge_rows
from instembed.losses.segments import check_spatial, find_segments, pixels_of, segment_sum
from instembed.structures import DEFAULT_COORD_SCALE, pixel_coordinates

log = logging.getLogger(__name__)
_WARNED: set[str] = set()


def _given_centres(
    centres, segs, b: int, coords_origin, coord_scale: float, device, dtype
) -> torch.Tensor:
    """(S, 2) embedding-space centres of the segments from per-image (N_i, 2) pixel centres
    (row k - 1 = label id k, crop pixel coordinates)."""
    if len(centres) != b:
        raise ValueError(f"centres: expected one (N, 2) tensor per image ({b}), got {len(centres)}")
    origin = torch.zeros(b, 2, device=device, dtype=dtype)
    if coords_origin is not None:
        origin = torch.as_tensor(coords_origin, device=device).to(dtype).reshape(b, 2)
    flat = torch.cat([torch.as_tensor(c, device=device).to(dtype).reshape(-1, 2) for c in centres])
    start = torch.tensor([0] + [len(c) for c in centres], device=device).cumsum(0)[:-1]
    n = torch.tensor([len(c) for c in centres], device=device)
    img, lab = segs.seg_image.long(), segs.seg_label.long()
    if bool(((lab < 1) | (lab > n[img])).any()):
        raise ValueError(
            "centres: a label id has no centre row (expected row k - 1 for label k, per image "
            f"counts {n.tolist()}, labels up to {int(lab.max())})"
        )
    c = flat[start[img] + lab - 1]
    if not bool(torch.isfinite(c).all()):
        raise ValueError("centres: NaN/inf centre for an instance present in the labels")
    return (c + origin[img]) * coord_scale


def spatial_embedding_loss(
    embedding: torch.Tensor,
    sigma: torch.Tensor,
    seed: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore: torch.Tensor | None = None,
    coords_origin: torch.Tensor | None = None,
    coord_scale: float = DEFAULT_COORD_SCALE,
    center: str = "centroid",
    w_instance: float = 1.0,
    w_smooth: float = 10.0,
    w_seed: float = 1.0,
    foreground_weight: float = 1.0,
    centres: list[torch.Tensor] | None = None,
    overlaps: str = "ignore",
    instance_masks: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """embedding (B, E >= 2, H, W) with coordinates added; sigma (B, S, H, W) S in {1, 2};
    seed (B, 1, H, W) in [0, 1]; labels (B, H, W); ``centres`` (optional) one (N_i, 2) tensor
    of (y, x) pixel centres per image, row k - 1 for label k, in the image's (crop's) pixel
    coordinates. ``overlaps="full"``: ``instance_masks`` (one (N_i, H, W) bool tensor per image,
    row k - 1 = instance k of ``labels``) are the instances' masks, pixels of several masks
    included (module docstring). Returns ``(total, {"instance", "smooth", "seed"})``."""
    if center not in ("centroid", "mean_embedding"):
        raise ValueError(f"center must be 'centroid' or 'mean_embedding', got {center!r}")
    if overlaps not in ("ignore", "full"):
        raise ValueError(f"overlaps must be 'ignore' or 'full', got {overlaps!r}")
    if overlaps == "full" and instance_masks is None:
        raise ValueError("overlaps='full' needs the batch's instance_masks (one per image)")
    check_spatial(embedding, labels, "embedding")
    check_spatial(sigma, labels, "sigma")
    check_spatial(seed, labels, "seed")
    if embedding.shape[1] < 2 or sigma.shape[1] not in (1, 2) or seed.shape[1] != 1:
        raise ValueError(
            "spatial loss needs embedding E >= 2, sigma S in {1, 2}, seed 1 channel; got "
            f"E={embedding.shape[1]}, S={sigma.shape[1]}, seed {seed.shape[1]}"
        )
    b, _, h, w = embedding.shape
    e2 = embedding[:, :2]
    segs = find_segments(labels, ignore)
    xe = pixels_of(e2, segs)  # (P, 2)
    xs = pixels_of(sigma, segs)  # (P, S)
    sig_k = segs.mean(xs)  # (S_, S)
    if centres is not None and center == "mean_embedding" and "mean" not in _WARNED:
        _WARNED.add("mean")
        log.warning("spatial loss: center='mean_embedding' ignores the batch's given centres")
    if center == "centroid" and centres is not None:
        ctr = _given_centres(
            centres, segs, b, coords_origin, coord_scale, embedding.device, embedding.dtype
        )
    elif center == "centroid":
        u = pixel_coordinates(
            b, (h, w), coords_origin, coord_scale, embedding.device, embedding.dtype
        )
        ctr = segs.mean(pixels_of(u, segs))
    else:
        ctr = segs.mean(xe)
    smooth_k = segment_sum(((xs - sig_k[segs.seg]) ** 2).sum(1), segs.seg, segs.num_segments)
    smooth_k = smooth_k / segs.counts.to(xs.dtype)

    valid = torch.ones(b, h * w, dtype=torch.bool, device=labels.device)
    if ignore is not None:
        valid &= ~ignore.reshape(b, -1).bool()
    full = _full_masks(instance_masks, b, (h, w), labels.device) if overlaps == "full" else None
    if full is not None:  # the pixels of several masks take part again
        valid |= torch.stack([m.sum(0).reshape(-1) > 1 for m in full])
    flat_e = e2.reshape(b, 2, -1)
    flat_s = seed.reshape(b, -1)
    flat_l = labels.reshape(b, -1)
    inst, smooth, seed_t = [], [], []
    for i in range(b):
        v = valid[i]
        k_idx = (segs.seg_image == i).nonzero().squeeze(1)
        ev = flat_e[i][:, v].T  # (Pv, 2)
        sv = flat_s[i][v]
        seed_sq = sv**2  # background target 0
        n_valid = max(int(v.sum()), 1)
        if k_idx.numel() == 0:
            inst.append(ev.new_zeros(()))
            smooth.append(ev.new_zeros(()))
            seed_t.append(seed_sq.sum() / n_valid)
            continue
        c = ctr[k_idx]  # (K, 2)
        s = sig_k[k_idx].expand(-1, 2) if sig_k.shape[1] == 1 else sig_k[k_idx]  # (K, 2)
        d2 = ((ev.unsqueeze(0) - c.unsqueeze(1)) ** 2 / (2 * s.unsqueeze(1) ** 2)).sum(-1)
        phi = torch.exp(-d2)  # (K, Pv)
        lab_v = flat_l[i][v]
        if full is None:
            gt = lab_v.unsqueeze(0) == segs.seg_label[k_idx].unsqueeze(1)  # (K, Pv)
        else:  # instance k's whole mask (row k - 1), overlaps included
            gt = full[i].reshape(full[i].shape[0], -1)[segs.seg_label[k_idx].long() - 1][:, v]
        inst.append(lovasz_hinge_rows(2 * phi - 1, gt).mean())
        smooth.append(smooth_k[k_idx].mean())
        # phi of each fg pixel's own instance (the largest of its masks'), 0 on bg
        phi_own = (phi.detach() * gt).amax(0)
        fg = gt.any(0)
        per_px = torch.where(fg, foreground_weight * (sv - phi_own) ** 2, seed_sq)
        seed_t.append(per_px.sum() / n_valid)
    terms = {
        "instance": torch.stack(inst).mean(),
        "smooth": torch.stack(smooth).mean(),
        "seed": torch.stack(seed_t).mean(),
    }
    total = w_instance * terms["instance"] + w_smooth * terms["smooth"] + w_seed * terms["seed"]
    return total + 0.0 * (embedding.sum() + sigma.sum()), terms


def _full_masks(masks, b: int, size: tuple[int, int], device) -> list[torch.Tensor]:
    """The batch's ``instance_masks`` checked: one (N_i, H, W) bool tensor per image."""
    if len(masks) != b:
        raise ValueError(
            f"instance_masks: expected one (N, H, W) tensor per image ({b}), got {len(masks)}"
        )
    out = []
    for i, m in enumerate(masks):
        m = torch.as_tensor(m, device=device).bool()
        if m.ndim != 3 or tuple(m.shape[1:]) != tuple(size):
            raise ValueError(
                f"instance_masks[{i}]: expected (N, {size[0]}, {size[1]}), got {tuple(m.shape)}"
            )
        out.append(m)
    return out


class SpatialEmbeddingLoss(nn.Module):
    """Reads ``outputs.embedding/sigma/seed`` and ``batch["labels"|"ignore"|"coords_origin"]``
    (and ``batch["centres"]`` when the data stage computed them)."""

    def __init__(self, **params) -> None:
        super().__init__()
        self.params = params

    def forward(self, outputs, batch: dict):
        emb = outputs.embedding
        if emb is None and outputs.offset is not None:  # e = (u + offset in pixels) * scale
            scale = self.params.get("coord_scale", DEFAULT_COORD_SCALE)
            off = outputs.offset
            u = pixel_coordinates(
                off.shape[0],
                tuple(off.shape[-2:]),
                batch.get("coords_origin"),
                1.0,
                off.device,
                off.dtype,
            )
            emb = (u + off) * scale
        if emb is None:
            raise ValueError("spatial loss needs outputs.embedding (semiconv) or outputs.offset")
        for name in ("sigma", "seed"):
            if getattr(outputs, name) is None:
                raise ValueError(f"spatial loss needs outputs.{name} (add a '{name}' head)")
        return spatial_embedding_loss(
            emb,
            outputs.sigma,
            outputs.seed,
            batch["labels"],
            ignore=batch.get("ignore"),
            coords_origin=batch.get("coords_origin"),
            centres=batch.get("centres"),
            instance_masks=batch.get("instance_masks"),
            **self.params,
        )

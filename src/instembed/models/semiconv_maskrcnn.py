"""Semi-convolutional Mask R-CNN (Novotny et al. 2018, "Semi-convolutional Operators for
Instance Segmentation", §3.5).

:class:`SemiconvMaskRCNN` is :class:`~instembed.models.maskrcnn.MaskRCNN` plus

* a shallow **embedding subnet** shared over the FPN levels P2..P5: 1x1 conv (FPN width) + ReLU,
  3x3 conv to ``embedding_dim`` (D = 8) channels ``Phi``; its input is the FPN map with its
  gradient scaled by ``embedding_grad_scale`` (0.1, the paper's setting: the embedding loss must
  not dominate the shared features), via :func:`~instembed.models.fpn.grad_scale`;
* the **semi-convolutional operator** ``Psi = Phi + u`` (:func:`instembed.models.semiconv.
  semiconv`) in the image frame: a level of stride ``s`` gets, at cell (i, j), the image-pixel
  position of its centre ``(y0 + s i + (s - 1) / 2, ...) * coord_scale``;
* the **mask update** (:func:`semiconv_mask_update`) per RoI, on the 28x28 grid of the mask
  head: ``Psi`` RoIAligned from the RoI's level, the seed ``a(u) = softmax_u s(u)`` (soft-argmax
  of the mask scores of the RoI's class over the RoI's 28x28 cells), its embedding
  ``Psi_s = sum_u a(u) Psi_u``, the kernel ``K(u) = exp(-||Psi_u - Psi_s|| / sigma)`` (Laplacian,
  unsquared L2), and the updated scores ``s^(u) = s(u) + log K(u)``; the mask is
  ``sigmoid(s^)``. ``sigma = exp(log_sigma)`` is one learnable scalar.

Training adds to ``Outputs.aux``: ``embedding_levels`` (Psi per level P2..P5),
``embedding_strides``, ``kernel_log`` (log K of the positive RoIs, (P, 28, 28)) and ``sigma``;
``mask_logits`` are the updated scores. Inference fills ``Instances.centers`` with the seeds'
(y, x) image positions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from instembed.models.fpn import FPN_STRIDES, grad_scale
from instembed.models.maskrcnn import MASKRCNN_PARAM_TYPES, MaskRCNN, multiscale_roi_align
from instembed.models.semiconv import semiconv
from instembed.structures import DEFAULT_COORD_SCALE

SEMICONV_MASKRCNN_PARAM_TYPES: dict[str, Any] = {
    **MASKRCNN_PARAM_TYPES,
    "embedding_dim": int,
    "coord_scale": float,
    "sigma_init": float,
    "embedding_grad_scale": float,
}


def semiconv_mask_update(
    scores: Tensor, psi: Tensor, sigma: Tensor | float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The per-RoI mask update of §3.5.

    Args:
        scores: (P, M, M) mask logits ``s(u)`` of each RoI (its class).
        psi: (P, E, M, M) semi-convolutional embeddings on the same grid.
        sigma: positive scalar (tensor) bandwidth.

    Returns:
        ``(s_hat, log_k, weights, psi_seed)``: (P, M, M) updated logits ``s + log K``,
        (P, M, M) ``log K = -||Psi_u - Psi_s|| / sigma``, (P, M, M) soft-argmax weights
        ``softmax_u s(u)`` and (P, E) seed embeddings ``sum_u a(u) Psi_u``.
    """
    if scores.ndim != 3 or psi.ndim != 4 or psi.shape[0] != scores.shape[0]:
        raise ValueError(
            f"scores (P, M, M) and psi (P, E, M, M) expected, got {list(scores.shape)} and "
            f"{list(psi.shape)}"
        )
    if not isinstance(sigma, Tensor):
        sigma = torch.tensor(float(sigma), dtype=psi.dtype, device=psi.device)
    return mask_update(scores, psi, sigma)


def mask_update(
    scores: Tensor, psi: Tensor, sigma: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`semiconv_mask_update` without the shape checks, ``sigma`` a tensor (TorchScript
    compiles it)."""
    p, e = psi.shape[0], psi.shape[1]
    n = scores.shape[1] * scores.shape[2]
    a = torch.softmax(scores.reshape(p, n), dim=1)  # (P, M*M)
    flat = psi.reshape(p, e, n)
    psi_s = (flat * a[:, None, :]).sum(-1)  # (P, E)
    d = torch.linalg.vector_norm(flat - psi_s[:, :, None], dim=1)  # (P, M*M)
    log_k = (-d / sigma).view_as(scores)
    return scores + log_k, log_k, a.view_as(scores), psi_s


def seed_positions(weights: Tensor, boxes: Tensor) -> Tensor:
    """(P, 2) (y, x) image positions (pixel centres at integers) of the soft-argmax seeds:
    the ``weights`` (P, M, M) average of the RoI grid's cell centres in the (P, 4) boxes."""
    m = weights.shape[-1]
    t = (torch.arange(m, device=weights.device, dtype=weights.dtype) + 0.5) / m
    ys = boxes[:, 1, None] + t[None] * (boxes[:, 3] - boxes[:, 1])[:, None] - 0.5  # (P, M)
    xs = boxes[:, 0, None] + t[None] * (boxes[:, 2] - boxes[:, 0])[:, None] - 0.5
    y = (weights.sum(2) * ys).sum(1)
    x = (weights.sum(1) * xs).sum(1)
    return torch.stack([y, x], 1)


class SemiconvMaskRCNN(MaskRCNN):
    """Mask R-CNN with the semi-convolutional embedding and mask update (module doc)."""

    def __init__(
        self,
        in_channels: int = 1,
        embedding_dim: int = 8,
        coord_scale: float = DEFAULT_COORD_SCALE,
        sigma_init: float = 0.1,
        embedding_grad_scale: float = 0.1,
        **params,
    ) -> None:
        super().__init__(in_channels=in_channels, **params)
        if int(embedding_dim) < 2:
            raise ValueError(f"embedding_dim must be >= 2 (y, x + appearance), got {embedding_dim}")
        if sigma_init <= 0:
            raise ValueError(f"sigma_init must be > 0, got {sigma_init}")
        c = self.backbone.out_channels
        self.embedding = nn.Sequential(
            nn.Conv2d(c, c, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, int(embedding_dim), 3, padding=1),
        )
        nn.init.normal_(self.embedding[2].weight, std=0.01)
        nn.init.zeros_(self.embedding[2].bias)
        self.coord_scale = float(coord_scale)
        self.embedding_grad_scale = float(embedding_grad_scale)
        self.log_sigma = nn.Parameter(torch.tensor(math.log(float(sigma_init))))

    @property
    def sigma(self) -> Tensor:
        return torch.exp(self.log_sigma)

    def extra_features(self, feats: list[Tensor], coords_origin, image_size) -> dict[str, Any]:
        b = feats[0].shape[0]
        origin = torch.zeros(b, 2, device=feats[0].device, dtype=feats[0].dtype)
        if coords_origin is not None:
            origin = torch.as_tensor(coords_origin, device=origin.device).to(origin.dtype)
            origin = origin.reshape(b, 2)
        psi = []
        for f, s in zip(feats[:4], FPN_STRIDES):
            phi = self.embedding(grad_scale(f, self.embedding_grad_scale))
            psi.append(semiconv(phi, (origin + (s - 1) / 2) / s, self.coord_scale * s))
        strides = torch.tensor(FPN_STRIDES[:4], device=origin.device)
        return {"psi": psi, "aux": {"embedding_levels": psi, "embedding_strides": strides}}

    def mask_logits(
        self, logits: Tensor, boxes: Sequence[Tensor], extra: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        m = logits.shape[-1]
        psi = multiscale_roi_align(extra["psi"], boxes, m, self.canonical_scale)
        sigma = self.sigma
        s_hat, log_k, weights, _ = semiconv_mask_update(logits, psi, sigma)
        info = {"kernel_log": log_k, "sigma": sigma}
        if not self.training:
            cat = torch.cat(list(boxes)) if len(boxes) else logits.new_zeros(0, 4)
            info["seed_yx"] = seed_positions(weights, cat)
        return s_hat, info


def build_semiconv_maskrcnn(in_channels: int = 1, **params) -> SemiconvMaskRCNN:
    """The ``semiconv_maskrcnn`` family (parameters: :data:`SEMICONV_MASKRCNN_PARAM_TYPES`)."""
    return SemiconvMaskRCNN(in_channels=in_channels, **params)

"""Losses of Mask R-CNN (He et al. 2017) and of the semi-convolutional Mask R-CNN (Novotny et
al. 2018, §3.5), reading what the models put in ``Outputs.aux`` (docs/maskrcnn.md).

``maskrcnn`` (torchvision's normalisations)::

    rpn_objectness  BCE over the sampled anchors (mean)
    rpn_box         smooth-L1 (beta 1/9) over the positive anchors, summed, / #sampled anchors
    roi_class       cross-entropy over the sampled RoIs (mean)
    roi_box         smooth-L1 (beta 1/9) of the gt class's deltas over the positive RoIs,
                    summed, / #sampled RoIs
    mask            per-pixel BCE of the positive RoIs' 28x28 logits (their gt class) against the
                    gt mask RoIAligned on the RoI (mean; 0 without positive RoIs)

``semiconv_maskrcnn`` adds::

    attract         the attractive loss of eq. 5 (:func:`instembed.losses.semiconv_loss.
                    semiconv_loss`) on Psi of each FPN level P2..P5 against the label image
                    sampled at the level's cell centres; mean over levels
    kernel          BCE of K_sigma(u) = exp(-||Psi_u - Psi_s|| / sigma) against the mask target
                    of every positive RoI (log K exact, 1 - K clamped at 1e-6, as
                    :func:`instembed.losses.bilateral.bilateral_loss`)

The mask term of the semi-conv model is on the updated scores ``s + log K``. Every term is
finite for images without objects (no positives: 0 with a zero gradient into the heads).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instembed.losses.semiconv_loss import semiconv_loss

_RPN_KEYS = ("rpn_logits", "rpn_deltas", "rpn_labels", "rpn_targets")
_ROI_KEYS = ("roi_class_logits", "roi_box_deltas", "roi_labels", "roi_targets")


def _need(aux: dict, keys, who: str) -> None:
    missing = [k for k in keys if k not in aux]
    if missing:
        raise ValueError(
            f"{who} loss needs outputs.aux {missing}: call the model in training mode with "
            "targets (model.train(); model(image, targets=image_targets(batch)))"
        )


def maskrcnn_terms(aux: dict) -> dict[str, Tensor]:
    """The five Mask R-CNN terms from a training ``Outputs.aux`` (module doc)."""
    _need(aux, _RPN_KEYS + _ROI_KEYS + ("mask_logits", "mask_targets"), "maskrcnn")
    logits, deltas = aux["rpn_logits"], aux["rpn_deltas"]
    labels, targets = aux["rpn_labels"], aux["rpn_targets"]
    sampled = labels >= 0
    pos = labels > 0
    n = sampled.sum().clamp(min=1)
    obj = F.binary_cross_entropy_with_logits(logits[sampled], labels[sampled], reduction="sum")
    rpn_box = F.smooth_l1_loss(deltas[pos], targets[pos], beta=1 / 9, reduction="sum")
    cls_logits, box_deltas = aux["roi_class_logits"], aux["roi_box_deltas"]
    roi_labels, roi_targets = aux["roi_labels"], aux["roi_targets"]
    r = max(1, int(roi_labels.numel()))
    roi_class = F.cross_entropy(cls_logits, roi_labels, reduction="sum") / r
    p = torch.nonzero(roi_labels > 0).squeeze(1)
    roi_box = F.smooth_l1_loss(
        box_deltas[p, roi_labels[p]], roi_targets[p], beta=1 / 9, reduction="sum"
    )
    mask_logits, mask_targets = aux["mask_logits"], aux["mask_targets"]
    if mask_logits.numel():
        mask = F.binary_cross_entropy_with_logits(mask_logits, mask_targets)
    else:
        mask = mask_logits.sum() * 0.0
    return {
        "rpn_objectness": obj / n,
        "rpn_box": rpn_box / n,
        "roi_class": roi_class + 0.0 * cls_logits.sum(),
        "roi_box": roi_box / r + 0.0 * box_deltas.sum(),
        "mask": mask,
    }


def kernel_bce(log_k: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """Mean BCE of ``K = exp(log_k)`` against ``target`` in [0, 1] (0 for no pixels)."""
    if log_k.numel() == 0:
        return log_k.sum() * 0.0
    log_1mk = torch.log((-torch.expm1(log_k)).clamp(min=eps))
    return -(target * log_k + (1 - target) * log_1mk).mean()


def level_labels(labels: Tensor, stride: int, size: tuple[int, int]) -> Tensor:
    """(B, h, w) labels at the cells of a level of ``stride`` (the pixel nearest each cell's
    centre, ``s i + s // 2``), 0 past the image (the padding)."""
    s = int(stride)
    sub = labels[:, s // 2 :: s, s // 2 :: s]
    out = labels.new_zeros((labels.shape[0], *size))
    h, w = min(size[0], sub.shape[1]), min(size[1], sub.shape[2])
    out[:, :h, :w] = sub[:, :h, :w]
    return out


class MaskRCNNLoss(nn.Module):
    """``maskrcnn`` loss: weighted sum of :func:`maskrcnn_terms` (weights default 1)."""

    def __init__(
        self,
        rpn_objectness: float = 1.0,
        rpn_box: float = 1.0,
        roi_class: float = 1.0,
        roi_box: float = 1.0,
        mask: float = 1.0,
    ) -> None:
        super().__init__()
        self.weights = {"rpn_objectness": rpn_objectness, "rpn_box": rpn_box,
                        "roi_class": roi_class, "roi_box": roi_box, "mask": mask}  # fmt: skip

    def terms(self, outputs, batch: dict) -> dict[str, Tensor]:
        return maskrcnn_terms(outputs.aux)

    def forward(self, outputs, batch: dict):
        terms = self.terms(outputs, batch)
        total = sum(self.weights.get(k, 1.0) * v for k, v in terms.items())
        return total, {k: v.detach() for k, v in terms.items()}


class SemiconvMaskRCNNLoss(MaskRCNNLoss):
    """``semiconv_maskrcnn`` loss: :class:`MaskRCNNLoss` + ``attract`` + ``kernel``."""

    def __init__(
        self,
        rpn_objectness: float = 1.0,
        rpn_box: float = 1.0,
        roi_class: float = 1.0,
        roi_box: float = 1.0,
        mask: float = 1.0,
        attract: float = 1.0,
        kernel: float = 1.0,
    ) -> None:
        super().__init__(rpn_objectness, rpn_box, roi_class, roi_box, mask)
        self.weights.update({"attract": attract, "kernel": kernel})

    def terms(self, outputs, batch: dict) -> dict[str, Tensor]:
        aux = outputs.aux
        _need(aux, ("embedding_levels", "embedding_strides", "kernel_log"), "semiconv_maskrcnn")
        terms = maskrcnn_terms(aux)
        labels, ignore = batch["labels"], batch.get("ignore")
        attract = []
        for psi, s in zip(aux["embedding_levels"], aux["embedding_strides"].tolist()):
            size = tuple(psi.shape[-2:])
            lab = level_labels(labels.long(), s, size)
            ign = None if ignore is None else level_labels(ignore.long(), s, size).bool()
            attract.append(semiconv_loss(psi, lab, ignore=ign)[0])
        terms["attract"] = torch.stack(attract).mean()
        terms["kernel"] = kernel_bce(aux["kernel_log"], aux["mask_targets"])
        return terms

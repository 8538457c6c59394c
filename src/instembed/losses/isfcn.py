"""The loss of instance-sensitive FCNs (Dai et al. 2016; model ``instembed.models.isfcn``).

The model samples the windows itself (it receives the targets in training, as proposal models
sample their regions) and leaves them in ``outputs.aux``; this loss is the paper's:

* **objectness**: logistic loss (binary cross-entropy with logits) on the objectness of the
  sampled windows (``window_logits`` vs ``window_labels``, mean over windows);
* **mask**: per-pixel logistic loss on the assembled ``m x m`` masks of the positive windows
  against the object's mask in that window (``mask_logits`` vs ``mask_targets``, mean over
  pixels; 0 when no window is positive, e.g. an empty image).

``total = w_objectness * objectness + w_mask * mask``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from instembed.structures import Outputs

AUX_KEYS = ("window_logits", "window_labels", "mask_logits", "mask_targets")


def isfcn_loss(
    window_logits: Tensor,
    window_labels: Tensor,
    mask_logits: Tensor,
    mask_targets: Tensor,
    *,
    w_objectness: float = 1.0,
    w_mask: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``(total, {"objectness", "mask"})`` from the sampled windows (see the module docstring).

    Empty inputs give a 0 term (kept in the autograd graph)."""

    def bce(logits: Tensor, target: Tensor) -> Tensor:
        if logits.numel() == 0:
            return logits.sum() * 0.0
        return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))

    obj = bce(window_logits, window_labels)
    mask = bce(mask_logits, mask_targets)
    total = float(w_objectness) * obj + float(w_mask) * mask
    return total, {"objectness": obj.detach(), "mask": mask.detach()}


class ISFCNLoss(nn.Module):
    """``forward(outputs, batch) -> (total, terms)`` on ``outputs.aux`` of an ISFCN model called
    with targets (:func:`isfcn_loss`)."""

    def __init__(self, w_objectness: float = 1.0, w_mask: float = 1.0) -> None:
        super().__init__()
        self.w_objectness = float(w_objectness)
        self.w_mask = float(w_mask)

    def forward(self, outputs: Outputs, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        missing = [k for k in AUX_KEYS if k not in outputs.aux]
        if missing:
            raise ValueError(
                f"the isfcn loss needs outputs.aux {missing}: an ISFCN model called with "
                "targets (model(image, targets=image_targets(batch)))"
            )
        a = outputs.aux
        return isfcn_loss(
            a["window_logits"],
            a["window_labels"],
            a["mask_logits"],
            a["mask_targets"],
            w_objectness=self.w_objectness,
            w_mask=self.w_mask,
        )


__all__ = ["ISFCNLoss", "isfcn_loss"]

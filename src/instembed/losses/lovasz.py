"""Lovász hinge (Berman, Rannen Triki and Blaschko 2018): a convex surrogate of the Jaccard loss.

For logits f (P,) and binary ground truth y (P,), with errors m = [1 - f * (2y - 1)]_+ sorted
in decreasing order (permutation pi), the loss is the Lovász extension of the Jaccard loss::

    loss(m) = sum_i m_pi(i) * ( J(pi_1..i) - J(pi_1..i-1) ),  J(M) = |M| / |y or M|

(|y or M| counts the pixels that are in the ground truth or mispredicted). On binary errors it
equals the Jaccard loss 1 - IoU; it is positively homogeneous.
"""

from __future__ import annotations

import torch


def lovasz_hinge_rows(logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Lovász hinge of each row: logits (N, P) float, gt (N, P) bool -> (N,)."""
    if logits.shape != gt.shape or logits.ndim != 2:
        raise ValueError(
            f"lovasz: logits and gt must both be (N, P), got {tuple(logits.shape)} and {tuple(gt.shape)}"
        )
    if logits.shape[1] == 0:
        return logits.new_zeros(logits.shape[0])
    signs = gt.to(logits.dtype) * 2 - 1
    errors = 1 - logits * signs
    errors_sorted, perm = torch.sort(errors, dim=1, descending=True)
    gt_sorted = torch.gather(gt.to(logits.dtype), 1, perm)
    gts = gt_sorted.sum(1, keepdim=True)
    inter = gts - gt_sorted.cumsum(1)
    union = gts + (1 - gt_sorted).cumsum(1)
    jac = 1 - inter / union
    grad = torch.cat([jac[:, :1], jac[:, 1:] - jac[:, :-1]], dim=1)
    return (torch.relu(errors_sorted) * grad).sum(1)

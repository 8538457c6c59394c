"""Proposal-to-ground-truth matching and minibatch sampling for RPN and RoI heads, with the
semantics of torchvision's ``models.detection._utils.Matcher`` and
``BalancedPositiveNegativeSampler`` (Ren et al. 2015, Sec. 3.1.2-3.1.3).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["BalancedPositiveNegativeSampler", "Matcher"]


class Matcher:
    """Assign each proposal (anchor) the ground-truth box it overlaps most.

    For an (M, N) quality matrix (IoU of M ground-truth boxes with N proposals) each proposal
    gets the index of its best ground truth (``max`` over the column; ties: the lowest index)
    when that quality is ``>= high_threshold``; :attr:`BELOW_LOW_THRESHOLD` (-1, background)
    when it is ``< low_threshold``; :attr:`BETWEEN_THRESHOLDS` (-2, ignored) otherwise.

    ``allow_low_quality_matches``: for each ground truth, the proposals of highest quality with
    it (all of them on a tie) are matched even below ``high_threshold`` (Ren et al.'s rule (i)).
    As torchvision (and detectron2), such a proposal gets its own best ground truth -- the
    column argmax, which may be another box than the one it is best for -- and a ground truth
    whose best quality is 0 makes every proposal of quality 0 with it a match: pass no empty
    ground-truth boxes.

    Args:
        high_threshold: quality at or above which a match is foreground.
        low_threshold: quality below which a proposal is background (``<= high_threshold``).
        allow_low_quality_matches: see above.
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(
        self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False
    ) -> None:
        if low_threshold > high_threshold:
            raise ValueError(f"low_threshold {low_threshold} > high_threshold {high_threshold}")
        self.high_threshold = float(high_threshold)
        self.low_threshold = float(low_threshold)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)

    def __call__(self, match_quality_matrix: Tensor) -> Tensor:
        """(N,) int64: per proposal, a ground-truth index, -1 or -2.

        Raises ValueError on an empty matrix (no ground truth or no proposal), as torchvision;
        an image without ground truth is handled by the caller (all proposals background).
        """
        if match_quality_matrix.numel() == 0:
            if match_quality_matrix.shape[0] == 0:
                raise ValueError(
                    "No ground-truth boxes available for one of the images during training"
                )
            raise ValueError("No proposal boxes available for one of the images during training")
        q = match_quality_matrix.detach()
        matched_vals, matches = q.max(dim=0)
        best_gt = matches
        below = matched_vals < self.low_threshold
        between = (matched_vals >= self.low_threshold) & (matched_vals < self.high_threshold)
        matches = matches.masked_fill(below, self.BELOW_LOW_THRESHOLD)
        matches = matches.masked_fill(between, self.BETWEEN_THRESHOLDS)
        if self.allow_low_quality_matches:
            highest_per_gt = q.max(dim=1).values
            is_best = (q == highest_per_gt[:, None]).any(dim=0)  # (N,) best for some gt
            matches = torch.where(is_best, best_gt, matches)
        return matches


class BalancedPositiveNegativeSampler:
    """Sample a fixed-size minibatch of proposals with a bounded fraction of positives.

    Per image, from labels with ``>= 1`` positive, ``0`` negative and ``-1`` ignored: up to
    ``int(batch_size_per_image * positive_fraction)`` positives (fewer when there are fewer)
    and up to ``batch_size_per_image - num_positives`` negatives, uniformly at random without
    replacement.

    The random permutations are drawn on the CPU -- from ``generator`` when one is given (at
    construction or per call), else from torch's default CPU generator -- and moved to the
    labels' device, so a seeded generator gives the same sample on every device.

    Args:
        batch_size_per_image: proposals sampled per image (at most).
        positive_fraction: the largest fraction of positives.
        generator: a CPU :class:`torch.Generator` (optional).
    """

    def __init__(
        self,
        batch_size_per_image: int,
        positive_fraction: float,
        generator: torch.Generator | None = None,
    ) -> None:
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)
        self.generator = generator

    def _perm(self, n: int, generator: torch.Generator | None, device) -> Tensor:
        gen_device = generator.device if generator is not None else "cpu"
        return torch.randperm(n, generator=generator, device=gen_device).to(device)

    def __call__(
        self, matched_idxs: Sequence[Tensor], generator: torch.Generator | None = None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Per image, a (N_i,) uint8 mask of the sampled positives and one of the sampled
        negatives (torchvision's return type).

        Args:
            matched_idxs: per image, (N_i,) int labels (>= 1 positive, 0 negative, -1 ignored).
            generator: overrides the generator given at construction for this call.
        """
        gen = generator if generator is not None else self.generator
        pos_masks, neg_masks = [], []
        for labels in matched_idxs:
            positive = torch.where(labels >= 1)[0]
            negative = torch.where(labels == 0)[0]
            num_pos = min(
                int(positive.numel()), int(self.batch_size_per_image * self.positive_fraction)
            )
            num_neg = min(int(negative.numel()), self.batch_size_per_image - num_pos)
            pos = positive[self._perm(int(positive.numel()), gen, labels.device)[:num_pos]]
            neg = negative[self._perm(int(negative.numel()), gen, labels.device)[:num_neg]]
            pos_mask = torch.zeros_like(labels, dtype=torch.uint8)
            neg_mask = torch.zeros_like(labels, dtype=torch.uint8)
            pos_mask[pos] = 1
            neg_mask[neg] = 1
            pos_masks.append(pos_mask)
            neg_masks.append(neg_mask)
        return pos_masks, neg_masks

"""``ClusterResult``: what every clusterer returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ClusterResult:
    """Instances found in one image.

    Attributes:
        labels: (H, W) int64 label image, 0 = background, 1..N = instances (sequential).
        scores: (N,) float32, score of instance i+1 (used to rank detections, e.g. COCO AP).
        classes: optional (N,) int64 semantic class of each instance.
        centers: optional (N, D) centre of each instance in the space it was clustered in
            (embedding space, or (y, x) pixel position for center/offset grouping).
        masks: optional (N, H, W) bool overlapping masks (``overlap_thresh`` of the seeded
            clustering); ``masks[i]`` contains ``labels == i + 1`` and may share pixels with
            other masks. None when the method gives one instance per pixel.
    """

    labels: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor | None = None
    centers: torch.Tensor | None = None
    masks: torch.Tensor | None = None

    @property
    def instances(self) -> torch.Tensor:
        """The instances as scored: the mask stack when there is one, else the label image."""
        return self.labels if self.masks is None else self.masks

    @property
    def num_instances(self) -> int:
        return int(self.scores.shape[0])

    def to(self, device: torch.device | str) -> ClusterResult:
        """The same result with every tensor on ``device``."""
        return ClusterResult(
            labels=self.labels.to(device),
            scores=self.scores.to(device),
            classes=None if self.classes is None else self.classes.to(device),
            centers=None if self.centers is None else self.centers.to(device),
            masks=None if self.masks is None else self.masks.to(device),
        )

"""Training targets built from instance labels: in the data stage
(``InstanceDataset(targets=(name, ...))``) or, when the batch lacks them, by the loss itself.
This module depends on torch and :mod:`instembed.structures` only, so data and losses both use it
without importing each other.

``build_targets(name, labels (H, W), **kw) -> dict[str, Tensor]``; every tensor has the image's
H, W as its last two dims, so ``collate`` stacks them into (B, ...). Names:

* ``"center_offset"`` (Panoptic-DeepLab, Cheng et al. 2020):

  - ``center_heatmap`` (1, H, W) float: max over instances of a 2-D Gaussian of std ``sigma``
    (default 8 px) with peak 1 at the instance's centre of mass rounded to the nearest pixel,
    truncated to a window of half-width int(3 sigma + 1) (6 sigma + 3 px, as Panoptic-DeepLab);
  - ``offset_target`` (2, H, W) float: (dy, dx) from each instance pixel to the (unrounded)
    centre of mass, 0 elsewhere;
  - ``offset_weights`` (H, W) float: 1 on instance pixels, 0 elsewhere and on ignored pixels;
  - ``center_weights`` (H, W) float: 1, 0 on ignored pixels;
  - ``semantic_weights`` (H, W) float: ``small_instance_weight`` (3) on pixels of instances
    smaller than ``small_instance_area`` (64 * 64 px), 1 elsewhere.
"""

from __future__ import annotations

import numpy as np
import torch

TARGET_NAMES = ("center_offset",)


def _as_labels(labels) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if t.ndim != 2 or t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(
            f"labels must be an (H, W) integer label image, got shape {tuple(t.shape)} "
            f"dtype {t.dtype}"
        )
    return t.long()


def center_offset_targets(
    labels,
    *,
    sigma: float = 8.0,
    small_instance_area: int = 4096,
    small_instance_weight: float = 3.0,
    ignore=None,
) -> dict[str, torch.Tensor]:
    """Panoptic-DeepLab targets for one label image (see module doc)."""
    lab = _as_labels(labels)
    h, w = lab.shape
    dev = lab.device
    heat = torch.zeros(h, w, device=dev)
    offset = torch.zeros(2, h, w, device=dev)
    sem_w = torch.ones(h, w, device=dev)
    ys = torch.arange(h, device=dev, dtype=torch.float32)
    xs = torch.arange(w, device=dev, dtype=torch.float32)
    radius = int(3 * sigma + 1)  # window of 6 sigma + 3 px, as Panoptic-DeepLab
    for k in torch.unique(lab):
        if k == 0:
            continue
        m = lab == k
        yy, xx = m.nonzero(as_tuple=True)
        cy, cx = yy.float().mean(), xx.float().mean()
        offset[0][m] = cy - yy.float()
        offset[1][m] = cx - xx.float()
        if yy.numel() < small_instance_area:
            sem_w[m] = small_instance_weight
        ry, rx = int(torch.round(cy)), int(torch.round(cx))
        y0, y1 = max(ry - radius, 0), min(ry + radius + 1, h)
        x0, x1 = max(rx - radius, 0), min(rx + radius + 1, w)
        g = torch.exp(-((ys[y0:y1, None] - ry) ** 2 + (xs[None, x0:x1] - rx) ** 2) / (2 * sigma**2))
        heat[y0:y1, x0:x1] = torch.maximum(heat[y0:y1, x0:x1], g)
    off_w = (lab > 0).float()
    ctr_w = torch.ones(h, w, device=dev)
    if ignore is not None:
        ign = torch.as_tensor(
            np.asarray(ignore) if not isinstance(ignore, torch.Tensor) else ignore
        )
        if ign.shape != lab.shape:
            raise ValueError(f"ignore shape {tuple(ign.shape)} != labels {tuple(lab.shape)}")
        ign = ign.bool().to(dev)
        off_w[ign] = 0
        ctr_w[ign] = 0
    return {
        "center_heatmap": heat.unsqueeze(0),
        "offset_target": offset,
        "offset_weights": off_w,
        "center_weights": ctr_w,
        "semantic_weights": sem_w,
    }


_BUILDERS = {"center_offset": center_offset_targets}


def build_targets(name: str, labels, **kw) -> dict[str, torch.Tensor]:
    """Targets for loss ``name`` from one (H, W) label image (tensor or array); see module doc."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown target name {name!r}; valid names: {sorted(_BUILDERS)}")
    return _BUILDERS[name](labels, **kw)

"""Post-processing of spatial-centre ordering (``instembed.losses.ordering``): from the per-pixel
slot logits ``outputs.semantic`` (K + 1 channels, slot 0 background) to instances.

Method ``"slots"``: every pixel takes its argmax slot; ``mode`` says how a slot becomes
instances:

* ``"largest"`` (default): one instance per slot, its largest connected component -- the slot
  *is* the instance's identity, as the method means it; a slot the network spread over two
  objects recovers only one of them;
* ``"slot"``: one instance per slot, all its pixels (connected or not);
* ``"components"``: every connected component of every slot is an instance -- identity then
  comes from connectivity, not from the slot (a diagnostic: on separated objects it scores
  the foreground and the slot fragmentation, not the ordering).

The score of an instance is the mean softmax probability of its slot over its pixels.
Instances smaller than ``min_size`` pixels or scoring below ``min_score`` are dropped.

It is registered as an instance method (``dense=False``): it returns final instances itself,
and the slot channels are not semantic classes (the dense dispatcher would give every instance
its slot index as class).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from instembed.structures import Instances

SLOT_MODES = ("largest", "slot", "components")


def slot_instances(
    semantic: Tensor,
    *,
    mode: str = "largest",
    min_size: int = 0,
    min_score: float = 0.0,
    connectivity: int = 1,
) -> Instances:
    """Instances of one image's (K + 1, H, W) slot logits (see the module docstring).

    Args:
        semantic: (K + 1, H, W) logits, channel 0 background.
        mode: ``"largest"``, ``"slot"`` or ``"components"`` (see the module docstring).
        min_size: smallest instance, in pixels.
        min_score: lowest mean slot probability kept.
        connectivity: 1 (4-neighbours) or 2 (8-neighbours) for the components.

    Returns:
        Instances (labels, scores, ``centers`` = pixel centroids ``(y, x)``, ``meta["slots"]``
        the slot of each instance), ordered by slot then component.
    """
    from scipy import ndimage

    if mode not in SLOT_MODES:
        raise ValueError(f"slots mode must be one of {SLOT_MODES}, got {mode!r}")
    if semantic.dim() != 3 or semantic.shape[0] < 2:
        raise ValueError(f"slot logits must be (K + 1 >= 2, H, W), got {list(semantic.shape)}")
    prob = torch.softmax(semantic.detach().float(), 0).cpu()
    slot = prob.argmax(0).numpy()
    p = prob.numpy()
    h, w = slot.shape
    labels = np.zeros((h, w), np.int64)
    scores, centers, slots = [], [], []
    structure = ndimage.generate_binary_structure(2, int(connectivity))
    for s in np.unique(slot[slot > 0]):
        region = slot == s
        if mode == "slot":
            comp, n = region.astype(np.int32), 1
        else:
            comp, n = ndimage.label(region, structure=structure)
        parts = range(1, n + 1)
        if mode == "largest":
            parts = [1 + int(np.argmax(np.bincount(comp.ravel(), minlength=n + 1)[1:]))]
        for c in parts:
            m = comp == c
            area = int(m.sum())
            score = float(p[s][m].mean()) if area else 0.0
            if area == 0 or area < min_size or score < min_score:
                continue
            labels[m] = len(scores) + 1
            scores.append(score)
            ys, xs = np.nonzero(m)
            centers.append((ys.mean(), xs.mean()))
            slots.append(int(s))
    dev = semantic.device
    return Instances(
        labels=torch.from_numpy(labels).to(dev),
        scores=torch.tensor(scores, dtype=torch.float32, device=dev),
        centers=torch.tensor(np.asarray(centers, np.float32).reshape(-1, 2), device=dev),
        meta={"slots": slots},
    )


def run_slots(ctx, params: dict) -> Instances:
    """``run`` of the ``"slots"`` method (:mod:`instembed.cluster.methods`): the image's
    ``outputs.semantic`` through :func:`slot_instances`."""
    return slot_instances(ctx.field("semantic"), **params)

"""Tune a trained model's clustering thresholds on annotated images (a grid search).

The network runs once per image; only the clustering is repeated for every setting of the
grid, and the setting with the best ``metric`` (default AP_dsb@0.5, ties broken by COCO AP) is
kept. This is the step StarDist calls ``optimize_thresholds`` and EmbedSeg does by hand for its
seed threshold: the thresholds that suit a model depend on how far its seed / centre maps have
converged, so they are chosen on validation images, never on the test images.

    from instembed.engine.tune import tune_thresholds
    result = tune_thresholds(outputs, samples, cfg.cluster)
    cfg.cluster.params.update(result.params)

Grids per clustering method: :data:`GRIDS`; for ground truth with overlapping objects (mask
stacks) the seeded grid also tries overlapping predicted masks (``overlap_thresh``, see
:func:`instembed.cluster.seeded.overlap_masks`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from instembed.engine.config import ClusterConfig

log = logging.getLogger(__name__)

METRICS = ("AP_dsb@0.5", "AP", "AP50", "AP75", "SBD", "absDiC", "PQ")

# clustering thresholds tried per method
GRIDS: dict[str, dict[str, list]] = {
    "seeded": {
        "fg_thresh": [0.3, 0.4, 0.5],
        "seed_thresh": [0.5, 0.6, 0.7, 0.8],
        "prob_thresh": [0.3, 0.5],
    },
    "center_offset": {"threshold": [0.05, 0.1, 0.2, 0.3]},
    "meanshift": {"bandwidth": [0.1, 0.15, 0.25, 0.5, 0.75, 1.0]},
    "threshold": {"delta_v": [0.25, 0.5, 0.75, 1.0]},
}
# kernel values above which a pixel also joins a second instance (None: one instance per pixel)
OVERLAP_GRID: list = [None, 0.3, 0.4, 0.5]


@dataclass
class TuneResult:
    """The chosen parameters, their metrics, and one row per setting tried."""

    params: dict
    metrics: dict[str, float]
    rows: list[dict] = field(default_factory=list)


def evaluate_outputs(outputs: Sequence, samples: Sequence, cluster: ClusterConfig) -> dict:
    """:class:`~instembed.metrics.InstanceEvaluator` scalars of the clustered ``outputs`` (one
    per sample, batch 1) against the samples' ground truth (label images, or mask stacks for
    overlapping objects; ignore masks honoured). Overlapping predicted masks are scored as a
    stack."""
    from instembed.engine.build import cluster_outputs
    from instembed.metrics import InstanceEvaluator

    if len(outputs) != len(samples):
        raise ValueError(f"got {len(outputs)} outputs for {len(samples)} samples")
    ev = InstanceEvaluator()
    for out, s in zip(outputs, samples):
        res = cluster_outputs(out, cluster)
        scores = None if res.scores is None else res.scores.numpy()
        ev.add(s.instances, res.masks_or_labels.numpy(), scores=scores, ignore=s.ignore)
    summary = ev.summary(per_image=False)
    return {k: float(v) for k, v in summary.items() if isinstance(v, int | float | np.number)}


def default_grid(method: str, samples: Sequence = ()) -> dict[str, list]:
    """The grid of ``method`` (:data:`GRIDS`); with overlapping ground truth in ``samples`` the
    seeded grid gets ``overlap_thresh`` too. Unknown methods: an empty grid."""
    grid = {k: list(v) for k, v in GRIDS.get(method, {}).items()}
    if method == "seeded" and any(np.asarray(s.instances).ndim == 3 for s in samples):
        grid["overlap_thresh"] = list(OVERLAP_GRID)
    return grid


def tune_thresholds(
    outputs: Sequence,
    samples: Sequence,
    cluster: ClusterConfig,
    grid: dict[str, list] | None = None,
    metric: str = "AP_dsb@0.5",
) -> TuneResult:
    """Grid search over clustering parameters (see the module docstring).

    Args:
        outputs: network Outputs of each sample (batch 1, CPU).
        samples: the annotated samples (``instances``, ``ignore``).
        cluster: the clusterer to start from; grid values replace its parameters.
        grid: ``{param: [values]}``; None: :func:`default_grid`.
        metric: the summary key to maximise (ties: COCO AP).
    """
    if not samples:
        raise ValueError("tune_thresholds needs at least one annotated image")
    grid = default_grid(cluster.method, samples) if grid is None else grid
    keys = sorted(grid)
    rows: list[dict] = []
    best: tuple | None = None
    for values in itertools.product(*(grid[k] for k in keys)):
        params = dict(zip(keys, values))
        cc = dataclasses.replace(cluster, params={**cluster.params, **params})
        m = evaluate_outputs(outputs, samples, cc)
        if metric not in m:
            raise ValueError(f"unknown metric {metric!r}; available: {sorted(m)}")
        rows.append({"params": params, **{k: m.get(k) for k in METRICS}})
        log.info("cluster %s: %s %.4f", params, metric, m[metric])
        key = (m[metric], m.get("AP", 0.0))
        if best is None or key > best[0]:
            best = (key, params, m)
    assert best is not None
    return TuneResult(params=best[1], metrics=best[2], rows=rows)

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from instembed.cluster.methods import GRIDS as _METHOD_GRIDS
from instembed.cluster.methods import find_method, get_method
from instembed.engine.config import ClusterConfig
from instembed.engine.evaluation import evaluate_outputs

log = logging.getLogger(__name__)

METRICS = ("AP_dsb@0.5", "AP", "AP50", "AP75", "SBD", "absDiC", "PQ")

# clustering thresholds tried per method: the ``grid`` of each method in the table
# instembed.cluster.methods (the table's own dict, kept up to date by its register())
GRIDS: dict[str, dict[str, list]] = _METHOD_GRIDS
# kernel values above which a pixel also joins a second instance (None: one instance per pixel)
OVERLAP_GRID: list = list(get_method("seeded").overlap_grid)


@dataclass
class TuneResult:
    """The chosen parameters, their metrics, and one row per setting tried."""

    params: dict
    metrics: dict[str, float]
    rows: list[dict] = field(default_factory=list)


def default_grid(method: str, samples: Sequence = ()) -> dict[str, list]:
    """The grid of ``method`` (:data:`GRIDS`); with overlapping ground truth in ``samples`` the
    methods with overlapping masks (seeded) get their ``overlap_thresh`` grid too. Unknown
    methods: an empty grid."""
    grid = {k: list(v) for k, v in GRIDS.get(method, {}).items()}
    spec = find_method(method)
    if spec is not None and spec.overlap_grid:
        if any(np.asarray(s.instances).ndim == 3 for s in samples):
            grid["overlap_thresh"] = list(spec.overlap_grid)
    return grid


def tune_thresholds(
    outputs: Sequence,
    samples: Sequence,
    cluster: ClusterConfig,
    grid: dict[str, list] | None = None,
    metric: str = "AP_dsb@0.5",
    progress: Callable[[int, int], None] | None = None,
) -> TuneResult:
    """Grid search over clustering parameters (see the module docstring).

    Args:
        outputs: network Outputs of each sample (batch 1, CPU).
        samples: the annotated samples (``instances``, ``ignore``).
        cluster: the clusterer to start from; grid values replace its parameters.
        grid: ``{param: [values]}``; None: :func:`default_grid`.
        metric: the summary key to maximise (ties: COCO AP).
        progress: called with (settings done, settings in all) after each setting.
    """
    if not samples:
        raise ValueError("tune_thresholds needs at least one annotated image")
    grid = default_grid(cluster.method, samples) if grid is None else grid
    keys = sorted(grid)
    rows: list[dict] = []
    best: tuple | None = None
    total = int(np.prod([len(grid[k]) for k in keys])) if keys else 1
    for done, values in enumerate(itertools.product(*(grid[k] for k in keys)), start=1):
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
        if progress is not None:
            progress(done, total)
    assert best is not None
    return TuneResult(params=best[1], metrics=best[2], rows=rows)

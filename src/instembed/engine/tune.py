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

Re-tuning a model that already has thresholds (a shipped one): pass them as ``incumbent`` and a
margin ``keep_within``. The incumbent setting is the grid's keys read from
``{**cluster.params, **incumbent}``; when that combination is not on the grid it is scored as
one extra row (the row of the incumbent carries ``"incumbent": True``). If the best setting's
``metric`` is higher than the incumbent's by ``keep_within`` or less, the incumbent is kept
(its params and its metrics), so a gain smaller than one object does not flip the thresholds:

    result = tune_thresholds(outputs, samples, cfg.cluster,
                             incumbent={"seed_thresh": 0.875}, keep_within=0.001)

Without an incumbent (the default) ``keep_within`` has no effect and the best setting is kept.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
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


def _check_keep_within(keep_within) -> float:
    if isinstance(keep_within, bool) or not isinstance(keep_within, (int, float)):
        raise ValueError(
            f"keep_within: expected a number >= 0, got {keep_within!r} "
            f"({type(keep_within).__name__})"
        )
    if math.isnan(keep_within) or keep_within < 0:
        raise ValueError(f"keep_within: expected a number >= 0, got {keep_within!r}")
    return float(keep_within)


def _incumbent_setting(incumbent, cluster: ClusterConfig, grid: dict[str, list]) -> dict:
    """The grid's keys read from ``{**cluster.params, **incumbent}`` (checked)."""
    if not isinstance(incumbent, dict):
        raise ValueError(
            f"incumbent: expected a dict of threshold values (e.g. {{'seed_thresh': 0.875}}), "
            f"got {type(incumbent).__name__} {incumbent!r}"
        )
    known = set(cluster.params) | set(grid)
    unknown = sorted(set(incumbent) - known, key=str)
    if unknown:
        raise ValueError(
            f"incumbent: expected keys among the cluster params and the grid "
            f"{sorted(known, key=str)}, got unknown key(s) {unknown}"
        )
    merged = {**cluster.params, **incumbent}
    missing = sorted(k for k in grid if k not in merged)
    if missing:
        raise ValueError(
            f"incumbent: expected a value for every grid key {sorted(grid)} (from incumbent or "
            f"cluster.params), got none for {missing} (incumbent {incumbent!r})"
        )
    for k in sorted(set(incumbent) - set(grid), key=str):
        if cluster.params.get(k) != incumbent[k]:
            log.warning(
                "incumbent %s=%r is not tuned (not a grid key): cluster.params' %r is used",
                k,
                incumbent[k],
                cluster.params.get(k),
            )
    return {k: merged[k] for k in sorted(grid)}


def tune_thresholds(
    outputs: Sequence,
    samples: Sequence,
    cluster: ClusterConfig,
    grid: dict[str, list] | None = None,
    metric: str = "AP_dsb@0.5",
    progress: Callable[[int, int], None] | None = None,
    incumbent: dict | None = None,
    keep_within: float = 0.0,
) -> TuneResult:
    """Grid search over clustering parameters (see the module docstring).

    Args:
        outputs: network Outputs of each sample (batch 1, CPU).
        samples: the annotated samples (``instances``, ``ignore``).
        cluster: the clusterer to start from; grid values replace its parameters.
        grid: ``{param: [values]}``; None: :func:`default_grid`.
        metric: the summary key to maximise (ties: COCO AP).
        progress: called with (settings done, settings in all) after each setting.
        incumbent: the thresholds in use (e.g. a shipped model's); None: none.
        keep_within: keep the incumbent unless the best setting beats its ``metric`` by more
            than this (>= 0; a 1e-12 slack absorbs rounding). Ties at 0 go to the incumbent.
    """
    if not samples:
        raise ValueError("tune_thresholds needs at least one annotated image")
    keep_within = _check_keep_within(keep_within)
    grid = default_grid(cluster.method, samples) if grid is None else grid
    keys = sorted(grid)
    inc = None if incumbent is None else _incumbent_setting(incumbent, cluster, grid)
    # the incumbent off the grid: one extra setting, scored after the grid's
    extra = inc is not None and not all(inc[k] in grid[k] for k in keys)
    rows: list[dict] = []
    best: tuple | None = None
    inc_metrics: dict | None = None
    total = int(np.prod([len(grid[k]) for k in keys])) if keys else 1
    settings = [dict(zip(keys, v)) for v in itertools.product(*(grid[k] for k in keys))]
    if extra:
        settings.append(dict(inc))
        total += 1
    for done, params in enumerate(settings, start=1):
        cc = dataclasses.replace(cluster, params={**cluster.params, **params})
        m = evaluate_outputs(outputs, samples, cc)
        if metric not in m:
            raise ValueError(f"unknown metric {metric!r}; available: {sorted(m)}")
        row = {"params": params, **{k: m.get(k) for k in METRICS}}
        if inc is not None and params == inc:
            row["incumbent"] = True
            inc_metrics = m
        rows.append(row)
        log.info("cluster %s: %s %.4f", params, metric, m[metric])
        key = (m[metric], m.get("AP", 0.0))
        if best is None or key > best[0]:
            best = (key, params, m)
        if progress is not None:
            progress(done, total)
    assert best is not None
    if inc is not None:
        assert inc_metrics is not None
        gain = best[2][metric] - inc_metrics[metric]
        if gain <= keep_within + 1e-12:
            log.info(
                "keeping the incumbent %s: %s %.4f; the best %s has %.4f (+%.4f <= keep_within "
                "%.4f)",
                inc,
                metric,
                inc_metrics[metric],
                best[1],
                best[2][metric],
                gain,
                keep_within,
            )
            return TuneResult(params=dict(inc), metrics=inc_metrics, rows=rows)
        log.info(
            "the best %s (%s %.4f) replaces the incumbent %s (%.4f): +%.4f > keep_within %.4f",
            best[1],
            metric,
            best[2][metric],
            inc,
            inc_metrics[metric],
            gain,
            keep_within,
        )
    return TuneResult(params=best[1], metrics=best[2], rows=rows)

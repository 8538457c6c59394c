"""One evaluation path: (ground truth, predicted :class:`~instembed.structures.Instances`) ->
the scalar metrics of :class:`instembed.metrics.InstanceEvaluator`.

Training-time validation (:func:`validate`), threshold tuning (:func:`evaluate_outputs`, used
by :mod:`instembed.engine.tune`), the demo and the benchmarks all score predictions here, so a
number means the same thing wherever it is reported. :meth:`Scorer.add` is the one place that
feeds the evaluator:

* the prediction's mask stack when it has one (overlapping objects), else its label image
  (soft masks count where >= 0.5);
* its ``scores`` (COCO AP ranks by them), by instance id (``labels == k + 1`` <-> index ``k``);
* classes only when both the ground truth and the prediction give them (class-aware AP / PQ),
  else every instance is of one class;
* the ground truth's ``ignore`` mask as void, except its crowd regions: a Sample's
  ``meta["crowd"]`` (``(M, H, W)`` bool, COCO ``iscrowd``, with ``meta["crowd_classes"]``) are
  taken out of ``ignore`` and scored as crowd ground truths (pycocotools' crowd rule for COCO
  AP, panopticapi's for PQ);
* semantic maps only when given to :meth:`Scorer.add` (``instembed evaluate``).

    from instembed.engine.evaluation import score
    metrics = score(samples, predictions)  # {"AP": ..., "AP_dsb@0.5": ..., "SBD": ...}
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from instembed.engine.build import cluster_outputs
from instembed.engine.config import ClusterConfig, Config
from instembed.engine.distributed import DistInfo, gather_interleaved
from instembed.metrics import InstanceEvaluator
from instembed.structures import Instances

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- scoring
def _with_crowd(inst: np.ndarray, classes, ignore, crowd, crowd_classes, where: str):
    """Append the crowd regions to the ground truth as a mask stack: (instances, classes,
    ignore without the crowd pixels, per-instance crowd flags)."""
    crowd = np.asarray(crowd, bool)
    if crowd.ndim == 2:
        crowd = crowd[None]
    shape = tuple(inst.shape[-2:])
    if crowd.ndim != 3 or tuple(crowd.shape[1:]) != shape:
        raise ValueError(
            f"meta['crowd'] has shape {crowd.shape}, expected (M, {shape[0]}, {shape[1]}){where}"
        )
    if crowd.shape[0] == 0:
        return inst, classes, ignore, None
    if inst.ndim == 2:  # label image -> stack in the order of the sorted ids (as classes)
        ids = np.unique(inst)
        ids = ids[ids > 0]
        inst = inst[None] == ids[:, None, None]
    n, m = inst.shape[0], crowd.shape[0]
    if classes is not None:
        cc = np.ones(m, np.int64) if crowd_classes is None else np.asarray(crowd_classes, np.int64)
        if cc.shape != (m,):
            raise ValueError(
                f"meta['crowd_classes'] has shape {cc.shape} for {m} crowd regions{where}"
            )
        classes = np.concatenate([np.asarray(classes, np.int64), cc])
    if ignore is not None:
        ignore = np.asarray(ignore, bool) & ~crowd.any(0)
        ignore = ignore if ignore.any() else None
    flags = np.r_[np.zeros(n, bool), np.ones(m, bool)]
    return np.concatenate([inst, crowd]), classes, ignore, flags


def _ground_truth(gt) -> tuple[np.ndarray, Any, Any, Any]:
    """(instances, classes, ignore, crowd flags) of a Sample, an Instances, or a bare label
    image / stack."""
    if isinstance(gt, Instances):
        g = gt.numpy()
        inst = g.masks_or_labels
        if inst.ndim == 3 and inst.dtype != bool:
            inst = inst >= 0.5
        return inst, g.classes, None, None
    if hasattr(gt, "instances"):  # a Sample (or anything shaped like one)
        inst = np.asarray(gt.instances)
        classes, ignore = getattr(gt, "classes", None), getattr(gt, "ignore", None)
        meta = getattr(gt, "meta", None) or {}
        if meta.get("crowd") is not None:
            where = f" ({gt.path})" if getattr(gt, "path", None) else ""
            return _with_crowd(
                inst, classes, ignore, meta["crowd"], meta.get("crowd_classes"), where
            )
        return inst, classes, ignore, None
    return np.asarray(gt), None, None, None


def _prediction(pred) -> tuple[np.ndarray, dict | None, dict | None]:
    """(instances, {id: score}, {id: class}) of an Instances, or a bare label image / stack."""
    if not isinstance(pred, Instances):
        return np.asarray(pred), None, None
    p = pred.numpy()
    inst = p.masks_or_labels
    if inst.ndim == 3 and inst.dtype != bool:  # soft masks
        inst = inst >= 0.5
    # instance k is label id k + 1 (and stack entry k, whose evaluator id is k + 1 too)
    scores = {k + 1: float(s) for k, s in enumerate(p.scores.tolist())}
    classes = None
    if p.classes is not None:
        classes = {k + 1: int(c) for k, c in enumerate(p.classes.tolist())}
    return inst, scores, classes


def scalars(summary: dict) -> dict[str, float]:
    """The scalar entries of an ``InstanceEvaluator.summary()`` as floats (lists, dicts and
    booleans left out)."""
    return {
        k: float(v)
        for k, v in summary.items()
        if isinstance(v, int | float | np.floating | np.integer) and not isinstance(v, bool)
    }


class Scorer:
    """Accumulate (ground truth, prediction) pairs; :meth:`summary` gives the scalar metrics.

    ``evaluator_kwargs`` go to :class:`~instembed.metrics.InstanceEvaluator` (``metrics``,
    ``max_dets``, ...). Ground truth: a :class:`~instembed.data.sample.Sample` (``instances``
    label image or mask stack, ``classes``, ``ignore``), an :class:`Instances`, or a bare
    label image / mask stack. Prediction: an :class:`Instances` (torch or numpy), or a bare
    label image / mask stack.
    """

    def __init__(self, **evaluator_kwargs) -> None:
        self.evaluator = InstanceEvaluator(**evaluator_kwargs)

    def __len__(self) -> int:
        return len(self.evaluator)

    def add(
        self,
        gt,
        pred,
        name: str | None = None,
        *,
        gt_semantic: np.ndarray | None = None,
        pred_semantic: np.ndarray | None = None,
    ):
        """Score one image; returns its :class:`~instembed.metrics.evaluator.ImageStats`.

        ``gt_semantic`` / ``pred_semantic`` (optional, (H, W) int) go to the evaluator as they
        are: ``ignore_index`` pixels of ``gt_semantic`` are void, both give mIoU and the stuff
        classes of PQ. Nothing takes them from ``gt`` / ``pred`` by itself."""
        gt_inst, gt_classes, ignore, crowd = _ground_truth(gt)
        pred_inst, scores, pred_classes = _prediction(pred)
        both = gt_classes is not None and pred_classes is not None
        return self.evaluator.add(
            gt_inst,
            pred_inst,
            scores=scores,
            pred_classes=pred_classes if both else None,
            gt_classes=gt_classes if both else None,
            ignore=ignore,
            crowd=crowd,
            gt_semantic=gt_semantic,
            pred_semantic=pred_semantic,
            name=name,
        )

    def gather(self, dist: DistInfo) -> Scorer:
        """Join the images every rank scored (rank ``r`` scored items ``r::world``), in the
        order of a one-process run; every rank then holds all of them. Returns ``self``."""
        self.evaluator.images = gather_interleaved(self.evaluator.images, dist)
        return self

    def summary(self) -> dict[str, float]:
        """The evaluator's scalar summary (:func:`scalars`)."""
        return scalars(self.evaluator.summary(per_image=False))


def score(samples: Iterable, predictions: Iterable, **evaluator_kwargs) -> dict[str, float]:
    """Scalar metrics of ``predictions`` (one :class:`Instances` per sample) against the
    ground truth of ``samples`` (see :class:`Scorer`)."""
    samples, predictions = list(samples), list(predictions)
    if len(samples) != len(predictions):
        raise ValueError(f"got {len(predictions)} predictions for {len(samples)} samples")
    scorer = Scorer(**evaluator_kwargs)
    for s, p in zip(samples, predictions):
        scorer.add(s, p)
    return scorer.summary()


def headline(metrics: dict, n_images: int) -> dict:
    """The numbers the model cards, peer tables and benchmarks report from a :func:`score` /
    :func:`evaluate_outputs` dict over ``n_images`` images: AP_dsb@0.5, mean AP_dsb over IoU
    0.5:0.95, COCO AP / AP50 / AP75 (None when not computed), the counts at IoU 0.5 and the
    false positives / negatives per image."""
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    return {
        "AP_dsb@0.5": metrics["AP_dsb@0.5"],
        "AP_dsb@0.5:0.95": metrics.get("AP_dsb@0.5:0.95"),
        "AP": metrics.get("AP"),
        "AP50": metrics.get("AP50"),
        "AP75": metrics.get("AP75"),
        "TP@0.5": int(metrics["TP@0.5"]),
        "FP@0.5": int(metrics["FP@0.5"]),
        "FN@0.5": int(metrics["FN@0.5"]),
        "FP_per_image@0.5": metrics["FP@0.5"] / n_images,
        "FN_per_image@0.5": metrics["FN@0.5"] / n_images,
        "n_gt": int(metrics["n_gt"]),
        "n_pred": int(metrics["n_pred"]),
    }


def per_image(samples: Iterable, predictions: Iterable, key: str = "AP_dsb@0.5") -> np.ndarray:
    """``key`` of each image (the evaluator's per-image rows, in the order of ``samples``):
    what :func:`instembed.metrics.bootstrap.paired_bootstrap` compares."""
    samples, predictions = list(samples), list(predictions)
    if len(samples) != len(predictions):
        raise ValueError(f"got {len(predictions)} predictions for {len(samples)} samples")
    scorer = Scorer()
    for s, p in zip(samples, predictions):
        scorer.add(s, p)
    rows = scorer.evaluator.summary(per_image=True)["per_image"]
    return np.array([float(r[key]) for r in rows])


# --------------------------------------------------------------------------- clustering + scoring
def evaluate_outputs(outputs: Sequence, samples: Sequence, cluster: ClusterConfig) -> dict:
    """Scalar metrics (:func:`score`) of the clustered ``outputs`` (one per sample, batch 1)
    against the samples' ground truth (label images, or mask stacks for overlapping objects;
    ignore masks honoured). Overlapping predicted masks are scored as a stack."""
    if len(outputs) != len(samples):
        raise ValueError(f"got {len(outputs)} outputs for {len(samples)} samples")
    return score(samples, (cluster_outputs(out, cluster) for out in outputs))


VAL_PROGRESS_MIN = 16
"""Validation shows a progress bar (``run.progress``, main process) from this many images on."""


class _Progress:
    """``progress(done, total)`` callback drawing a tqdm bar on stderr, made at the first call
    (``leave=False``: the training bar stays the last line); does nothing when not
    ``enabled``."""

    def __init__(self, desc: str, unit: str, enabled: bool) -> None:
        self.desc, self.unit, self.enabled, self.bar = desc, unit, enabled, None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            import sys

            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total, desc=self.desc, unit=self.unit, leave=False, file=sys.stderr
            )
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _count(instances: np.ndarray) -> int:
    if instances.ndim == 3:
        return int(instances.shape[0])
    return int(len(np.unique(instances[instances > 0])))


def cluster_config_for(sample, cluster: ClusterConfig) -> ClusterConfig:
    """``cluster`` for one validation image: k-means without ``k`` gets the true number of
    instances (the coloring-dilemma protocol); every other method is left as it is."""
    if cluster.method == "kmeans" and "k" not in cluster.params:
        k = max(1, _count(np.asarray(sample.instances)))
        return dataclasses.replace(cluster, params={**cluster.params, "k": k})
    return cluster


@torch.no_grad()
def validate(
    model: nn.Module,
    samples,
    cfg: Config,
    device: torch.device,
    dist: DistInfo | None = None,
) -> dict[str, float]:
    """Instance metrics of ``model`` + the configured clusterer on ``samples``.

    The first ``run.max_val_images`` samples (all when None) are scored; with ``run.val_tune``
    (and a method with a grid in :data:`instembed.engine.tune.GRIDS`) the clustering thresholds
    are tuned on them and the tuned values are reported as ``cluster/<param>``. Each rank
    evaluates samples ``rank::world``; the results are gathered so every rank returns the
    metrics of the whole set.

    With ``run.progress`` and at least :data:`VAL_PROGRESS_MIN` images, the main process shows
    a progress bar over its validation images (and over the tuning grid with ``val_tune``).
    """
    from instembed.engine.tune import GRIDS

    dist = dist or DistInfo()
    n = len(samples)
    if cfg.run.max_val_images is not None:
        n = min(n, cfg.run.max_val_images)
    was_training = model.training
    model.eval()
    tune = bool(cfg.run.val_tune) and cfg.cluster.method in GRIDS
    outs: list = []
    scorer = Scorer()
    show = bool(cfg.run.progress) and dist.is_main and n >= VAL_PROGRESS_MIN
    mine = range(dist.rank, n, dist.world)
    progress = _Progress("validation", "image", show)
    try:
        for done, i in enumerate(mine, start=1):
            s = samples[i]
            image = torch.from_numpy(np.ascontiguousarray(s.image, np.float32))[None].to(device)
            out = model(image).map(lambda t: t.detach().float().cpu())
            if tune:  # clustered below, once per setting of the grid
                outs.append(out)
            else:
                scorer.add(s, cluster_outputs(out, cluster_config_for(s, cfg.cluster)))
            progress(done, len(mine))
    finally:
        progress.close()
    model.train(was_training)
    if tune:
        from instembed.engine.tune import tune_thresholds

        outs = gather_interleaved(outs, dist)
        progress = _Progress("validation tuning", "setting", show)
        try:
            res = tune_thresholds(outs, samples[:n], cfg.cluster, progress=progress)
        finally:
            progress.close()
        log.info("validation with clustering thresholds tuned on it: %s", res.params)
        tuned = {f"cluster/{k}": float(v) for k, v in res.params.items() if v is not None}
        return {**res.metrics, **tuned}
    return scorer.gather(dist).summary()

"""One evaluation path for one image, a data set, or several processes.

:class:`InstanceEvaluator` turns each (ground truth, prediction) pair into additive per-image
statistics (CVPPP scores, COCO matching records, AP_dsb counts, PQ counts, a confusion matrix),
all from one :class:`~instembed.metrics.overlap.OverlapTable`. :meth:`InstanceEvaluator.summary`
reduces them; :meth:`InstanceEvaluator.merge` (or ``state()`` / ``from_state()``) joins the
statistics of evaluators that saw different images, so per-process evaluation followed by a merge
gives the same numbers as one process that saw every image in the same order.

Conventions (all numbers finite, see docs/metrics.md):

* the ``ignore`` mask (and ``ignore_index`` pixels of ``gt_semantic``) is void: removed from every
  instance before counting; an instance left with no pixel is dropped;
* crowd ground truths only take part in COCO AP (pycocotools' crowd rule) and PQ/AP_dsb (a
  prediction mostly on crowd or void is not a false positive); SBD, BestDice and DiC count
  non-crowd objects;
* without classes every instance is of class 1 ("object"), and PQ is class-agnostic;
* precision / recall / F1 (``"prf"``) follow StarDist's matching, with the same class, crowd
  and void rules as AP_dsb; AJI counts non-crowd ground truths; adapted Rand error and VI
  leave crowd regions out like void and are only computed where both sides are partitions;
* COCO numbers that pycocotools reports as -1 (no non-ignored ground truth in that area range)
  become 1.0 when no prediction lies in the range either and 0.0 otherwise; their names are
  listed under ``coco_undefined``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from instembed.metrics import coco as coco_mod
from instembed.metrics.aji import aji_counts, aji_from_counts
from instembed.metrics.cvppp import cvppp_scores
from instembed.metrics.detection import matching_counts, pair_scores, stats_from_counts
from instembed.metrics.matching import DSB_THRESHOLDS, ap_from_counts, dsb_counts
from instembed.metrics.overlap import (
    OverlapTable,
    as_instances,
    overlap_table,
    per_instance,
    spatial_shape,
)
from instembed.metrics.panoptic import add_counts, pq_counts, pq_from_counts, stuff_iou_counts
from instembed.metrics.rand import partition_cells, rand_vi_from_cells
from instembed.metrics.semantic import confusion_matrix, miou_from_confusion

log = logging.getLogger(__name__)

METRIC_GROUPS = ("sbd", "coco", "dsb", "pq", "miou", "prf", "aji", "rand")
_RAND_KEYS = ("ARE", "ARE_precision", "ARE_recall", "VI", "VI_split", "VI_merge")
_PRF_KEYS = {
    "precision": "precision",
    "recall": "recall",
    "F1": "f1",
    "mean_matched_score": "mean_matched_score",
    "mean_true_score": "mean_true_score",
}
AGNOSTIC_CLASS = 1
_COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR")
_COCO_AREA = {"AP": "all", "AP50": "all", "AP75": "all", "AR": "all", "APs": "small"}
_COCO_AREA |= {"APm": "medium", "APl": "large"}


@dataclass
class ImageStats:
    """Additive statistics of one image (what :class:`InstanceEvaluator` keeps)."""

    name: str | None
    n_gt: int
    n_pred: int
    cvppp: dict[str, float] | None = None
    coco: dict[int, dict[str, coco_mod.CocoRecord]] | None = None
    dsb: np.ndarray | None = None  # (T, 3) TP, FP, FN
    pq: dict[int, np.ndarray] | None = None  # class -> [TP, FP, FN, sum IoU]
    stuff_iou: dict[int, np.ndarray] = field(default_factory=dict)  # class -> [inter, union]
    confusion: tuple[np.ndarray, np.ndarray] | None = None  # non-zero cells of the (K, K+1)
    # confusion matrix: (flat index, count)
    prf: np.ndarray | None = None  # (T, 4) TP, FP, FN, summed IoU of the matches (StarDist)
    aji: tuple[int, int] | None = None  # AJI's C and U
    rand: dict[str, float] | None = None  # adapted Rand error and VI (None: not a partition)


def _void_mask(shape, ignore, gt_semantic, ignore_index) -> np.ndarray | None:
    void = None
    if ignore is not None:
        ignore = np.asarray(ignore)
        if ignore.shape != shape:
            raise ValueError(f"ignore mask has shape {ignore.shape}, expected {shape}")
        void = ignore.astype(bool)
    if gt_semantic is not None:
        sem_void = np.asarray(gt_semantic) == ignore_index
        void = sem_void if void is None else void | sem_void
    return void


class InstanceEvaluator:
    """Accumulates instance-segmentation statistics image by image.

    Args:
        metrics: groups to compute, any of ``"sbd"`` (SBD, BestDice both ways, FBD, DiC,
            |DiC|), ``"coco"`` (AP, AP50, AP75, APs, APm, APl, AR), ``"dsb"`` (AP_dsb),
            ``"pq"`` (PQ, SQ, RQ, PQ†), ``"miou"`` (needs semantic maps and ``num_classes``),
            ``"prf"`` (precision, recall, F1, mean matched / true IoU at ``prf_thresholds``,
            StarDist's matching), ``"aji"`` (aggregated Jaccard index) and ``"rand"``
            (adapted Rand error and variation of information, scikit-image's definitions).
        max_dets: COCO predictions kept per image and category (pycocotools' maxDets, 100).
        dsb_thresholds: IoU thresholds of AP_dsb (default 0.5, 0.55, ..., 0.95).
        stuff_classes: semantic classes scored as stuff in PQ (one segment per class, taken
            from ``gt_semantic`` / ``pred_semantic``).
        num_classes: number of semantic classes, for mIoU.
        ignore_index: void value of semantic maps.
        prf_thresholds: IoU thresholds of the ``"prf"`` group (default 0.5).
    """

    def __init__(
        self,
        metrics: Iterable[str] = METRIC_GROUPS,
        *,
        max_dets: int = 100,
        dsb_thresholds: Sequence[float] = tuple(DSB_THRESHOLDS),
        stuff_classes: Iterable[int] = (),
        num_classes: int | None = None,
        ignore_index: int = 255,
        prf_thresholds: Sequence[float] = (0.5,),
    ) -> None:
        metrics = tuple(metrics)
        unknown = [m for m in metrics if m not in METRIC_GROUPS]
        if unknown:
            raise ValueError(f"unknown metric group(s) {unknown}; choose from {METRIC_GROUPS}")
        if max_dets < 1:
            raise ValueError(f"max_dets must be >= 1, got {max_dets}")
        self.metrics = metrics
        self.max_dets = int(max_dets)
        self.dsb_thresholds = np.asarray(dsb_thresholds, np.float64)
        self.stuff_classes = tuple(int(c) for c in stuff_classes)
        self.num_classes = num_classes
        self.ignore_index = int(ignore_index)
        self.prf_thresholds = tuple(float(t) for t in prf_thresholds)
        self.images: list[ImageStats] = []

    # -- accumulation ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.images)

    def reset(self) -> None:
        self.images = []

    def add(
        self,
        gt: np.ndarray,
        pred: np.ndarray,
        *,
        scores: Sequence[float] | Mapping[int, float] | None = None,
        pred_classes: Sequence[int] | Mapping[int, int] | None = None,
        gt_classes: Sequence[int] | Mapping[int, int] | None = None,
        ignore: np.ndarray | None = None,
        crowd: Sequence[bool] | Mapping[int, bool] | None = None,
        gt_semantic: np.ndarray | None = None,
        pred_semantic: np.ndarray | None = None,
        name: str | None = None,
    ) -> ImageStats:
        """Add one image.

        Args:
            gt: ground-truth instances, (H, W) int label image (0 = background) or (N, H, W)
                bool mask stack.
            pred: predicted instances, same two forms.
            scores: per predicted instance (COCO ranking), default 1.0; a sequence in the order
                of the sorted label ids (or of the stack), or ``{id: score}``.
            pred_classes / gt_classes: per instance class, same forms; give both or neither.
            ignore: (H, W) bool void mask.
            crowd: per ground-truth instance, ``True`` = crowd region.
            gt_semantic / pred_semantic: (H, W) int semantic maps (``ignore_index`` = void),
                for mIoU and the stuff classes of PQ.
            name: a label for this image in ``summary()["per_image"]``.

        Returns:
            The image's :class:`ImageStats` (also kept).
        """
        where = f" ({name})" if name else ""
        gt = as_instances(gt, f"gt{where}")
        pred = as_instances(pred, f"pred{where}")
        shape = spatial_shape(gt)
        if spatial_shape(pred) != shape:
            raise ValueError(
                f"gt and pred cover different images{where}: gt {shape}, pred {spatial_shape(pred)}"
            )
        if (gt_classes is None) != (pred_classes is None):
            raise ValueError(
                f"give both gt_classes and pred_classes or neither{where} "
                f"(got gt_classes={'set' if gt_classes is not None else None}, "
                f"pred_classes={'set' if pred_classes is not None else None})"
            )
        for nm, sem in (("gt_semantic", gt_semantic), ("pred_semantic", pred_semantic)):
            if sem is not None and np.shape(sem) != shape:
                raise ValueError(f"{nm} has shape {np.shape(sem)}, expected {shape}{where}")
        void = _void_mask(shape, ignore, gt_semantic, self.ignore_index)

        full = overlap_table(gt, pred, void)
        g_cls = per_instance(
            gt_classes, full.gt_ids, AGNOSTIC_CLASS, f"gt_classes{where}", np.int64
        )
        p_cls = per_instance(
            pred_classes, full.pred_ids, AGNOSTIC_CLASS, f"pred_classes{where}", np.int64
        )
        p_score = per_instance(scores, full.pred_ids, 1.0, f"scores{where}", np.float64)
        g_crowd = per_instance(crowd, full.gt_ids, False, f"crowd{where}", bool)
        # instances left without an evaluated pixel are dropped
        gk = np.flatnonzero(full.gt_area > 0)
        pk = np.flatnonzero(full.pred_area > 0)
        table = full.select(gk, pk)
        g_cls, g_crowd = g_cls[gk], g_crowd[gk]
        p_cls, p_score = p_cls[pk], p_score[pk]
        real = np.flatnonzero(~g_crowd)

        stats = ImageStats(name=name, n_gt=int(real.size), n_pred=table.n_pred)
        if "sbd" in self.metrics:
            stats.cvppp = cvppp_scores(table.select(real, None))
        if "coco" in self.metrics:
            stats.coco = self._coco(table, g_cls, p_cls, p_score, g_crowd)
        if "dsb" in self.metrics:
            stats.dsb = self._dsb(table, g_cls, p_cls, g_crowd)
        if "pq" in self.metrics:
            stats.pq = pq_counts(table, g_cls, p_cls, g_crowd)
            if self.stuff_classes and gt_semantic is not None and pred_semantic is not None:
                self._stuff(stats, np.asarray(gt_semantic), np.asarray(pred_semantic), void)
        if "prf" in self.metrics:
            scores = pair_scores(table.inter, table.gt_area, table.pred_area)
            scores *= g_cls[:, None] == p_cls[None, :]
            excused = self._excused(table, g_cls, p_cls, g_crowd)
            stats.prf = matching_counts(scores[real], self.prf_thresholds, excused)
        if "aji" in self.metrics:
            stats.aji = aji_counts(table.inter[real], table.gt_area[real], table.pred_area)
        if "rand" in self.metrics:
            stats.rand = self._rand(table, real)
        if "miou" in self.metrics and gt_semantic is not None and pred_semantic is not None:
            if self.num_classes is None:
                raise ValueError("mIoU needs num_classes (InstanceEvaluator(num_classes=K))")
            cm = confusion_matrix(
                gt_semantic, pred_semantic, self.num_classes, self.ignore_index
            ).ravel()
            nz = np.flatnonzero(cm)
            stats.confusion = (nz, cm[nz])
        self.images.append(stats)
        return stats

    def _coco(self, table: OverlapTable, g_cls, p_cls, p_score, g_crowd):
        out = {}
        for c in np.union1d(g_cls, p_cls).tolist():
            gi = np.flatnonzero(g_cls == c)
            pi = np.flatnonzero(p_cls == c)
            out[int(c)] = coco_mod.match_image(
                table.inter[np.ix_(gi, pi)],
                table.gt_area[gi],
                table.pred_area[pi],
                p_score[pi],
                g_crowd[gi],
                max_dets=self.max_dets,
            )
        return out

    @staticmethod
    def _rand(table: OverlapTable, real: np.ndarray) -> dict[str, float] | None:
        """Adapted Rand error and VI of the partitions; None when a side has overlapping
        instances (not a partition). Crowd regions are left out like void."""
        if int(table.gt_area.sum()) != table.gt_fg or int(table.pred_area.sum()) != table.pred_fg:
            return None
        pred_on_bg = table.pred_area - table.inter.sum(0)
        bg_bg = table.n_pixels - table.gt_fg - table.pred_fg + table.fg_inter
        args = (table.inter[real], table.gt_area[real], table.pred_area, pred_on_bg, bg_bg)
        are = rand_vi_from_cells(*partition_cells(*args, gt_background=False))
        vi = rand_vi_from_cells(*partition_cells(*args, gt_background=True))
        return {**{k: are[k] for k in _RAND_KEYS[:3]}, **{k: vi[k] for k in _RAND_KEYS[3:]}}

    @staticmethod
    def _excused(table: OverlapTable, g_cls, p_cls, g_crowd) -> np.ndarray:
        """Predictions with more than half of their pixels on void or same-class crowd."""
        full_area = table.pred_area + table.pred_void
        on_void = table.pred_void.astype(np.float64)
        if g_crowd.any():
            same = g_cls[g_crowd][:, None] == p_cls[None, :]
            on_void = on_void + (table.inter[g_crowd] * same).sum(0)
        excused = np.zeros(table.n_pred, bool)
        np.greater(on_void, 0.5 * full_area, out=excused, where=full_area > 0)
        return excused

    def _dsb(self, table: OverlapTable, g_cls, p_cls, g_crowd) -> np.ndarray:
        iou = table.iou() * (g_cls[:, None] == p_cls[None, :])
        excused = self._excused(table, g_cls, p_cls, g_crowd)
        return dsb_counts(iou[~g_crowd], self.dsb_thresholds, excused)

    def _stuff(self, stats: ImageStats, gt_sem, pred_sem, void) -> None:
        stuff = np.asarray(self.stuff_classes)
        gs = np.where(np.isin(gt_sem, stuff), gt_sem.astype(np.int64) + 1, 0)
        ps = np.where(np.isin(pred_sem, stuff), pred_sem.astype(np.int64) + 1, 0)
        t = overlap_table(gs, ps, void)
        gk, pk = np.flatnonzero(t.gt_area > 0), np.flatnonzero(t.pred_area > 0)
        t = t.select(gk, pk)
        g_cls, p_cls = t.gt_ids - 1, t.pred_ids - 1
        add_counts(stats.pq, pq_counts(t, g_cls, p_cls, np.zeros(t.n_gt, bool)))
        stats.stuff_iou = stuff_iou_counts(t, g_cls, p_cls)

    # -- merging -----------------------------------------------------------------------------

    def _config(self) -> dict:
        return {
            "metrics": self.metrics,
            "max_dets": self.max_dets,
            "dsb_thresholds": tuple(self.dsb_thresholds.tolist()),
            "stuff_classes": self.stuff_classes,
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "prf_thresholds": self.prf_thresholds,
        }

    def merge(self, other: InstanceEvaluator) -> InstanceEvaluator:
        """Append the images of ``other`` (after this one's); returns ``self``."""
        if other._config() != self._config():
            raise ValueError(
                f"cannot merge evaluators with different settings: {self._config()} vs "
                f"{other._config()}"
            )
        self.images.extend(other.images)
        return self

    def state(self) -> dict:
        """Picklable state (settings and per-image statistics), e.g. to gather across processes."""
        return {"config": self._config(), "images": list(self.images)}

    @classmethod
    def from_state(cls, state: dict) -> InstanceEvaluator:
        ev = cls(**state["config"])
        ev.images = list(state["images"])
        return ev

    # -- reduction ---------------------------------------------------------------------------

    def summary(self, per_image: bool = True) -> dict:
        """All numbers over the images added so far.

        Keys (those whose group was requested): ``SBD, BestDice_gt_pred, BestDice_pred_gt, FBD,
        DiC, absDiC`` (means over images); ``AP, AP50, AP75, APs, APm, APl, AR`` (COCO, pooled
        as pycocotools); ``AP_dsb@0.5, AP_dsb@0.5:0.95`` (mean over images of the per-image
        AP_dsb) and ``AP_dsb_pooled@0.5, AP_dsb_pooled@0.5:0.95`` (TP, FP, FN summed over the
        data set first); ``PQ, SQ, RQ`` (+ ``_things`` / ``_stuff`` and ``PQ_dagger`` when stuff
        classes are scored); ``mIoU``; ``precision@t, recall@t, F1@t, mean_matched_score@t,
        mean_true_score@t`` for each ``prf_thresholds`` t (StarDist's matching, pooled as
        ``matching_dataset(by_image=False)``); ``AJI`` (mean over images) and ``AJI_pooled``
        (ΣC / ΣU); ``ARE, ARE_precision, ARE_recall, VI, VI_split, VI_merge`` (means over the
        images whose instances are partitions); ``per_class``; ``per_image`` (list of dicts).
        """
        if not self.images:
            raise ValueError("no image was added to the evaluator")
        out: dict = {"n_images": len(self.images)}
        out.update(self._reduce(self.images))
        if per_image:
            rows = []
            for k, im in enumerate(self.images):
                row = {"image": im.name if im.name is not None else k}
                row.update(self._reduce([im], image_level=True))
                row.pop("per_class", None)
                rows.append(row)
            out["per_image"] = rows
        return out

    def _reduce(self, images: list[ImageStats], image_level: bool = False) -> dict:
        out: dict = {"n_gt": sum(i.n_gt for i in images), "n_pred": sum(i.n_pred for i in images)}
        per_class: dict = {}
        if "sbd" in self.metrics:
            for key in ("SBD", "BestDice_gt_pred", "BestDice_pred_gt", "FBD", "DiC", "absDiC"):
                out[key] = float(np.mean([i.cvppp[key] for i in images]))
        if "coco" in self.metrics:
            by_cat: dict = {}
            for im in images:
                for c, recs in im.coco.items():
                    slot = by_cat.setdefault(c, {a: [] for a in coco_mod.AREA_RANGES})
                    for a, r in recs.items():
                        slot[a].append(r)
            stats, ap_class = coco_mod.summarize(by_cat, self.max_dets)
            undefined = []
            for key in _COCO_KEYS:
                if stats[key] is None:
                    area = _COCO_AREA[key]
                    n_dt = sum(r.n_dt for recs in by_cat.values() for r in recs[area])
                    stats[key] = 1.0 if n_dt == 0 else 0.0
                    undefined.append(key)
            out.update(stats)
            out["coco_undefined"] = undefined
            per_class["AP"] = ap_class
        if "dsb" in self.metrics:
            counts = np.stack([i.dsb for i in images])  # (I, T, 3)
            per_img = ap_from_counts(counts)  # (I, T)
            pooled = ap_from_counts(counts.sum(0))  # (T,)
            thr = self.dsb_thresholds
            i50 = np.flatnonzero(np.isclose(thr, 0.5))
            mean_img = per_img.mean(0)
            if i50.size:
                out["AP_dsb@0.5"] = float(mean_img[i50[0]])
                if not image_level:
                    out["AP_dsb_pooled@0.5"] = float(pooled[i50[0]])
            out["AP_dsb@0.5:0.95"] = float(mean_img.mean())
            if not image_level:
                out["AP_dsb_pooled@0.5:0.95"] = float(pooled.mean())
            out["AP_dsb_per_threshold"] = {f"{t:.2f}": float(v) for t, v in zip(thr, mean_img)}
            if i50.size:
                tp, fp, fn = (int(x) for x in counts.sum(0)[i50[0]])
                out["TP@0.5"], out["FP@0.5"], out["FN@0.5"] = tp, fp, fn
        if "pq" in self.metrics:
            total: dict = {}
            stuff_iou: dict = {}
            for im in images:
                add_counts(total, im.pq)
                add_counts(stuff_iou, im.stuff_iou)
            res = pq_from_counts(total, self.stuff_classes, stuff_iou)
            out["PQ"], out["SQ"], out["RQ"] = (res["all"][k] for k in ("PQ", "SQ", "RQ"))
            if self.stuff_classes:
                for grp, suffix in (("things", "_th"), ("stuff", "_st")):
                    for k in ("PQ", "SQ", "RQ"):
                        out[k + suffix] = res[grp][k]
                out["PQ_dagger"] = res["PQ_dagger"]
            per_class["PQ"] = res["per_class"]
        if "miou" in self.metrics:
            cms = [i.confusion for i in images if i.confusion is not None]
            if cms:
                k = self.num_classes
                cm = np.zeros(k * (k + 1), np.int64)
                for idx, cnt in cms:
                    np.add.at(cm, idx, cnt)
                res = miou_from_confusion(cm.reshape(k, k + 1))
                out["mIoU"] = res["mIoU"]
                per_class["IoU"] = res["per_class"]
        if "prf" in self.metrics:
            counts = np.stack([i.prf for i in images]).sum(0)  # (T, 4), pooled
            n_true = sum(i.n_gt for i in images)
            n_pred = sum(i.n_pred for i in images)
            for t, c in zip(self.prf_thresholds, counts):
                st = stats_from_counts(*c, n_true, n_pred)
                for key, name in _PRF_KEYS.items():
                    out[f"{key}@{t:g}"] = float(st[name])
        if "aji" in self.metrics:
            cu = np.array([i.aji for i in images], np.float64)  # (I, 2)
            out["AJI"] = float(np.mean([aji_from_counts(c, u) for c, u in cu]))
            if not image_level:
                out["AJI_pooled"] = aji_from_counts(*cu.sum(0))
        if "rand" in self.metrics:
            rows = [i.rand for i in images if i.rand is not None]
            if rows:
                for key in _RAND_KEYS:
                    out[key] = float(np.mean([r[key] for r in rows]))
        if per_class:
            out["per_class"] = per_class
        return out


def evaluate_image(gt: np.ndarray, pred: np.ndarray, **kwargs) -> dict:
    """All metrics of one image: ``InstanceEvaluator(...).add(gt, pred, ...)`` then ``summary``.

    Keyword arguments go to :class:`InstanceEvaluator` (``metrics``, ``max_dets``, ...) or to
    :meth:`InstanceEvaluator.add` (``scores``, ``pred_classes``, ``ignore``, ...).
    """
    init_keys = {"metrics", "max_dets", "dsb_thresholds", "stuff_classes", "num_classes"}
    init_keys |= {"ignore_index", "prf_thresholds"}
    init = {k: kwargs.pop(k) for k in list(kwargs) if k in init_keys}
    ev = InstanceEvaluator(**init)
    ev.add(gt, pred, **kwargs)
    return ev.summary(per_image=False)


def panoptic_quality(
    gt: np.ndarray,
    pred: np.ndarray,
    *,
    gt_classes=None,
    pred_classes=None,
    crowd=None,
    ignore: np.ndarray | None = None,
    gt_semantic: np.ndarray | None = None,
    pred_semantic: np.ndarray | None = None,
    stuff_classes: Iterable[int] = (),
    ignore_index: int = 255,
) -> dict:
    """PQ, SQ, RQ (overall, things, stuff), PQ† and per-class values of one image.

    Thing instances come from ``gt`` / ``pred`` (label images or mask stacks, with optional
    classes and crowd flags); stuff segments from the semantic maps for ``stuff_classes``.
    """
    ev = InstanceEvaluator(("pq",), stuff_classes=stuff_classes, ignore_index=ignore_index)
    ev.add(
        gt,
        pred,
        gt_classes=gt_classes,
        pred_classes=pred_classes,
        crowd=crowd,
        ignore=ignore,
        gt_semantic=gt_semantic,
        pred_semantic=pred_semantic,
    )
    return ev.summary(per_image=False)

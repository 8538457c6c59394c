"""Cityscapes instance-level AP, the rules of cityscapesScripts'
``evaluation/evalInstanceLevelSemanticLabeling.py`` (Cordts et al. 2016).

Ground truth is a Cityscapes ``*_gtFine_instanceIds.png`` array: a value ``v >= 1000`` is an
instance of label ``v // 1000``; a value ``v < 1000`` is a region of label ``v`` without instance
ids -- for a class with instances a *group* (crowd) region; pixels whose value is a void label id
(``ignoreInEval``) are void. A prediction is a binary mask with a label id and a confidence.

Per class and IoU threshold t ∈ {0.50, 0.55, ..., 0.95} (NumPy's ``arange(0.5, 1, 0.05)``):

* ground truths taken into account: instances (id >= 1000) of at least ``min_region_size``
  (100) pixels;
* a prediction *matches* a ground truth when IoU > t (strict). A ground truth with matches is
  a true positive scored with the highest matching confidence; every other matching
  prediction is a false positive with its own confidence; one without is a false negative;
* a prediction that matches no ground truth of its class (small ones and groups included)
  is a false positive unless (void pixels + pixels on group regions + pixels on ground
  truths below ``min_region_size``, a small group counted twice) / its area > t;
* precision/recall at every distinct confidence (predictions with at least that confidence),
  plus the point (recall 0, precision 1); AP = Σ_k p_k (r_{k-1} - r_{k+1}) / 2 over the points
  in increasing confidence (r_{-1} = r_0, the recall after the last point = 0);
* AP of a class = 0 with ground truths but no prediction, undefined (left out of the means)
  without ground truths. ``AP`` = mean over classes and thresholds, ``AP50`` at t = 0.5.

Differences: where cityscapesScripts fails (a class with ground truths and predictions of which
none is counted: its empty score list raises an IndexError) the class scores 0.0; when no class
has a ground truth (cityscapesScripts: NaN) the means are 1.0 if no prediction was counted
either, else 0.0, and ``undefined`` is True.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse

#: label id -> name of the Cityscapes classes evaluated (hasInstances and not ignoreInEval)
CITYSCAPES_INSTANCE_CLASSES: dict[int, str] = {
    24: "person",
    25: "rider",
    26: "car",
    27: "truck",
    28: "bus",
    31: "train",
    32: "motorcycle",
    33: "bicycle",
}
#: label ids with ignoreInEval (void): unlabeled ... polegroup, caravan, trailer, license plate
CITYSCAPES_VOID_IDS: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30, -1)
CITYSCAPES_THRESHOLDS = np.arange(0.5, 1.0, 0.05)


@dataclass
class _ClassImage:
    """One class in one image: every ground-truth region of the class and every prediction."""

    gt_instance: np.ndarray  # (G,) bool, id >= 1000 (False: group region)
    gt_area: np.ndarray  # (G,) int64
    pred_area: np.ndarray  # (P,) int64
    pred_void: np.ndarray  # (P,) int64
    pred_score: np.ndarray  # (P,) float64
    inter: np.ndarray  # (G, P) int64


def _as_masks(pred, shape) -> np.ndarray:
    arr = np.asarray(pred)
    if arr.ndim == len(shape):  # label image: one mask per non-zero id, in id order
        ids = np.unique(arr)
        ids = ids[ids != 0]
        return arr[None] == ids.reshape((-1,) + (1,) * arr.ndim)
    if arr.ndim != len(shape) + 1 or arr.shape[1:] != tuple(shape):
        raise ValueError(f"prediction masks of shape {arr.shape} do not fit the image {shape}")
    return arr != 0


class CityscapesInstanceEvaluator:
    """Accumulates images and computes cityscapesScripts' instance AP.

    Args:
        classes: label id -> name of the classes evaluated (default the 8 Cityscapes ones).
        void_ids: ground-truth values that are void.
        min_region_size: smallest ground-truth instance (pixels) that counts.
        thresholds: IoU thresholds (strict ``>``).
    """

    def __init__(
        self,
        classes: Mapping[int, str] = CITYSCAPES_INSTANCE_CLASSES,
        void_ids: Sequence[int] = CITYSCAPES_VOID_IDS,
        min_region_size: int = 100,
        thresholds: Sequence[float] = tuple(CITYSCAPES_THRESHOLDS),
    ) -> None:
        self.classes = {int(k): str(v) for k, v in classes.items()}
        self.void_ids = np.asarray(list(void_ids), np.int64)
        self.min_region_size = int(min_region_size)
        self.thresholds = np.asarray(thresholds, np.float64)
        self.images: list[dict[int, _ClassImage]] = []
        self.names: list[str | None] = []

    def __len__(self) -> int:
        return len(self.images)

    def add(
        self,
        gt_instance_ids: np.ndarray,
        pred_masks: np.ndarray,
        pred_classes: Sequence[int],
        scores: Sequence[float],
        name: str | None = None,
    ) -> None:
        """Add one image.

        Args:
            gt_instance_ids: (H, W) int array in the ``*_gtFine_instanceIds.png`` encoding.
            pred_masks: (N, H, W) masks (non-zero = inside) or an (H, W) label image (ids in
                increasing order are the predictions).
            pred_classes: (N,) label id of each prediction (Cityscapes ids, not train ids).
            scores: (N,) confidence of each prediction.
            name: a label for this image.
        """
        gt = np.asarray(gt_instance_ids).astype(np.int64)
        masks = _as_masks(pred_masks, gt.shape)
        pred_classes = np.asarray(pred_classes, np.int64).reshape(-1)
        scores = np.asarray(scores, np.float64).reshape(-1)
        if not (len(masks) == pred_classes.size == scores.size):
            raise ValueError(
                f"{len(masks)} prediction masks, {pred_classes.size} classes, "
                f"{scores.size} scores{f' ({name})' if name else ''}"
            )
        void = np.isin(gt, self.void_ids).reshape(-1)
        values, inv = np.unique(gt.reshape(-1), return_inverse=True)  # increasing ids
        label = np.where(values >= 1000, values // 1000, values)
        gt_area = np.bincount(inv, minlength=values.size).astype(np.int64)
        k, pix = np.nonzero(masks.reshape(len(masks), gt.size))
        areas = np.bincount(k, minlength=len(masks)).astype(np.int64)
        pred_void = np.bincount(k, weights=void[pix], minlength=len(masks)).astype(np.int64)
        inter = sparse.coo_array(
            (np.ones(k.size, np.int64), (inv.reshape(-1)[pix], k)),
            shape=(values.size, len(masks)),
        ).toarray()
        per_class: dict[int, _ClassImage] = {}
        for c in self.classes:
            rows = np.flatnonzero(label == c)
            keep = np.flatnonzero((pred_classes == c) & (areas > 0))
            per_class[c] = _ClassImage(
                gt_instance=values[rows] >= 1000,
                gt_area=gt_area[rows],
                pred_area=areas[keep],
                pred_void=pred_void[keep],
                pred_score=scores[keep],
                inter=inter[np.ix_(rows, keep)],
            )
        self.images.append(per_class)
        self.names.append(name)

    def _examples(self, c: int, t: float):
        """y_true, y_score and the hard false negatives of class ``c`` at threshold ``t``."""
        trues, confs, hard_fn = [], [], 0
        have_gt = have_pred = False
        for im in self.images:
            d = im[c]
            union = d.gt_area[:, None] + d.pred_area[None, :] - d.inter
            iou = np.zeros(d.inter.shape)
            np.divide(d.inter, union, out=iou, where=union > 0)
            hit = (iou > t) & (d.inter > 0)
            counted = d.gt_instance & (d.gt_area >= self.min_region_size)
            have_gt |= bool(counted.any())
            have_pred |= d.pred_area.size > 0
            for i in np.flatnonzero(counted):
                s = d.pred_score[hit[i]]
                if s.size == 0:
                    hard_fn += 1
                    continue
                trues.append(1.0)
                confs.append(s.max())
                dup = np.delete(s, np.argmax(s))
                trues.extend([0.0] * dup.size)
                confs.extend(dup.tolist())
            unmatched = ~hit.any(0)
            if unmatched.any():
                weight = (~d.gt_instance).astype(np.int64) + (d.gt_area < self.min_region_size)
                ignored = d.pred_void + weight @ d.inter
                fp = unmatched & (ignored / d.pred_area <= t)
                trues.extend([0.0] * int(fp.sum()))
                confs.extend(d.pred_score[fp].tolist())
        return np.asarray(trues), np.asarray(confs), hard_fn, have_gt, have_pred

    def _ap(self, c: int, t: float) -> float | None:
        y_true, y_score, hard_fn, have_gt, have_pred = self._examples(c, t)
        if not have_gt:
            return None
        if not have_pred or y_true.size == 0:
            return 0.0
        order = np.argsort(y_score, kind="stable")
        y_score, y_true = y_score[order], y_true[order]
        _, first = np.unique(y_score, return_index=True)
        n_true = y_true.sum()
        before = np.concatenate([[0.0], np.cumsum(y_true)])[first]  # trues below each level
        tp = n_true - before
        fp = y_true.size - first - tp
        fn = before + hard_fn
        precision = np.append(tp / (tp + fp), 1.0)
        recall = np.append(tp / (tp + fn), 0.0)
        padded = np.concatenate([[recall[0]], recall, [0.0]])
        widths = 0.5 * (padded[:-2] - padded[2:])
        return float(precision @ widths)

    def ap_matrix(self) -> np.ndarray:
        """(C, T) AP per class (in ``classes`` order) and threshold; NaN where undefined."""
        out = np.full((len(self.classes), self.thresholds.size), np.nan)
        for ci, c in enumerate(self.classes):
            for ti, t in enumerate(self.thresholds):
                v = self._ap(c, float(t))
                if v is not None:
                    out[ci, ti] = v
        return out

    def summary(self) -> dict:
        """``AP``, ``AP50`` (means over classes with ground truth), ``per_class``
        ({name: {"AP", "AP50"}}, None where undefined), ``ap_matrix`` (C x T, None where
        undefined), ``thresholds``, ``undefined``."""
        if not self.images:
            raise ValueError("no image was added to the evaluator")
        m = self.ap_matrix()
        i50 = np.flatnonzero(np.isclose(self.thresholds, 0.5))
        defined = ~np.isnan(m[:, 0]) if m.size else np.zeros(0, bool)
        out: dict = {"n_images": len(self.images)}
        if defined.any():
            out["AP"] = float(m[defined].mean())
            if i50.size:
                out["AP50"] = float(m[defined][:, i50[0]].mean())
            out["undefined"] = False
        else:
            n_pred = sum(d.pred_area.size for im in self.images for d in im.values())
            val = 1.0 if n_pred == 0 else 0.0
            out["AP"] = val
            if i50.size:
                out["AP50"] = val
            out["undefined"] = True
        per_class = {}
        for ci, name in enumerate(self.classes.values()):
            ok = bool(defined[ci])
            row = {"AP": float(m[ci].mean()) if ok else None}
            if i50.size:
                row["AP50"] = float(m[ci, i50[0]]) if ok else None
            per_class[name] = row
        out["per_class"] = per_class
        out["ap_matrix"] = [[None if np.isnan(v) else float(v) for v in row] for row in m]
        out["thresholds"] = self.thresholds.tolist()
        return out


def read_cityscapes_prediction(txt_path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one image's predictions in the Cityscapes results format.

    Each line of ``txt_path`` is ``<mask png relative to the txt's folder> <label id> <conf>``;
    a mask pixel is inside when non-zero (after conversion to 8-bit grey, as cityscapesScripts
    reads it). A mask listed twice keeps its last line, as cityscapesScripts does.

    Returns:
        ``(masks (N, H, W) bool, label ids (N,), confidences (N,))``.
    """
    from PIL import Image

    txt_path = Path(txt_path)
    entries: dict[Path, tuple[int, float]] = {}
    for line in txt_path.read_text().splitlines():
        if not line.strip():
            continue
        parts = line.split(" ")
        if len(parts) != 3:
            raise ValueError(
                f"{txt_path}: expected '<mask> <label id> <confidence>' per line, got {line!r}"
            )
        entries[(txt_path.parent / parts[0]).resolve()] = (int(float(parts[1])), float(parts[2]))
    masks, labels, confs = [], [], []
    for path, (lab, conf) in entries.items():
        with Image.open(path) as im:
            masks.append(np.asarray(im.convert("L")) != 0)
        labels.append(lab)
        confs.append(conf)
    if not masks:
        return np.zeros((0, 0, 0), bool), np.zeros(0, np.int64), np.zeros(0)
    return np.stack(masks), np.asarray(labels, np.int64), np.asarray(confs, np.float64)


def evaluate_cityscapes_files(
    gt_files: Sequence[str | Path], pred_txt_files: Sequence[str | Path], **kwargs
) -> dict:
    """Cityscapes instance AP of ``*_gtFine_instanceIds.png`` files against result txt files
    (same order); ``kwargs`` go to :class:`CityscapesInstanceEvaluator`."""
    from PIL import Image

    if len(gt_files) != len(pred_txt_files):
        raise ValueError(f"{len(gt_files)} ground-truth files but {len(pred_txt_files)} txt files")
    ev = CityscapesInstanceEvaluator(**kwargs)
    for g, p in zip(gt_files, pred_txt_files):
        with Image.open(g) as im:
            gt = np.asarray(im)
        masks, labels, confs = read_cityscapes_prediction(p)
        if masks.shape[0] == 0:
            masks = np.zeros((0,) + gt.shape, bool)
        ev.add(gt, masks, labels, confs, name=str(g))
    return ev.summary()

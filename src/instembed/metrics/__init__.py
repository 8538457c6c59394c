"""Instance, panoptic and semantic segmentation metrics (numpy + scipy only, no torch).

Everything is computed from one overlap table per image (:func:`overlap_table`), then reduced
by :class:`InstanceEvaluator`. Definitions and the reference tool each metric matches are in
``docs/metrics.md``:

* SBD, BestDice both ways, FBD, DiC, |DiC| -- CVPPP ``evaluate.py``;
* COCO AP, AP50, AP75, APs, APm, APl, AR -- pycocotools ``COCOeval`` (segm);
* AP_dsb@τ -- TP / (TP + FP + FN), one-to-one Hungarian matching at IoU >= τ (StarDist, EmbedSeg);
* PQ, SQ, RQ, PQ† -- panopticapi's rules, Porzi et al. 2019 for PQ†;
* mIoU with an ignore label; adjusted Rand index.
"""

from instembed.metrics.evaluator import (
    METRIC_GROUPS,
    ImageStats,
    InstanceEvaluator,
    evaluate_image,
    panoptic_quality,
)
from instembed.metrics.overlap import OverlapTable, overlap_table
from instembed.metrics.rand import adjusted_rand_index
from instembed.metrics.semantic import confusion_matrix, miou

__all__ = [
    "METRIC_GROUPS",
    "ImageStats",
    "InstanceEvaluator",
    "OverlapTable",
    "adjusted_rand_index",
    "confusion_matrix",
    "evaluate_image",
    "miou",
    "overlap_table",
    "panoptic_quality",
]

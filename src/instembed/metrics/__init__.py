"""Instance, panoptic and semantic segmentation metrics (numpy + scipy only, no torch).

Everything is computed from one overlap table per image (:func:`overlap_table`), then reduced
by :class:`InstanceEvaluator`. Definitions and the reference tool each metric matches are in
``docs/metrics.md``:

* SBD, BestDice both ways, FBD, DiC, |DiC| -- CVPPP ``evaluate.py``;
* COCO AP, AP50, AP75, APs, APm, APl, AR -- pycocotools ``COCOeval`` (segm);
* AP_dsb@τ -- TP / (TP + FP + FN), one-to-one Hungarian matching at IoU >= τ (StarDist, EmbedSeg);
* PQ, SQ, RQ, PQ† -- panopticapi's rules, Porzi et al. 2019 for PQ†;
* mIoU with an ignore label; adjusted Rand index;
* precision, recall, F1, mean matched / true score at any IoU threshold -- StarDist's
  ``matching`` / ``matching_dataset`` (:func:`match_stats`, :func:`match_stats_dataset`);
* aggregated Jaccard index -- Kumar et al. 2017, MoNuSeg code (:func:`aggregated_jaccard_index`);
* adapted Rand error, variation of information -- scikit-image (:func:`adapted_rand_error`,
  :func:`variation_of_information`);
* Cityscapes instance AP -- cityscapesScripts (:class:`CityscapesInstanceEvaluator`).
"""

from instembed.metrics.aji import aggregated_jaccard_index
from instembed.metrics.cityscapes import CityscapesInstanceEvaluator, evaluate_cityscapes_files
from instembed.metrics.detection import match_stats, match_stats_dataset
from instembed.metrics.evaluator import (
    METRIC_GROUPS,
    ImageStats,
    InstanceEvaluator,
    evaluate_image,
    panoptic_quality,
)
from instembed.metrics.overlap import OverlapTable, overlap_table
from instembed.metrics.rand import (
    adapted_rand_error,
    adjusted_rand_index,
    contingency_table,
    variation_of_information,
)
from instembed.metrics.semantic import confusion_matrix, miou

__all__ = [
    "METRIC_GROUPS",
    "CityscapesInstanceEvaluator",
    "ImageStats",
    "InstanceEvaluator",
    "OverlapTable",
    "adapted_rand_error",
    "adjusted_rand_index",
    "aggregated_jaccard_index",
    "confusion_matrix",
    "contingency_table",
    "evaluate_cityscapes_files",
    "evaluate_image",
    "match_stats",
    "match_stats_dataset",
    "miou",
    "overlap_table",
    "panoptic_quality",
    "variation_of_information",
]

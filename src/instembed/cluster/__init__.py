"""Clustering and post-processing: from pixel embeddings (or center/offset maps, or a model's
own raw instances) to instances.

Entry point: :func:`cluster_embeddings` (one image), :func:`cluster_batch`,
:func:`cluster_per_class`; methods ``METHODS``, one :class:`Method` each in the table of
:mod:`instembed.cluster.methods` (:func:`register`, :func:`get_method`,
:func:`validate_method`). Each method is also a plain function on tensors.
"""

from instembed.cluster.assign import (
    assign_labels,
    assign_pixels,
    guaranteed_radius,
    nearest_center,
)
from instembed.cluster.center_offset import (
    center_offset_cluster,
    find_instance_centers,
    group_pixels,
)
from instembed.cluster.detections import (
    box_iou,
    filter_detections,
    filter_steps,
    greedy_nms,
    mask_iou,
)
from instembed.cluster.dispatch import cluster_batch, cluster_embeddings, cluster_per_class
from instembed.cluster.hdbscan import hdbscan_cluster
from instembed.cluster.kmeans import kmeans, kmeans_cluster
from instembed.cluster.meanshift import bin_seeds, mean_shift, meanshift_cluster
from instembed.cluster.methods import (
    GRIDS,
    METHODS,
    Method,
    exportable_methods,
    get_method,
    register,
    registered_methods,
    validate_method,
)
from instembed.cluster.panoptic import majority_class, panoptic_fusion
from instembed.cluster.postprocess import (
    SCORE_MODES,
    fill_holes,
    instance_scores,
    relabel_sequential,
    remove_small_instances,
)
from instembed.cluster.sampling import Centres, cluster_on_sample, foreground_sample
from instembed.cluster.seeded import kernel_q2_threshold, seeded_cluster, sigma_to_scale
from instembed.cluster.threshold import merge_close_centers, threshold_cluster, threshold_modes
from instembed.structures import Instances

__all__ = [
    "GRIDS",
    "METHODS",
    "SCORE_MODES",
    "Centres",
    "Instances",
    "Method",
    "assign_labels",
    "assign_pixels",
    "bin_seeds",
    "box_iou",
    "center_offset_cluster",
    "cluster_batch",
    "cluster_embeddings",
    "cluster_on_sample",
    "cluster_per_class",
    "exportable_methods",
    "fill_holes",
    "filter_detections",
    "filter_steps",
    "find_instance_centers",
    "foreground_sample",
    "get_method",
    "greedy_nms",
    "group_pixels",
    "guaranteed_radius",
    "hdbscan_cluster",
    "instance_scores",
    "kernel_q2_threshold",
    "kmeans",
    "kmeans_cluster",
    "majority_class",
    "mask_iou",
    "mean_shift",
    "meanshift_cluster",
    "merge_close_centers",
    "nearest_center",
    "panoptic_fusion",
    "register",
    "registered_methods",
    "relabel_sequential",
    "remove_small_instances",
    "seeded_cluster",
    "sigma_to_scale",
    "threshold_cluster",
    "threshold_modes",
    "validate_method",
]

"""Clustering and post-processing: from pixel embeddings (or center/offset maps) to instances.

Entry point: :func:`cluster_embeddings` (one image), :func:`cluster_batch`,
:func:`cluster_per_class`; methods ``METHODS``. Each method is also a plain function on tensors.
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
from instembed.cluster.dispatch import METHODS, cluster_batch, cluster_embeddings, cluster_per_class
from instembed.cluster.hdbscan import hdbscan_cluster
from instembed.cluster.kmeans import kmeans, kmeans_cluster
from instembed.cluster.meanshift import bin_seeds, mean_shift, meanshift_cluster
from instembed.cluster.panoptic import majority_class, panoptic_fusion
from instembed.cluster.postprocess import (
    SCORE_MODES,
    fill_holes,
    instance_scores,
    relabel_sequential,
    remove_small_instances,
)
from instembed.cluster.seeded import kernel_q2_threshold, seeded_cluster, sigma_to_scale
from instembed.cluster.threshold import merge_close_centers, threshold_cluster, threshold_modes
from instembed.structures import Instances

__all__ = [
    "METHODS",
    "SCORE_MODES",
    "Instances",
    "assign_labels",
    "assign_pixels",
    "bin_seeds",
    "center_offset_cluster",
    "cluster_batch",
    "cluster_embeddings",
    "cluster_per_class",
    "fill_holes",
    "find_instance_centers",
    "group_pixels",
    "guaranteed_radius",
    "hdbscan_cluster",
    "instance_scores",
    "kernel_q2_threshold",
    "kmeans",
    "kmeans_cluster",
    "majority_class",
    "mean_shift",
    "meanshift_cluster",
    "merge_close_centers",
    "nearest_center",
    "panoptic_fusion",
    "relabel_sequential",
    "remove_small_instances",
    "seeded_cluster",
    "sigma_to_scale",
    "threshold_cluster",
    "threshold_modes",
]

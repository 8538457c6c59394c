"""One entry point for every clusterer: :func:`cluster_embeddings` (and its batch and per-class
forms), from an embedding tensor or the network's :class:`~instembed.structures.Outputs`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from instembed.cluster.center_offset import center_offset_cluster
from instembed.cluster.hdbscan import hdbscan_cluster
from instembed.cluster.kmeans import kmeans_cluster
from instembed.cluster.meanshift import meanshift_cluster
from instembed.cluster.panoptic import majority_class
from instembed.cluster.postprocess import (
    fill_holes,
    instance_scores,
    relabel_sequential,
    remove_small_instances,
)
from instembed.cluster.seeded import overlap_masks, seeded_cluster
from instembed.cluster.threads import one_intra_op_thread
from instembed.cluster.threshold import threshold_cluster
from instembed.structures import Instances, Outputs

log = logging.getLogger(__name__)

METHODS = ("meanshift", "threshold", "seeded", "kmeans", "hdbscan", "center_offset")

# parameters handled here, not by the method functions
_POST = (
    "min_size",
    "fill_holes",
    "score",
    "thing_classes",
    "fg_thresh",
    "batch_index",
    "overlap_thresh",
)


def _field(outputs: Outputs, name: str, b: int, method: str) -> Tensor:
    value = getattr(outputs, name)
    if value is None:
        raise ValueError(f"method {method!r} needs outputs.{name}, which is None")
    if value.dim() < 3:
        raise ValueError(f"outputs.{name} must be (B, C, H, W), got {list(value.shape)}")
    if b >= value.shape[0]:
        raise ValueError(
            f"batch_index {b} out of range for outputs.{name} of batch {value.shape[0]}"
        )
    return value[b]


def _inputs(obj: Tensor | Outputs, b: int) -> tuple[Outputs, int]:
    """Normalise the first argument to an Outputs of batch >= 1 and the batch index."""
    if isinstance(obj, Outputs):
        return obj, b
    if isinstance(obj, Tensor):
        if obj.dim() == 3:
            return Outputs(embedding=obj.unsqueeze(0)), 0
        if obj.dim() == 4:
            return Outputs(embedding=obj), b
        raise ValueError(f"embedding must be (E, H, W) or (B, E, H, W), got {list(obj.shape)}")
    raise TypeError(f"expected an embedding tensor or an Outputs, got {type(obj).__name__}")


def _check_params(method: str, fn: Callable[..., Any], params: dict[str, Any]) -> None:
    import inspect

    sig = inspect.signature(fn)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return
    allowed = set(sig.parameters) - {
        "embedding",
        "foreground",
        "seed",
        "sigma",
        "center",
        "offset",
        "thing",
    }
    unknown = set(params) - allowed
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {sorted(unknown)} for method {method!r}; valid: "
            f"{sorted(allowed | set(_POST))}"
        )


def cluster_embeddings(
    outputs_or_embedding: Tensor | Outputs,
    method: str,
    foreground: Tensor | None = None,
    **params: Any,
) -> Instances:
    """Cluster one image's pixel embeddings into instances.

    Args:
        outputs_or_embedding: an (E, H, W) embedding tensor, or network Outputs (the image
            ``batch_index``, default 0, is used; fields taken per method: embedding; seed and sigma
            for "seeded"; center and offset for "center_offset"; seed as foreground probability
            and semantic for classes when present).
        method: one of ``METHODS``: "meanshift" (``bandwidth``), "threshold" (``delta_v``),
            "seeded", "kmeans" (``k``), "hdbscan", "center_offset".
        foreground: (H, W) bool; None: ``seed > fg_thresh`` when a seed map is present (for
            "center_offset": the thing classes of the semantic map when given), else all pixels.
        **params: the method's parameters (see its function in ``instembed.cluster``) and the
            post-processing ones: ``min_size`` (int, smaller instances removed), ``fill_holes``
            (bool), ``score`` ("seed", "foreground", "product" or "constant", see
            :func:`instance_scores`), ``thing_classes`` (semantic classes that hold instances),
            ``fg_thresh`` (default 0.5), ``batch_index``; ``overlap_thresh`` ("seeded" only):
            also return overlapping masks, see :func:`instembed.cluster.seeded.overlap_masks`.

    Returns:
        Instances with sequential labels (H, W), scores (N,), classes (N,) when the outputs
        have a semantic map, centers (N, D), masks (N, H, W) with ``overlap_thresh``.
    """
    with one_intra_op_thread():  # see instembed.cluster.threads
        return _cluster_embeddings(outputs_or_embedding, method, foreground, params)


def _cluster_embeddings(
    outputs_or_embedding: Tensor | Outputs,
    method: str,
    foreground: Tensor | None,
    params: dict[str, Any],
) -> Instances:
    if method not in METHODS:
        raise ValueError(f"unknown clustering method {method!r}; valid: {list(METHODS)}")
    params = dict(params)
    b = int(params.pop("batch_index", 0))
    min_size_given = "min_size" in params
    min_size = int(params.pop("min_size", 0))
    do_fill = bool(params.pop("fill_holes", False))
    score_mode = params.pop("score", "seed")
    thing_classes = params.pop("thing_classes", None)
    fg_thresh = float(params.pop("fg_thresh", 0.5))
    overlap_thresh = params.pop("overlap_thresh", None)
    if overlap_thresh is not None and method != "seeded":
        raise ValueError(
            f"overlap_thresh (overlapping masks) needs method 'seeded', got method {method!r}"
        )
    out, b = _inputs(outputs_or_embedding, b)

    seed_map = out.seed[b, 0] if out.seed is not None and b < out.seed.shape[0] else None
    semantic = None
    if out.semantic is not None and b < out.semantic.shape[0]:
        semantic = out.semantic[b].argmax(0)
    if foreground is not None:
        fg = foreground.to(torch.bool)
    elif method == "center_offset":
        fg = None
        if semantic is not None and thing_classes is not None:
            fg = torch.isin(semantic, torch.as_tensor(list(thing_classes), device=semantic.device))
    elif seed_map is not None:
        fg = seed_map > fg_thresh
    else:
        fg = None

    seed_scores = None
    if method == "seeded":
        emb = _field(out, "embedding", b, method)
        sigma = _field(out, "sigma", b, method)
        if seed_map is None:
            raise ValueError("method 'seeded' needs outputs.seed, which is None")
        _check_params(method, seeded_cluster, params)
        if min_size_given:  # also the proposal size of the seed loop
            params["min_size"] = min_size
        labels, seed_scores, centers = seeded_cluster(
            emb, seed_map, sigma, fg, fg_thresh=fg_thresh, **params
        )
    elif method == "center_offset":
        center = _field(out, "center", b, method)
        offset = _field(out, "offset", b, method)
        _check_params(method, center_offset_cluster, params)
        labels, seed_scores, centers = center_offset_cluster(center, offset, fg, **params)
    else:
        emb = _field(out, "embedding", b, method)
        fn = {
            "meanshift": meanshift_cluster,
            "threshold": threshold_cluster,
            "kmeans": kmeans_cluster,
            "hdbscan": hdbscan_cluster,
        }[method]
        _check_params(method, fn, params)
        labels, centers = fn(emb, fg, **params)
    h, w = labels.shape
    if labels.shape != (h, w):
        raise AssertionError("clusterer returned a label image of the wrong shape")
    if do_fill:
        labels = fill_holes(remove_small_instances(labels, min_size))
        labels, old = relabel_sequential(labels)
    else:  # minimum size and relabelling in one pass; ids are at most the number of centres
        labels, old = relabel_sequential(labels, min_size, centers.shape[0])
    n = old.numel()
    idx = (old - 1).clamp(min=0)
    centers = centers.index_select(0, idx) if centers.shape[0] > 0 else centers[:0]
    if seed_scores is not None:
        seed_scores = seed_scores.index_select(0, idx) if seed_scores.numel() > 0 else seed_scores
    scores = instance_scores(
        labels, n, mode=score_mode, seed_scores=seed_scores, foreground_prob=seed_map
    )
    classes = None
    if semantic is not None:
        cand = thing_classes if thing_classes is not None else range(out.semantic.shape[1])
        classes = majority_class(labels, semantic, n, cand)
    masks = None
    if overlap_thresh is not None:
        assert fg is not None  # seeded: the seed map gives the foreground
        masks = overlap_masks(
            emb,
            sigma,
            labels,
            centers,
            fg,
            float(overlap_thresh),
            kernel=params.get("kernel", "gaussian"),
            sigma_mode=params.get("sigma_mode", "std"),
        )
    log.debug("cluster_embeddings(%s): %d instances", method, n)
    return Instances(labels=labels, scores=scores, classes=classes, centers=centers, masks=masks)


def cluster_batch(
    outputs_or_embedding: Tensor | Outputs,
    method: str,
    foreground: Tensor | None = None,
    **params: Any,
) -> list[Instances]:
    """:func:`cluster_embeddings` on every image of a batch.

    Args:
        outputs_or_embedding: (B, E, H, W) embedding or Outputs of batch B.
        foreground: (B, H, W) bool or None.

    Returns:
        B results, each equal to clustering that image alone.
    """
    out, _ = _inputs(outputs_or_embedding, 0)
    first = next(iter(out.to_dict().values()), None)
    if first is None:
        raise ValueError("the Outputs have no field set")
    bsz = first.shape[0]
    if foreground is not None and (foreground.dim() != 3 or foreground.shape[0] != bsz):
        raise ValueError(f"foreground must be (B={bsz}, H, W), got {list(foreground.shape)}")
    return [
        cluster_embeddings(
            out, method, None if foreground is None else foreground[i], batch_index=i, **params
        )
        for i in range(bsz)
    ]


def cluster_per_class(
    outputs: Outputs,
    method: str,
    classes: Sequence[int],
    semantic: Tensor | None = None,
    **params: Any,
) -> Instances:
    """Cluster each semantic class separately (the per-class embeddings of De Brabandere et al.).

    For class c the foreground is ``semantic == c`` and the embedding is
    ``outputs.class_embedding[b, c]`` when the outputs have per-class embeddings, else
    ``outputs.embedding[b]``. Instances of all classes are numbered consecutively.

    Args:
        outputs: network Outputs (``batch_index`` param selects the image, default 0).
        method: a clustering method (see :func:`cluster_embeddings`).
        classes: class ids to cluster.
        semantic: (H, W) int64 class map; None: argmax of ``outputs.semantic``.

    Returns:
        Instances with ``classes`` set.
    """
    b = int(params.pop("batch_index", 0))
    if semantic is None:
        if outputs.semantic is None:
            raise ValueError("cluster_per_class needs a semantic map or outputs.semantic")
        semantic = outputs.semantic[b].argmax(0)
    h, w = semantic.shape
    labels = torch.zeros(h, w, dtype=torch.long, device=semantic.device)
    scores: list[Tensor] = []
    cls_list: list[Tensor] = []
    centers: list[Tensor] = []
    offset = 0
    for c in classes:
        fg = semantic == int(c)
        if outputs.class_embedding is not None:
            emb = outputs.class_embedding[b, int(c)]
        else:
            emb = _field(outputs, "embedding", b, method)
        sub = Outputs(
            embedding=emb.unsqueeze(0),
            seed=None if outputs.seed is None else outputs.seed[b : b + 1],
            sigma=None if outputs.sigma is None else outputs.sigma[b : b + 1],
            center=None if outputs.center is None else outputs.center[b : b + 1],
            offset=None if outputs.offset is None else outputs.offset[b : b + 1],
        )
        res = cluster_embeddings(sub, method, fg, **params)
        labels = torch.where(res.labels > 0, res.labels + offset, labels)
        offset += res.num_instances
        scores.append(res.scores)
        cls_list.append(
            torch.full((res.num_instances,), int(c), dtype=torch.long, device=semantic.device)
        )
        if res.centers is not None:
            centers.append(res.centers)
    return Instances(
        labels=labels,
        scores=torch.cat(scores) if scores else torch.zeros(0),
        classes=torch.cat(cls_list) if cls_list else torch.zeros(0, dtype=torch.long),
        centers=torch.cat(centers) if centers and len({t.shape[1] for t in centers}) == 1 else None,
    )

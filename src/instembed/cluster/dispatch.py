"""One entry point for every post-processing method: :func:`cluster_embeddings` (and its batch
and per-class forms), from an embedding tensor or the network's
:class:`~instembed.structures.Outputs`. The methods themselves are the table of
:mod:`instembed.cluster.methods`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from instembed.cluster.methods import (
    DENSE_PARAMS,
    METHODS,
    Context,
    Method,
    check_own_params,
    get_method,
    output_field,
    overlap_error,
)
from instembed.cluster.panoptic import majority_class
from instembed.cluster.postprocess import fill_holes, finish_partition, remove_small_instances
from instembed.cluster.threads import one_intra_op_thread
from instembed.structures import Instances, Outputs

log = logging.getLogger(__name__)

__all__ = ["METHODS", "cluster_batch", "cluster_embeddings", "cluster_per_class"]

# parameters handled here, not by the method functions
_POST = DENSE_PARAMS
_field = output_field


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


def cluster_embeddings(
    outputs_or_embedding: Tensor | Outputs,
    method: str,
    foreground: Tensor | None = None,
    **params: Any,
) -> Instances:
    """Cluster one image's pixel embeddings into instances (or filter the instances of a model
    that finds them itself).

    Args:
        outputs_or_embedding: an (E, H, W) embedding tensor, or network Outputs (the image
            ``batch_index``, default 0, is used; fields taken per method (``Method.fields``):
            embedding; seed and sigma for "seeded"; center and offset for "center_offset";
            ``instances`` for "detections" and "steps"; seed as foreground probability and
            semantic for classes when present).
        method: one of ``METHODS`` (the table :mod:`instembed.cluster.methods`): "meanshift"
            (``bandwidth``), "threshold" (``delta_v``), "seeded", "kmeans" (``k``), "hdbscan",
            "center_offset", "detections", "steps".
        foreground: (H, W) bool; None: ``seed > fg_thresh`` when a seed map is present (for
            "center_offset": the thing classes of the semantic map when given), else all pixels.
            Not for "detections" and "steps".
        **params: the method's parameters (see its function in ``instembed.cluster``) and, for
            the dense methods, the post-processing ones: ``min_size`` (int, smaller instances
            removed), ``fill_holes`` (bool), ``score`` ("seed", "foreground", "product" or
            "constant", see :func:`instance_scores`), ``thing_classes`` (semantic classes that
            hold instances), ``fg_thresh`` (default 0.5), ``overlap_thresh`` ("seeded" only):
            also return overlapping masks, see :func:`instembed.cluster.seeded.overlap_masks`;
            for every method ``batch_index``.

    Returns:
        Instances with sequential labels (H, W), scores (N,), classes (N,) when the outputs
        have a semantic map, centers (N, D), masks (N, H, W) with ``overlap_thresh``; for
        "detections" and "steps" see :mod:`instembed.cluster.detections` (bool masks, boxes).
    """
    with one_intra_op_thread():  # see instembed.cluster.threads
        return _cluster_embeddings(outputs_or_embedding, method, foreground, params)


def _cluster_embeddings(
    outputs_or_embedding: Tensor | Outputs,
    method: str,
    foreground: Tensor | None,
    params: dict[str, Any],
) -> Instances:
    spec = get_method(method)
    params = dict(params)
    b = int(params.pop("batch_index", 0))
    if not spec.dense:
        return _run_instance_method(spec, outputs_or_embedding, foreground, b, params)
    min_size_given = "min_size" in params
    min_size = int(params.pop("min_size", 0))
    do_fill = bool(params.pop("fill_holes", False))
    score_mode = params.pop("score", "seed")
    thing_classes = params.pop("thing_classes", None)
    fg_thresh = float(params.pop("fg_thresh", 0.5))
    overlap_thresh = params.pop("overlap_thresh", None)
    if overlap_thresh is not None and spec.overlap is None:
        raise ValueError(overlap_error(method))
    out, b = _inputs(outputs_or_embedding, b)

    seed_map = out.seed[b, 0] if out.seed is not None and b < out.seed.shape[0] else None
    semantic = None
    if out.semantic is not None and b < out.semantic.shape[0]:
        semantic = out.semantic[b].argmax(0)
    ctx = Context(
        out,
        b,
        method,
        seed_map=seed_map,
        semantic=semantic,
        fg_thresh=fg_thresh,
        min_size=min_size if min_size_given else None,
        thing_classes=thing_classes,
    )
    if foreground is not None:
        ctx.foreground = foreground.to(torch.bool)
    elif spec.foreground is not None:
        ctx.foreground = spec.foreground(ctx)
    for name in spec.fields:
        ctx.field(name)  # a clear error for a missing field, before the parameters
    check_own_params(spec, params)
    labels, centers, seed_scores = spec.run(ctx, params)
    if do_fill:  # holes filled after the small instances went (scipy, eager only)
        labels = fill_holes(remove_small_instances(labels, min_size))
    labels, scores, centers = finish_partition(
        labels, centers, seed_scores, 0 if do_fill else min_size, score_mode, seed_map
    )
    n = int(scores.shape[0])
    classes = None
    if semantic is not None:
        cand = thing_classes if thing_classes is not None else range(out.semantic.shape[1])
        classes = majority_class(labels, semantic, n, cand)
    masks = None
    if overlap_thresh is not None:
        assert spec.overlap is not None
        masks = spec.overlap(ctx, params, labels, centers, float(overlap_thresh))
    log.debug("cluster_embeddings(%s): %d instances", method, n)
    return Instances(labels=labels, scores=scores, classes=classes, centers=centers, masks=masks)


def _run_instance_method(
    spec: Method,
    outputs_or_embedding: Tensor | Outputs,
    foreground: Tensor | None,
    b: int,
    params: dict[str, Any],
) -> Instances:
    """A method that filters the model's own instances (``spec.dense`` False)."""
    if foreground is not None:
        raise ValueError(
            f"method {spec.name!r} filters the model's own instances and takes no foreground"
        )
    out, b = _inputs(outputs_or_embedding, b)
    ctx = Context(out, b, spec.name)
    for name in spec.fields:
        ctx.field(name)
    check_own_params(spec, params)
    result = spec.run(ctx, params)
    log.debug("cluster_embeddings(%s): %d instances", spec.name, len(result))
    return result


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
    bsz = out.batch_size  # ValueError when no field is set
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

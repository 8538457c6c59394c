"""TorchScript post-processing: a scripted network wrapper with the clustering of one image
compiled in (``segment``), for the clusterers that compile with ``torch.jit.script``.

:class:`ScriptedNet` checks its input (a clear error for a wrong number of dimensions or
channels and for a non-floating dtype), pads it to a multiple of the network's ``size_divisor``,
runs the traced network and crops the outputs back (``forward(image) -> dict`` of output
fields); ``has_postprocessing`` is False. Its subclasses add, for one image (1, C, H, W),
``segment(image) -> (labels, scores)`` and ``segment_masks(image) -> (labels, scores, masks)``
and set ``has_postprocessing``:

* :class:`SeededExport`: seeded clustering (Neven et al. 2019), with overlapping masks when
  ``overlap_thresh`` is configured (``has_masks``);
* :class:`CenterOffsetExport`: Panoptic-DeepLab center/offset grouping.

Both apply the post-processing of :func:`instembed.cluster.cluster_embeddings` with the same
parameters and the same (shared, scriptable) functions of :mod:`instembed.cluster.postprocess`:
the foreground rule (``fg_thresh``; ``thing_classes`` / ``foreground_classes`` on a semantic
head), ``min_size`` removal and sequential relabelling (:func:`relabel_sequential`) and the
``score`` mode (:func:`instance_scores`), so ``segment`` returns the labels and scores of
``instembed predict``. A parameter that cannot be compiled (``fill_holes``, which runs scipy) or
that is unknown is refused when the exporter is built (ValueError naming it).

Each is the ``exporter`` of its method in :mod:`instembed.cluster.methods`; an exporter is built as
``exporter(traced, names, divisor, params)`` with ``params`` the method's parameters
(:func:`instembed.engine.export.export_torchscript` does this).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from instembed.cluster.center_offset import center_offset_cluster
from instembed.cluster.postprocess import SCORE_MODES, finish_partition
from instembed.cluster.seeded import overlap_masks, seeded_cluster

ENGINE_PARAMS = ("foreground_classes", "stuff_classes")
"""Parameters of ``cluster.params`` read by the engine, not the dispatcher (the same names as
``instembed.engine.build.ENGINE_CLUSTER_PARAMS``): ``foreground_classes`` is applied,
``stuff_classes`` (scoring only) ignored."""

POST_HANDLED = ("min_size", "fill_holes", "score", "thing_classes", "fg_thresh", "batch_index")
"""The dispatcher's post-processing parameters the exporters apply (``fill_holes`` only when
false; ``thing_classes`` only picks the foreground, the exported files return no classes)."""


def _dtype_name(t: Tensor) -> str:
    """The dtype of ``t`` as text (TorchScript formats a dtype as a number)."""
    d = t.dtype
    if d == torch.uint8:
        return "torch.uint8"
    if d == torch.int8:
        return "torch.int8"
    if d == torch.int16:
        return "torch.int16"
    if d == torch.int32:
        return "torch.int32"
    if d == torch.int64:
        return "torch.int64"
    if d == torch.bool:
        return "torch.bool"
    if d == torch.complex64:
        return "torch.complex64"
    if d == torch.complex128:
        return "torch.complex128"
    return "a non-floating dtype"


def label_masks(labels: Tensor, n: int) -> Tensor:
    """(N, H, W) bool: ``masks[k] = labels == k + 1`` (non-overlapping masks)."""
    ids = torch.arange(1, n + 1, dtype=labels.dtype, device=labels.device)
    return labels.unsqueeze(0) == ids.view(-1, 1, 1)


def _defaults(fn: Callable[..., Any]) -> dict[str, Any]:
    return {
        p.name: p.default
        for p in inspect.signature(fn).parameters.values()
        if p.default is not p.empty
    }


def _class_tensor(classes: Any) -> Tensor:
    """Class ids as an int64 tensor (a TorchScript attribute; empty for None)."""
    return torch.tensor([int(c) for c in classes or ()], dtype=torch.long)


class _Params:
    """A method's configured parameters, read once when the exporter is built; refuses the
    parameters the exported post-processing cannot apply."""

    def __init__(
        self,
        method: str,
        params: Mapping[str, Any],
        fn: Callable[..., Any],
        names: list[str],
        handled: tuple[str, ...],
    ) -> None:
        from instembed.cluster.methods import DENSE_PARAMS, get_method, validate_method

        # unknown names, overlap_thresh without an overlap step: the dispatcher's errors
        validate_method(method, params, extra=ENGINE_PARAMS, require=False)
        self.params = dict(params)
        own = get_method(method).params or set()
        self.defaults = {k: v for k, v in _defaults(fn).items() if k in own}
        for name in sorted(set(self.params) & set(DENSE_PARAMS) - set(handled)):
            if self.params[name] is not None:
                raise ValueError(
                    f"export: cluster parameter {name}={self.params[name]!r} of method "
                    f"{method!r} has no TorchScript post-processing; remove it from "
                    "cluster.params or export the network only (postprocessing=False, "
                    "`instembed export --network-only`)"
                )
        if self.params.get("fill_holes"):
            raise ValueError(
                f"export: cluster parameter fill_holes={self.params['fill_holes']!r} cannot be "
                "compiled to TorchScript (hole filling runs scipy.ndimage); set fill_holes: false "
                "in cluster.params or export the network only (postprocessing=False, "
                "`instembed export --network-only`)"
            )
        if int(self.params.get("batch_index", 0) or 0) != 0:
            raise ValueError(
                "export: cluster parameter batch_index must be 0 (segment takes one image), "
                f"got {self.params['batch_index']!r}"
            )
        score = self.params.get("score", "seed")
        if score not in SCORE_MODES:
            raise ValueError(
                f"export: cluster parameter score must be one of {SCORE_MODES}, got {score!r}"
            )
        self.score: str = str(score)
        # the dispatcher's minimum size: 0 (none) unless configured
        self.min_size: int = int(self.params.get("min_size", 0) or 0)
        self.fg_thresh: float = float(self.params.get("fg_thresh", 0.5))
        self.foreground_classes = self._classes("foreground_classes", names)

    def own(self, name: str) -> Any:
        """The method function's parameter ``name``: configured, else the function's default."""
        return self.params.get(name, self.defaults[name])

    def _classes(self, name: str, names: list[str]) -> list[int] | None:
        value = self.params.get(name)
        if value is None:
            return None
        if "semantic" not in names:
            raise ValueError(
                f"export: cluster parameter {name} needs a model with a semantic head "
                f"(outputs: {names})"
            )
        return [int(c) for c in value]


class ScriptedNet(nn.Module):
    """Input check -> pad -> traced network -> crop; ``forward(image) -> dict`` of output
    fields. ``in_channels`` > 0: the channel count the input must have (0: not checked)."""

    def __init__(
        self, traced: torch.jit.ScriptModule, names: list[str], divisor: int, in_channels: int = 0
    ) -> None:
        super().__init__()
        self.net = traced
        self.names = names
        self.divisor = divisor
        self.in_channels = int(in_channels)
        self.has_postprocessing = False
        self.has_masks = False

    def check_image(self, image: Tensor) -> Tensor:
        """``image`` as float32 after checking it is (B, C, H, W) floating with C channels."""
        if image.dim() != 4:
            raise ValueError(
                f"expected an image batch of 4 dimensions (B, C, H, W), got {image.dim()} "
                f"dimension(s) of shape {list(image.shape)}"
            )
        if self.in_channels > 0 and image.shape[1] != self.in_channels:
            raise ValueError(
                f"expected {self.in_channels} channel(s) (B, {self.in_channels}, H, W), got "
                f"{image.shape[1]} (shape {list(image.shape)})"
            )
        if not image.is_floating_point():
            raise ValueError(
                "expected a floating-point image (float32, normalised like the training data), "
                f"got {_dtype_name(image)}"
            )
        return image.to(torch.float32)

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        image = self.check_image(image)
        h, w = image.shape[-2], image.shape[-1]
        ph = (self.divisor - h % self.divisor) % self.divisor
        pw = (self.divisor - w % self.divisor) % self.divisor
        x = image
        if ph > 0 or pw > 0:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = torch.nn.functional.pad(image, [0, pw, 0, ph], mode=mode)
        outs = self.net(x)
        result: dict[str, Tensor] = {}
        for i, name in enumerate(self.names):
            result[name] = outs[i][..., :h, :w]
        return result

    def one_image(self, image: Tensor) -> dict[str, Tensor]:
        """The outputs of one image (1, C, H, W) (a clear error for a larger batch)."""
        if image.dim() == 4 and image.shape[0] != 1:
            raise ValueError(
                f"segment takes one image (1, C, H, W), got a batch of {image.shape[0]} "
                f"(shape {list(image.shape)})"
            )
        return self.forward(image)


class SeededExport(ScriptedNet):
    """Network + seeded clustering (Neven et al. 2019) + post-processing in TorchScript."""

    def __init__(self, traced, names, divisor, params: dict, in_channels: int = 0) -> None:
        super().__init__(traced, names, divisor, in_channels)
        p = _Params(
            "seeded",
            params,
            seeded_cluster,
            names,
            POST_HANDLED + ("overlap_thresh",),
        )
        self.has_postprocessing = True
        self.fg_thresh = p.fg_thresh
        self.seed_thresh = float(p.own("seed_thresh"))
        # the proposal size of the seed loop: the configured min_size, else the function's
        self.cluster_min_size = int(p.own("min_size"))
        self.min_size = p.min_size
        self.new_fraction = float(p.own("new_fraction"))
        self.prob_thresh = float(p.own("prob_thresh"))
        self.kernel = str(p.own("kernel"))
        self.sigma_mode = str(p.own("sigma_mode"))
        self.max_points = int(p.own("max_points"))
        self.stride = int(p.own("stride"))
        self.connected = bool(p.own("connected"))
        self.score = p.score
        self.use_classes = p.foreground_classes is not None
        self.foreground_classes = _class_tensor(p.foreground_classes)
        overlap = p.params.get("overlap_thresh")
        self.has_masks = overlap is not None
        self.overlap_thresh = 0.5 if overlap is None else float(overlap)
        # the eager path fails on these only once it runs; fail at export time instead
        from instembed.cluster.seeded import kernel_q2_threshold, sigma_to_scale

        kernel_q2_threshold(self.prob_thresh, self.kernel)
        sigma_to_scale(torch.ones(1), self.sigma_mode, self.kernel)
        if self.has_masks:
            kernel_q2_threshold(self.overlap_thresh, self.kernel)

    def _segment(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.one_image(image)
        seed_map = out["seed"][0, 0]
        if self.use_classes:
            semantic = out["semantic"][0].argmax(0)
            fg = torch.isin(semantic, self.foreground_classes.to(semantic.device))
        else:
            fg = seed_map > self.fg_thresh
        embedding, sigma = out["embedding"][0], out["sigma"][0]
        labels, seed_scores, centers = seeded_cluster(
            embedding,
            seed_map,
            sigma,
            fg,
            self.fg_thresh,
            self.seed_thresh,
            self.cluster_min_size,
            self.new_fraction,
            self.prob_thresh,
            self.kernel,
            self.sigma_mode,
            self.max_points,
            self.stride,
            self.connected,
        )
        labels, scores, centers = finish_partition(
            labels, centers, seed_scores, self.min_size, self.score, seed_map
        )
        if self.has_masks:
            masks = overlap_masks(
                embedding,
                sigma,
                labels,
                centers,
                fg,
                self.overlap_thresh,
                self.kernel,
                self.sigma_mode,
            )
        else:
            masks = label_masks(labels, scores.shape[0])
        return labels, scores, masks

    @torch.jit.export
    def segment(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """(labels (H, W) int64 0 = background, scores (N,)) for one image (1, C, H, W)."""
        labels, scores, _ = self._segment(image)
        return labels, scores

    @torch.jit.export
    def segment_masks(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(labels, scores, masks (N, H, W) bool) for one image: the overlapping masks of
        ``overlap_thresh`` when configured (``has_masks``), else ``labels == k + 1``."""
        return self._segment(image)


class CenterOffsetExport(ScriptedNet):
    """Network + Panoptic-DeepLab center/offset grouping + post-processing in TorchScript."""

    def __init__(self, traced, names, divisor, params: dict, in_channels: int = 0) -> None:
        super().__init__(traced, names, divisor, in_channels)
        p = _Params(
            "center_offset",
            params,
            center_offset_cluster,
            names,
            POST_HANDLED,
        )
        self.has_postprocessing = True
        self.threshold = float(p.own("threshold"))
        self.nms_kernel = int(p.own("nms_kernel"))
        self.top_k = int(p.own("top_k"))
        self.stride = int(p.own("stride"))
        if self.nms_kernel < 1 or self.nms_kernel % 2 == 0:
            raise ValueError(f"nms_kernel must be a positive odd integer, got {self.nms_kernel}")
        self.min_size = p.min_size
        self.score = p.score
        self.use_seed = "seed" in names  # the foreground probability of the score modes
        self.use_classes = p.foreground_classes is not None
        self.foreground_classes = _class_tensor(p.foreground_classes)
        # the thing classes of the semantic map are the foreground when both are given
        thing = p.params.get("thing_classes")
        self.use_thing = thing is not None and "semantic" in names
        self.thing_classes = _class_tensor(thing if self.use_thing else None)

    def _segment(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.one_image(image)
        thing: Tensor | None = None
        if self.use_classes:
            semantic = out["semantic"][0].argmax(0)
            thing = torch.isin(semantic, self.foreground_classes.to(semantic.device))
        elif self.use_thing:
            semantic = out["semantic"][0].argmax(0)
            thing = torch.isin(semantic, self.thing_classes.to(semantic.device))
        labels, center_scores, centers = center_offset_cluster(
            out["center"][0],
            out["offset"][0],
            thing,
            self.threshold,
            self.nms_kernel,
            self.top_k,
            self.stride,
        )
        seed_map: Tensor | None = None
        if self.use_seed:
            seed_map = out["seed"][0, 0]
        labels, scores, centers = finish_partition(
            labels, centers, center_scores, self.min_size, self.score, seed_map
        )
        return labels, scores, label_masks(labels, scores.shape[0])

    @torch.jit.export
    def segment(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """(labels (H, W) int64, scores (N,)) for one image (1, C, H, W)."""
        labels, scores, _ = self._segment(image)
        return labels, scores

    @torch.jit.export
    def segment_masks(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(labels, scores, masks (N, H, W) bool ``labels == k + 1``) for one image."""
        return self._segment(image)

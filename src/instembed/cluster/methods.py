"""The table of post-processing methods: one :class:`Method` per name, looked up by
:func:`~instembed.cluster.cluster_embeddings`, the tuning grids and the TorchScript export.

Adding a method is one :func:`register` call::

    register(Method(
        name="mine",
        fields=("embedding",),               # the Outputs fields it reads
        function=my_cluster,                 # embedding, foreground, *, params -> labels, centers
        run=run_embedding(my_cluster),       # how the dispatcher calls it
        grid={"radius": [0.5, 1.0]},         # tried by instembed.engine.tune
    ))

Two kinds of methods:

* dense (``dense=True``): from dense maps to a partition of the image (:class:`Partition`: label
  image, centres, optional per-instance seed scores); :func:`cluster_embeddings` then applies the
  shared post-processing (``min_size``, ``fill_holes``, ``score``, classes from the semantic map,
  overlapping masks with ``overlap_thresh`` for the methods that have an ``overlap`` step). These
  accept the post-processing parameters :data:`DENSE_PARAMS` besides their own.
* instance methods (``dense=False``): from a model's own raw ``outputs.instances[b]`` straight to
  the final :class:`~instembed.structures.Instances` ("detections", "steps"); they accept only
  ``batch_index`` besides their own parameters.

A method's own parameters are the parameters of its ``function`` minus its inputs
(:data:`INPUT_NAMES`); those without a default are required (k-means's ``k``). A function
with ``**kwargs`` (HDBSCAN, passed on to scikit-learn) accepts any parameter.
:func:`validate_method` checks a name and its parameters before any work starts.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from instembed.cluster.center_offset import center_offset_cluster
from instembed.cluster.detections import filter_detections, filter_steps
from instembed.cluster.hdbscan import hdbscan_cluster
from instembed.cluster.kmeans import kmeans_cluster
from instembed.cluster.meanshift import meanshift_cluster
from instembed.cluster.seeded import overlap_masks, seeded_cluster
from instembed.cluster.slots import run_slots, slot_instances
from instembed.cluster.threshold import threshold_cluster
from instembed.cluster.torchscript import CenterOffsetExport, SeededExport
from instembed.structures import DENSE_FIELDS, Instances, Outputs

INPUT_NAMES = frozenset(
    {"embedding", "foreground", "seed", "sigma", "center", "offset", "thing", "instances"}
    | {"semantic"}  # the slot logits of "slots"
)
"""Names of the (positional) parameters of the method functions that are inputs, not
parameters; a keyword-only parameter is always a parameter (k-means's random ``seed``)."""

DENSE_PARAMS = (
    "min_size",
    "fill_holes",
    "score",
    "thing_classes",
    "fg_thresh",
    "batch_index",
    "overlap_thresh",
)
"""Parameters of every dense method handled by the dispatcher, not by the method function
(``overlap_thresh`` only for methods with an ``overlap`` step)."""

INSTANCE_PARAMS = ("batch_index",)
"""Parameters of every instance method handled by the dispatcher."""


# --------------------------------------------------------------------------- inputs
def output_field(outputs: Outputs, name: str, b: int, method: str) -> Any:
    """``outputs.<name>`` of image ``b`` (no batch dimension), with a clear error when the
    method needs a field the outputs lack; ``instances`` gives ``outputs.instances[b]``."""
    value = getattr(outputs, name)
    if value is None:
        raise ValueError(f"method {method!r} needs outputs.{name}, which is None")
    if name == "instances":
        if b >= len(value):
            raise ValueError(
                f"batch_index {b} out of range for outputs.instances of batch {len(value)}"
            )
        return value[b]
    if value.dim() < 3:
        raise ValueError(f"outputs.{name} must be (B, C, H, W), got {list(value.shape)}")
    if b >= value.shape[0]:
        raise ValueError(
            f"batch_index {b} out of range for outputs.{name} of batch {value.shape[0]}"
        )
    return value[b]


@dataclass
class Context:
    """What a method's ``run`` gets for one image (built by the dispatcher).

    Attributes:
        outputs, batch_index, method: the network outputs, the image, the method name.
        foreground: (H, W) bool or None: the caller's foreground, else the method's
            ``foreground`` rule (dense methods).
        seed_map: (H, W) ``outputs.seed[b, 0]`` or None; semantic: (H, W) argmax of
            ``outputs.semantic[b]`` or None.
        fg_thresh: foreground threshold on the seed map; min_size: the ``min_size`` parameter
            when the caller gave it (else None); thing_classes: the ``thing_classes`` parameter.
    """

    outputs: Outputs
    batch_index: int
    method: str
    foreground: Tensor | None = None
    seed_map: Tensor | None = None
    semantic: Tensor | None = None
    fg_thresh: float = 0.5
    min_size: int | None = None
    thing_classes: Sequence[int] | None = None

    def field(self, name: str) -> Any:
        """The image's ``outputs.<name>`` (see :func:`output_field`)."""
        return output_field(self.outputs, name, self.batch_index, self.method)


class Partition(NamedTuple):
    """A dense method's result: labels (H, W) int64 (0 = background, ids up to K), centers
    (K, D) (centre of id k + 1), seed_scores (K,) per-centre scores or None."""

    labels: Tensor
    centers: Tensor
    seed_scores: Tensor | None = None


def seed_foreground(ctx: Context) -> Tensor | None:
    """Foreground rule of most dense methods: ``seed > fg_thresh`` when there is a seed map."""
    return None if ctx.seed_map is None else ctx.seed_map > ctx.fg_thresh


def thing_foreground(ctx: Context) -> Tensor | None:
    """Foreground rule of center_offset: the pixels of the ``thing_classes`` of the semantic map
    when both are given, else None (every pixel)."""
    if ctx.semantic is None or ctx.thing_classes is None:
        return None
    classes = torch.as_tensor(list(ctx.thing_classes), device=ctx.semantic.device)
    return torch.isin(ctx.semantic, classes)


# --------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Method:
    """One post-processing method.

    Attributes:
        name: the name in configs and :func:`cluster_embeddings`.
        fields: the :class:`~instembed.structures.Outputs` fields it needs (checked in this
            order before it runs; ``"instances"`` for instance methods).
        function: the plain function (its keyword parameters are the method's parameters).
        run: ``run(ctx, params) -> Partition`` (dense) or ``-> Instances`` (instance methods):
            how the dispatcher calls ``function`` with the image's inputs.
        grid: thresholds tried by tuning (``{param: [values]}``; empty: nothing to tune).
        exporter: TorchScript wrapper class (``exporter(traced, names, divisor, params)``, see
            :mod:`instembed.cluster.torchscript`), or None when the method does not compile.
        overlap: ``overlap(ctx, params, labels, centers, overlap_thresh) -> (K, H, W) bool``:
            overlapping masks (``overlap_thresh``), or None when the method has none.
        overlap_grid: ``overlap_thresh`` values tuning tries on overlapping ground truth.
        foreground: the foreground rule when the caller gives none (dense methods).
        dense: False for instance methods (see the module docstring).
        description: one line for listings.
        params: (derived) the method's own parameter names, None when it accepts any.
        required: (derived) the parameters without a default.
    """

    name: str
    fields: tuple[str, ...]
    function: Callable[..., Any]
    run: Callable[[Context, dict[str, Any]], Partition | Instances]
    grid: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    exporter: Callable[..., Any] | None = None
    overlap: Callable[..., Tensor] | None = None
    overlap_grid: tuple[Any, ...] = ()
    foreground: Callable[[Context], Tensor | None] | None = seed_foreground
    dense: bool = True
    description: str = ""
    params: frozenset[str] | None = field(init=False)
    required: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        sig = inspect.signature(self.function)
        ps = [
            p
            for p in sig.parameters.values()
            if p.name not in INPUT_NAMES or p.kind is p.KEYWORD_ONLY  # k-means's random seed
        ]
        own: frozenset[str] | None = frozenset(
            p.name for p in ps if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        )
        if any(p.kind is p.VAR_KEYWORD for p in ps):
            own = None
        required = tuple(
            p.name
            for p in ps
            if p.default is p.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        )
        object.__setattr__(self, "params", own)
        object.__setattr__(self, "required", required)
        object.__setattr__(self, "fields", tuple(self.fields))
        object.__setattr__(self, "grid", {k: list(v) for k, v in dict(self.grid).items()})

    @property
    def post_params(self) -> tuple[str, ...]:
        """The parameters the dispatcher handles for this method."""
        return DENSE_PARAMS if self.dense else INSTANCE_PARAMS

    def valid_params(self) -> list[str] | None:
        """Every accepted parameter name, sorted; None when any is accepted."""
        return None if self.params is None else sorted(self.params | set(self.post_params))


_REGISTRY: dict[str, Method] = {}

METHODS: list[str] = []
"""The registered method names, in registration order (kept up to date by :func:`register`
and :func:`unregister`; read-only for everyone else)."""

GRIDS: dict[str, dict[str, list]] = {}
"""``{method: {param: [values]}}`` for every registered method with a tuning grid (kept up to
date by :func:`register` and :func:`unregister`; read-only for everyone else)."""


def _sync() -> None:
    METHODS[:] = list(_REGISTRY)
    GRIDS.clear()
    GRIDS.update(
        {n: {k: list(v) for k, v in m.grid.items()} for n, m in _REGISTRY.items() if m.grid}
    )


def register(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` to the table (``replace=True`` to overwrite a name); returns it.

    Raises ValueError for a taken name, an unknown Outputs field, or a grid parameter the
    method does not accept.
    """
    if not method.name or not isinstance(method.name, str):
        raise ValueError(f"a method needs a non-empty name, got {method.name!r}")
    if method.name in _REGISTRY and not replace:
        raise ValueError(f"method {method.name!r} is already registered (replace=True overwrites)")
    known = (*DENSE_FIELDS, "instances")
    bad = [f for f in method.fields if f not in known]
    if bad:
        raise ValueError(f"method {method.name!r}: unknown Outputs field(s) {bad}; valid: {known}")
    if method.params is not None:
        bad = sorted(set(method.grid) - method.params - set(method.post_params))
        if bad:
            raise ValueError(f"method {method.name!r}: grid parameter(s) {bad} not accepted")
    _REGISTRY[method.name] = method
    _sync()
    return method


def unregister(name: str) -> Method:
    """Remove a method from the table (tests, plugins replacing a method); returns it."""
    method = get_method(name)
    del _REGISTRY[name]
    _sync()
    return method


def get_method(name: str) -> Method:
    """The registered method ``name``; ValueError listing the valid names otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown clustering method {name!r}; valid: {list(_REGISTRY)}") from None


def find_method(name: str) -> Method | None:
    """The registered method ``name``, or None."""
    return _REGISTRY.get(name) if isinstance(name, str) else None


def registered_methods() -> tuple[Method, ...]:
    """Every registered method, in registration order."""
    return tuple(_REGISTRY.values())


def exportable_methods() -> tuple[str, ...]:
    """The names of the methods with a TorchScript exporter."""
    return tuple(m.name for m in _REGISTRY.values() if m.exporter is not None)


def overlap_error(method: str) -> str:
    """The error for ``overlap_thresh`` with a method that has no overlap step."""
    names = [m.name for m in _REGISTRY.values() if m.overlap is not None]
    needs = f"method {names[0]!r}" if len(names) == 1 else f"one of the methods {names}"
    return f"overlap_thresh (overlapping masks) needs {needs}, got method {method!r}"


def unknown_params_error(spec: Method, unknown: Iterable[str], extra: Iterable[str] = ()) -> str:
    valid = sorted(set(spec.valid_params() or ()) | set(extra))
    return f"unknown parameter(s) {sorted(unknown)} for method {spec.name!r}; valid: {valid}"


def check_own_params(spec: Method, params: Mapping[str, Any]) -> None:
    """ValueError when ``params`` (the dispatcher's parameters already removed) holds a name
    that is not a parameter of the method's function."""
    if spec.params is None:
        return
    unknown = set(params) - spec.params
    if unknown:
        raise ValueError(unknown_params_error(spec, unknown))


def validate_method(
    name: str,
    params: Mapping[str, Any] | None = None,
    *,
    extra: Iterable[str] = (),
    require: bool = True,
) -> Method:
    """Check a method name and its parameters before any work starts; returns the method.

    Args:
        name: the method.
        params: its parameters, as given to :func:`cluster_embeddings` (the method's own and
            the dispatcher's, e.g. ``min_size``).
        extra: further names to accept (e.g. the engine's ``foreground_classes``).
        require: False skips the required-parameter check (a value filled in later, such as
            k-means's ``k`` from the ground truth during validation).

    Raises:
        ValueError: unknown method (listing the valid ones), a required parameter missing,
            an unknown parameter (listing the valid ones), ``overlap_thresh`` for a method
            without overlapping masks.
    """
    spec = get_method(name)
    params = dict(params or {})
    if spec.dense and params.get("overlap_thresh") is not None and spec.overlap is None:
        raise ValueError(overlap_error(name))
    if require:
        missing = [p for p in spec.required if p not in params]
        if missing:
            raise ValueError(
                f"method {name!r} needs parameter(s) {missing}; valid: "
                f"{sorted(set(spec.valid_params() or spec.required) | set(extra))}"
            )
    if spec.params is not None:
        unknown = set(params) - spec.params - set(spec.post_params) - set(extra)
        if unknown:
            raise ValueError(unknown_params_error(spec, unknown, extra))
    return spec


# --------------------------------------------------------------------------- built-in methods
def run_embedding(fn: Callable[..., tuple[Tensor, Tensor]]) -> Callable[..., Partition]:
    """``run`` of a method ``fn(embedding, foreground, **params) -> (labels, centers)``."""

    def run(ctx: Context, params: dict[str, Any]) -> Partition:
        labels, centers = fn(ctx.field("embedding"), ctx.foreground, **params)
        return Partition(labels, centers)

    return run


def _run_seeded(ctx: Context, params: dict[str, Any]) -> Partition:
    if ctx.min_size is not None:  # also the proposal size of the seed loop
        params["min_size"] = ctx.min_size
    labels, scores, centers = seeded_cluster(
        ctx.field("embedding"),
        ctx.seed_map,
        ctx.field("sigma"),
        ctx.foreground,
        fg_thresh=ctx.fg_thresh,
        **params,
    )
    return Partition(labels, centers, scores)


def _seeded_overlap(
    ctx: Context, params: dict[str, Any], labels: Tensor, centers: Tensor, thresh: float
) -> Tensor:
    assert ctx.foreground is not None  # seeded: the seed map gives the foreground
    return overlap_masks(
        ctx.field("embedding"),
        ctx.field("sigma"),
        labels,
        centers,
        ctx.foreground,
        thresh,
        kernel=params.get("kernel", "gaussian"),
        sigma_mode=params.get("sigma_mode", "std"),
    )


def _run_center_offset(ctx: Context, params: dict[str, Any]) -> Partition:
    labels, scores, centers = center_offset_cluster(
        ctx.field("center"), ctx.field("offset"), ctx.foreground, **params
    )
    return Partition(labels, centers, scores)


def _run_detections(ctx: Context, params: dict[str, Any]) -> Instances:
    return filter_detections(ctx.field("instances"), **params)


def _run_steps(ctx: Context, params: dict[str, Any]) -> Instances:
    return filter_steps(ctx.field("instances"), **params)


for _method in (
    Method(
        "meanshift",
        ("embedding",),
        meanshift_cluster,
        run_embedding(meanshift_cluster),
        grid={"bandwidth": [0.1, 0.15, 0.25, 0.5, 0.75, 1.0]},
        description="mean-shift (bandwidth) on a sample, nearest centre for every pixel",
    ),
    Method(
        "threshold",
        ("embedding",),
        threshold_cluster,
        run_embedding(threshold_cluster),
        grid={"delta_v": [0.25, 0.5, 0.75, 1.0]},
        description="sequential threshold clustering (De Brabandere et al. 2017)",
    ),
    Method(
        "seeded",
        ("embedding", "sigma", "seed"),
        seeded_cluster,
        _run_seeded,
        # seed_thresh reaches 0.925 in fine steps: a trained seed map saturates near 1 (on their
        # val splits the shipped models' matched objects have seed peaks with 5th percentiles
        # 0.88-0.93, their false positives medians 0.85-0.87); a grid that stopped at 0.8, and
        # later one that stopped at 0.9, chose its own edge for the shipped models
        grid={
            "fg_thresh": [0.3, 0.4, 0.5],
            "seed_thresh": [0.6, 0.7, 0.8, 0.85, 0.875, 0.9, 0.925],
            "prob_thresh": [0.3, 0.5],
        },
        exporter=SeededExport,
        overlap=_seeded_overlap,
        overlap_grid=(None, 0.3, 0.4, 0.5),
        description="seeded clustering with a learned bandwidth (Neven et al. 2019)",
    ),
    Method(
        "kmeans",
        ("embedding",),
        kmeans_cluster,
        run_embedding(kmeans_cluster),
        description="k-means with a known number of instances k",
    ),
    Method(
        "hdbscan",
        ("embedding",),
        hdbscan_cluster,
        run_embedding(hdbscan_cluster),
        description="HDBSCAN (scikit-learn) on a sample, nearest centre for every pixel",
    ),
    Method(
        "center_offset",
        ("center", "offset"),
        center_offset_cluster,
        _run_center_offset,
        grid={"threshold": [0.05, 0.1, 0.2, 0.3]},
        exporter=CenterOffsetExport,
        foreground=thing_foreground,
        description="Panoptic-DeepLab center heatmap + offsets",
    ),
    Method(
        "detections",
        ("instances",),
        filter_detections,
        _run_detections,
        grid={"score_thresh": [0.3, 0.5, 0.7], "nms_iou": [0.3, 0.5, 0.7]},
        foreground=None,
        dense=False,
        description="a proposal model's instances: score threshold, mask NMS",
    ),
    Method(
        "steps",
        ("instances",),
        filter_steps,
        _run_steps,
        grid={"stop_thresh": [0.3, 0.5, 0.7]},
        foreground=None,
        dense=False,
        description="a recurrent model's instances, in order until the first low score",
    ),
):
    register(_method)
del _method
register(Method("slots", ("semantic",), slot_instances, run_slots, foreground=None, dense=False,
                description="ordered-slot logits: each slot's connected pixels one instance"))  # fmt: skip

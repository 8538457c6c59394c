"""Typed run configuration: one dataclass per component, filled from YAML, overridable by ``key=value``.

A config file is a YAML mapping with up to six sections, each filling one dataclass::

    data:    DataConfig     where samples come from, crops, augmentation, batch size
    model:   ModelConfig    arguments of :func:`instembed.models.build_model`
    loss:    LossConfig     arguments of :func:`instembed.losses.build_loss`
    cluster: ClusterConfig  arguments of :func:`instembed.cluster.cluster_embeddings`
    optim:   OptimConfig    optimizer, schedule, clipping, mixed precision
    run:     RunConfig      steps, seed, validation / checkpoint cadence, logging

Unknown keys, values of the wrong type and out-of-range values (:data:`MINIMUM`, :data:`CHOICES`)
are rejected with a :class:`ConfigError` naming the dotted key (``optim.lr: expected float, got
str 'fast'``, ``run.steps: expected >= 1, got -5``) before any work starts. Free-form
component arguments go under ``params`` (a plain mapping passed through as ``**kwargs``).

Overrides are ``dotted.key=value`` strings whose value is parsed as YAML (``optim.lr=3e-4``,
``data.crop=[128,128]``, ``model.params.depth=3``). The resolved config is written as YAML beside
every checkpoint (``config.yaml``) and inside it (a YAML string, so checkpoints stay loadable with
``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override that does not fit the schema (message names the key)."""


@dataclass
class DataConfig:
    """Where the training / validation samples come from.

    Either ``synth`` names a synthetic generator (:func:`instembed.data.synth.make_samples` kind)
    or ``path`` names a data folder read by :func:`instembed.data.readers.open_dataset`.
    Validation uses ``val_path`` when given, else the recorded split named by ``split``
    (:mod:`instembed.data.splits`), else the last ``val_fraction`` of the training set
    (synthetic: ``n_val`` extra samples with another seed).
    """

    synth: str | None = None  # synthetic kind, e.g. "dot_grid"
    synth_params: dict[str, Any] = field(default_factory=dict)  # extra make_samples kwargs
    n_train: int = 64  # synthetic: number of training samples
    n_val: int = 8  # synthetic: number of validation samples
    size: list[int] = field(default_factory=lambda: [128, 128])  # synthetic image (H, W)
    path: str | None = None  # data folder (reader)
    format: str = "auto"  # reader format
    reader_params: dict[str, Any] = field(default_factory=dict)
    val_path: str | None = None
    val_fraction: float = 0.1  # used when val_path is None and data come from path
    split: str | None = None  # recorded split of instembed.data.splits ("bbbc039", ...)
    crop: list[int] | None = None  # random crop (H, W) for training; None = whole image
    flip: bool = True
    rot90: bool = True
    augment: list[Any] = field(default_factory=list)  # more transforms (data.transforms specs)
    targets: list[str] = field(default_factory=list)  # method targets (instembed.targets names)
    batch_size: int = 4
    num_workers: int = 0
    center: str = "centroid"  # spatial-loss centres (data.centres); "centroid" = per crop
    look_weights: dict[str, float] | None = None  # {look: weight} draws (data.looks); None = off
    object_diameter: list[float] | None = None  # [low, median, high] px (data.sizes); by train

    def __post_init__(self) -> None:  # bad look weights / min_range fail before any work
        from instembed.data.looks import check_look_weights
        from instembed.data.normalize import model_normalization
        from instembed.data.sizes import check_sizes

        try:
            self.object_diameter = check_sizes(self.object_diameter)
            self.look_weights is None or check_look_weights(self.look_weights)
            isinstance(self.reader_params, dict) and model_normalization(self.reader_params)
        except ValueError as err:
            raise ConfigError(str(err)) from None


@dataclass
class ModelConfig:
    """Arguments of :func:`instembed.models.build_model`: ``build_model(name, in_channels,
    backbone=backbone, **params)``.

    ``name`` is a family of :data:`instembed.models.MODELS` (``embedding``, ...) or a backbone
    name as a shorthand for the embedding family on that backbone; ``params`` are the family's
    own arguments (embedding: ``heads``, ``semiconv``, ``coord_scale``, ``coordconv``,
    ``head_groups``, ``sigma_init`` and the backbone's ``depth``, ``width`` ...), type-checked
    where the family declares types (:data:`instembed.models.build.MODEL_PARAM_TYPES`).

    Checkpoints written before the model table existed stored ``heads``, ``semiconv`` and
    ``coord_scale`` beside ``name``; they are read into ``params``.
    """

    name: str = "embedding"
    backbone: str | None = None  # for families that take one
    in_channels: int = 1
    params: dict[str, Any] = field(default_factory=lambda: {"heads": {"embedding": 8}})


@dataclass
class LossConfig:
    """Arguments of :func:`instembed.losses.build_loss`."""

    name: str = "discriminative"
    params: dict[str, Any] = field(default_factory=dict)
    # more losses added to the first: [{"name": "semantic_ce", "weight": 1.0, "params": {}}]
    extra: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ClusterConfig:
    """Arguments of :func:`instembed.cluster.cluster_embeddings` (used for validation and predict).

    Besides the method's own parameters, ``params`` may hold ``foreground_classes`` (semantic
    classes whose argmax pixels form the foreground, for models with a semantic head and no seed)
    and ``stuff_classes`` (semantic classes written as stuff segments by ``predict --panoptic``).
    """

    method: str = "meanshift"
    params: dict[str, Any] = field(default_factory=dict)  # method parameters (bandwidth, k, ...)


@dataclass
class OptimConfig:
    """Optimizer, learning-rate schedule, clipping and mixed precision."""

    optimizer: str = "adamw"  # "adamw" | "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: str = "poly"  # "poly" | "cosine" | "constant"
    poly_power: float = 0.9
    warmup_steps: int = 0
    min_lr: float = 0.0
    grad_clip: float | None = 1.0  # max gradient norm; None = off
    amp: bool = True  # mixed precision, used on CUDA only
    # CPU training speed (instembed.engine.speed; docs/engine.md "Training speed on a CPU")
    bf16: bool = False  # bfloat16 autocast of the forward on a CPU (changes numerics)
    channels_last: bool = False  # NHWC memory format of weights and images


@dataclass
class RunConfig:
    """Length of the run, seeding, cadence of validation / checkpoints / logs."""

    steps: int = 1000
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1" ...
    deterministic: bool = True  # torch.use_deterministic_algorithms on CPU
    val_every: int = 200  # steps; 0 = validate only at the end
    ckpt_every: int = 200  # steps; 0 = checkpoint only at the end
    log_every: int = 10  # steps between CSV / TensorBoard rows
    best_metric: str = "AP"  # validation metric for best-model selection ("loss" = val loss)
    best_mode: str = "max"  # "max" | "min"
    tensorboard: bool = True  # when the tensorboard package is installed
    progress: bool = True  # tqdm progress bar
    max_val_images: int | None = None  # cap the validation set
    # validation clusters with thresholds tuned on the val images (instembed.engine.tune grids;
    # class-agnostic scores), so that early checkpoints whose seed maps have not reached the
    # configured thresholds are still ranked fairly; the chosen values are logged
    val_tune: bool = False
    compile: bool = False  # torch.compile the training forward (eager, with a warning, if it fails)


@dataclass
class Config:
    """The whole run: one section per component."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "optim.optimizer": ("adamw", "adam"),
    "optim.schedule": ("poly", "cosine", "constant"),
    "run.best_mode": ("max", "min"),
    "data.center": ("centroid", "image_centroid", "medoid", "approx_medoid"),
}

# smallest allowed value of numeric keys (None values of optional keys are not checked)
MINIMUM: dict[str, int | float] = {
    "run.steps": 1,
    "run.val_every": 0,
    "run.ckpt_every": 0,
    "run.log_every": 0,
    "run.max_val_images": 1,
    "data.batch_size": 1,
    "data.num_workers": 0,
    "data.n_train": 0,
    "data.n_val": 0,
    "optim.warmup_steps": 0,
}


# --------------------------------------------------------------------------- type checking
def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` checked against the annotation ``tp`` (ints accepted for floats)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: the inner error names the exact key
            return _coerce(value, options[0], key)
        for arg in options:
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping (section), got {type(value).__name__}")
        return _build(tp, value, key)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        kt, vt = typing.get_args(tp) or (str, Any)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return {
            _coerce(k, kt, f"{key} key"): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()
        }
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - schema uses only the types above
        raise TypeError(f"unsupported annotation {tp!r} for {key}")
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _build(cls: type, data: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key '{where}{unknown[0]}'"
            f" (valid keys{' of ' + prefix if prefix else ''}: {', '.join(names)})"
        )
    kwargs = {}
    for name in names:
        if name in data:
            key = f"{prefix}.{name}" if prefix else name
            kwargs[name] = _coerce(data[name], hints[name], key)
            if key in CHOICES and kwargs[name] not in CHOICES[key]:
                raise ConfigError(
                    f"{key}: expected one of {list(CHOICES[key])}, got {kwargs[name]!r}"
                )
            if key in MINIMUM and kwargs[name] is not None and kwargs[name] < MINIMUM[key]:
                raise ConfigError(f"{key}: expected >= {MINIMUM[key]}, got {kwargs[name]!r}")
    return cls(**kwargs)


# --------------------------------------------------------------------------- model section
LEGACY_MODEL_KEYS = ("heads", "semiconv", "coord_scale")  # embedding-family keys of old configs


def _legacy_model_section(data: dict) -> dict:
    """Old model sections kept ``heads``, ``semiconv`` and ``coord_scale`` beside ``name``; they
    are the embedding family's parameters now (``model.params``). ``coord_scale: null`` meant
    the model's default and is dropped."""
    model = data.get("model")
    if not isinstance(model, dict) or not any(k in model for k in LEGACY_MODEL_KEYS):
        return data
    model = dict(model)
    params = dict(model.get("params") or {})
    for key in LEGACY_MODEL_KEYS:
        if key in model:
            value = model.pop(key)
            if key in params:
                raise ConfigError(f"model.{key} and model.params.{key} are both given")
            if value is not None:
                params[key] = value
    model["params"] = params
    return {**data, "model": model}


def _check_model_params(mc: ModelConfig) -> ModelConfig:
    """Type-check ``model.params`` against the family's declared parameter types."""
    from instembed.models.build import BACKBONES, MODEL_PARAM_TYPES, MODELS

    family = "embedding" if mc.name.lower() in BACKBONES else mc.name.lower()
    if family not in MODELS:
        raise ConfigError(
            f"model.name: unknown model {mc.name!r}; valid: {sorted(MODELS)} (families) or "
            f"{sorted(BACKBONES)} (backbones of the embedding family)"
        )
    types = MODEL_PARAM_TYPES.get(family, {})
    params = dict(mc.params)
    for key, tp in types.items():
        if key in params and params[key] is not None:
            params[key] = _coerce(params[key], tp, f"model.params.{key}")
    return dataclasses.replace(mc, params=params)


# --------------------------------------------------------------------------- cluster section
FILLED_AT_VALIDATION: dict[str, tuple[str, ...]] = {"kmeans": ("k",)}
"""Required clusterer parameters that training-time validation fills in from the ground truth
(:func:`instembed.engine.evaluation.cluster_config_for`: k-means gets the true number of
objects). A training config may leave them out; prediction, tuning and export may not."""

DEFAULT_CLUSTER: dict[str, Any] = {"method": "meanshift", "params": {"bandwidth": 0.5}}
"""The clusterer of a training config without a ``cluster`` section (:func:`load_config`)."""

ENGINE_PARAM_TYPES: dict[str, Any] = {
    "foreground_classes": list[int] | None,
    "stuff_classes": list[int],
}
"""Types of the engine's own ``cluster.params`` (read by :func:`instembed.engine.build.
cluster_outputs` and ``predict --panoptic``, not by the clusterer)."""

POST_PARAM_TYPES: dict[str, Any] = {
    "min_size": int,
    "fill_holes": bool,
    "score": str,
    "thing_classes": list[int] | None,
    "fg_thresh": float,
    "batch_index": int,
    "overlap_thresh": float | None,
}
"""Types of the parameters the clustering dispatcher handles itself
(:data:`instembed.cluster.methods.DENSE_PARAMS` / ``INSTANCE_PARAMS``)."""


def _param_name(key: str, name: str) -> str:
    """``cluster.params.k`` for a config section, ``--cluster k`` for a command-line option."""
    return f"{key} {name}" if key.startswith("-") else f"{key}.{name}"


def cluster_param_types(method: str) -> dict[str, Any]:
    """``{parameter: type}`` of a clustering method: its function's annotations (else the type
    of the default), the dispatcher's post-processing parameters (:data:`POST_PARAM_TYPES`)
    and the engine's (:data:`ENGINE_PARAM_TYPES`). A parameter without a usable type (HDBSCAN's
    ``**kwargs``) is left out: any value is accepted for it. ValueError for an unknown method."""
    import inspect

    from instembed.cluster.methods import INPUT_NAMES, get_method

    spec = get_method(method)
    try:
        hints = typing.get_type_hints(spec.function)
    except Exception:  # pragma: no cover - annotations that do not resolve: use the defaults
        hints = {}
    out: dict[str, Any] = dict(ENGINE_PARAM_TYPES)
    out.update({k: v for k, v in POST_PARAM_TYPES.items() if k in spec.post_params})
    for p in inspect.signature(spec.function).parameters.values():
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        if p.name in INPUT_NAMES and p.kind is not p.KEYWORD_ONLY:
            continue
        tp = hints.get(p.name)
        if tp is None and p.default is not p.empty and p.default is not None:
            tp = type(p.default)
        if tp is not None:
            out[p.name] = tp
    return out


def check_cluster_value(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked against the parameter type ``tp`` (ints accepted for floats, numbers
    written as text such as ``1e-3`` read as floats); :class:`ConfigError` naming ``where``
    otherwise. Types the schema checker does not know (tensors, callables) accept anything."""
    try:
        return _coerce(value, tp, where)
    except TypeError:  # an annotation the checker does not handle: not checked
        return value


def check_cluster(
    cc: ClusterConfig,
    *,
    require: bool = True,
    training: bool = False,
    key: str = "cluster",
) -> ClusterConfig:
    """Check the clusterer of a config before any work starts; returns it with its parameter
    values type-checked (and ints given for floats made floats).

    Checked: the method is registered; every parameter is one of the method's (its function's
    keyword parameters), the dispatcher's (``min_size``, ``fg_thresh`` ...) or the engine's
    (``foreground_classes``, ``stuff_classes``); each value fits the parameter's type
    (:func:`cluster_param_types`); with ``require`` the parameters without a default are given
    -- with ``training`` except those validation fills in (:data:`FILLED_AT_VALIDATION`:
    k-means's ``k``).

    Args:
        key: how errors name the section: ``"cluster"`` (``cluster.params.k: ...``) or a
            command-line option such as ``"--cluster"`` (``--cluster k: ...``).

    Raises:
        ConfigError: one line naming the key and listing the valid names.
    """
    from instembed.cluster.methods import find_method, overlap_error, registered_methods

    option = key.startswith("-")
    method_key = f"{key} method" if option else f"{key}.method"
    params_key = key if option else f"{key}.params"
    spec = find_method(cc.method)
    if spec is None:
        raise ConfigError(
            f"{method_key}: unknown clustering method {cc.method!r}; valid: "
            f"{[m.name for m in registered_methods()]}"
        )
    params = dict(cc.params)
    types = cluster_param_types(spec.name)
    valid = None if spec.params is None else sorted({*(spec.valid_params() or ()), *types})
    if valid is not None:
        unknown = [p for p in params if p not in valid]
        if unknown:
            raise ConfigError(
                f"{_param_name(params_key, str(unknown[0]))}: unknown parameter of method "
                f"{spec.name!r}; valid: {valid}"
            )
    if require:
        filled = FILLED_AT_VALIDATION.get(spec.name, ()) if training else ()
        missing = [p for p in spec.required if p not in params and p not in filled]
        if missing:
            name = missing[0]
            why = ""
            if name in FILLED_AT_VALIDATION.get(spec.name, ()):
                why = (
                    " (training validation takes it from the ground truth; a model used without "
                    "ground truth needs it given)"
                )
            fix = f"pass --cluster {name}=N" if name == "k" else f"pass --cluster {name}=VALUE"
            if not option:
                fix = f"set {params_key}.{name}"
            raise ConfigError(
                f"{_param_name(params_key, name)}: required by method {spec.name!r}{why}: "
                f"{fix}; its parameters: {valid if valid is not None else list(spec.required)}"
            )
    for name, value in params.items():
        if name in types:
            params[name] = check_cluster_value(value, types[name], _param_name(params_key, name))
    if spec.dense and params.get("overlap_thresh") is not None and spec.overlap is None:
        raise ConfigError(
            f"{_param_name(params_key, 'overlap_thresh')}: {overlap_error(spec.name)}"
        )
    return dataclasses.replace(cc, params=params)


def validates(dc: DataConfig) -> bool:
    """Whether a run on this data section has validation images, clustered with the config's
    clusterer (synthetic: ``n_val`` > 0; a folder: ``val_path``, a recorded ``split`` or a
    ``val_fraction`` > 0)."""
    if dc.synth is not None:
        return dc.n_val > 0
    if dc.path is not None:
        return dc.val_path is not None or dc.split is not None or dc.val_fraction > 0
    return False


# --------------------------------------------------------------------------- public API
def config_from_dict(data: dict | None) -> Config:
    """Build a :class:`Config` from a nested mapping; missing keys keep their defaults."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a mapping of sections, got {type(data).__name__}")
    cfg = _build(Config, _legacy_model_section(data), "")
    cfg.model = _check_model_params(cfg.model)
    return cfg


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dict (only str/int/float/bool/None/list/dict), YAML- and torch-safe."""
    return dataclasses.asdict(cfg)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=3e-4"`` -> (["optim", "lr"], 3e-4); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected dotted.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({err})") from None
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Return a copy of the nested mapping ``data`` with ``dotted.key=value`` overrides applied."""
    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(
                    f"override {text!r}: {'.'.join(path[: i + 1])} is not a section or mapping"
                )
            node = nxt
        node[path[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or start from defaults when ``path`` is None) and apply overrides:
    the config of a training run.

    A config without a ``cluster`` section gets :data:`DEFAULT_CLUSTER`. Raises
    :class:`ConfigError` naming the file and key for unknown keys or wrong types, an unknown
    clustering method or parameter, a parameter value of the wrong type, or -- when the run has
    validation images (:func:`validates`) -- a missing required one (:func:`check_cluster`;
    k-means may leave out ``k``, which validation takes from the ground truth), and
    ``FileNotFoundError`` for a missing file.
    """
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    try:
        data = apply_overrides(data, overrides or [])
        cfg = config_from_dict(data)
        if "cluster" not in data:  # the dataclass default has no bandwidth
            cfg.cluster = ClusterConfig(**copy.deepcopy(DEFAULT_CLUSTER))
        # checked now, not at the first validation (required parameters if the run validates)
        cfg.cluster = check_cluster(cfg.cluster, require=validates(cfg.data), training=True)
        return cfg
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" if path is not None else str(err)) from None


def config_to_yaml(cfg: Config) -> str:
    """The resolved config as YAML text (round-trips through :func:`config_from_yaml`)."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)


def config_from_yaml(text: str) -> Config:
    """Parse YAML text (e.g. stored in a checkpoint) into a :class:`Config`."""
    return config_from_dict(yaml.safe_load(text) or {})


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically: temporary file + rename)."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        fh.write(config_to_yaml(cfg))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path

"""Export a trained model to TorchScript (network + post-processing where possible) or ONNX.

TorchScript. The network is traced (``torch.jit.trace``) on an input whose size is a multiple
of its ``size_divisor``; a scripted wrapper pads any input (reflection, bottom/right) to such a
multiple, runs the traced network and crops the outputs back, as the Python model does. For the
clusterers that compile with ``torch.jit.script`` -- the methods with an ``exporter`` in the table
:mod:`instembed.cluster.methods`: ``seeded`` (Neven et al. 2019) and ``center_offset``
(Panoptic-DeepLab); the wrappers are in :mod:`instembed.cluster.torchscript` -- the same file
also holds the clustering::

    m = torch.jit.load("model.ts")
    outputs = m(image)                 # dict name -> (B, ., H, W): image (B, C, H, W) float32
    labels, scores = m.segment(image)  # (H, W) int64, (N,) -- one image (1, C, H, W); only
                                       # when m.has_postprocessing
    labels, scores, masks = m.segment_masks(image)  # + (N, H, W) bool (overlap_thresh)

``segment`` applies the post-processing of ``instembed predict`` (``cluster_embeddings``) with
every parameter of ``cfg.cluster.params`` -- thresholds, foreground rule, ``min_size`` removal,
sequential relabelling, ``score`` mode, overlapping masks -- so its labels equal the
``Predictor``'s; a parameter that cannot be compiled (``fill_holes``) is refused with a
ValueError naming it (``postprocessing=False`` exports the network alone). The module checks its
input (4 dimensions, the model's channel count, a floating dtype) inside TorchScript.

Other clusterers (mean-shift, threshold, k-means, HDBSCAN) are data-dependent Python code: the
file holds the network only and ``m.has_postprocessing`` is False. Every file carries the run
config as the extra file ``config.yaml``.

Families that return instances themselves: Mask R-CNN and the semi-convolutional Mask R-CNN
(``m(image) -> boxes, scores, classes, masks``, the whole detector) and the instance-sensitive
FCN (``m(image) -> dict`` of its maps, ``m.detect(image)``), see
:mod:`instembed.engine.export_instances`; the ``detections`` post-processing is not compiled in.
Another family that returns instances (recurrent attention) is refused with a ValueError naming
what exists.

ONNX. Network only, exported with PyTorch's TorchScript-based exporter (``dynamo=False``, which
needs no ``onnxscript``), with dynamic batch, height and width. The graph contains no padding:
inputs must have H and W multiples of the ``size_divisor`` stored in the model's metadata
(``metadata_props``: ``size_divisor``, ``outputs``, ``semiconv``, ``coord_scale``, ``config``).
Semi-convolutional coordinates are those of the input's top-left pixel at (0, 0).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from instembed.cluster.methods import exportable_methods, get_method
from instembed.cluster.torchscript import CenterOffsetExport, ScriptedNet, SeededExport
from instembed.engine.config import Config, config_to_yaml

log = logging.getLogger(__name__)

__all__ = [
    "SCRIPTABLE_CLUSTERERS",
    "CenterOffsetExport",
    "ScriptedNet",
    "SeededExport",
    "export_instance_model",
    "export_onnx",
    "export_torchscript",
    "output_names",
    "postprocessing_wrapper",
]

SCRIPTABLE_CLUSTERERS = exportable_methods()
"""The methods with a TorchScript exporter when this module was imported
(:func:`instembed.cluster.methods.exportable_methods` is the live list)."""


class _TupleNet(nn.Module):
    """Network returning a tuple of its output fields in a fixed order (for tracing)."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        out = self.model(x)
        return tuple(getattr(out, n) for n in self.names)


def _example(model: nn.Module, size: int | None) -> Tensor:
    d = int(getattr(model, "size_divisor", 1) or 1)  # model_facts' divisor, nothing measured
    side = size or max(64, 2 * d)
    side += (-side) % d
    c = int(getattr(model, "in_channels", 1))
    return torch.rand(1, c, side, side, generator=torch.Generator().manual_seed(0))


def output_names(model: nn.Module, example: Tensor) -> list[str]:
    """The dense output fields of ``model`` (what the exported file returns); a model that
    returns instances itself (proposal-based, recurrent) is refused with a clear error (its
    TorchScript export goes through :func:`export_instance_model`)."""
    with torch.no_grad():
        out = model(example)
    if out.instances is not None:
        raise ValueError(
            f"export: {type(model).__name__} returns instances itself (Outputs.instances); "
            "ONNX export traces dense output maps only -- export it to TorchScript "
            f"({_instance_support()})"
        )
    return list(out.to_dict())


def _instance_support() -> str:
    return (
        "TorchScript exports of instance-returning families: maskrcnn, semiconv_maskrcnn "
        "(detector: boxes, scores, classes, masks) and isfcn (network + dense windows)"
    )


def returns_instances(model: nn.Module, example: Tensor) -> bool:
    """Whether ``model`` (in eval mode) returns ``Outputs.instances`` on ``example``."""
    with torch.no_grad():
        return model.eval()(example).instances is not None


def export_instance_model(
    model: nn.Module, example: Tensor, postprocessing: bool | None = None
) -> torch.jit.ScriptModule:
    """The scripted module of a model that returns instances itself
    (:mod:`instembed.engine.export_instances`): Mask R-CNN and the semi-convolutional Mask
    R-CNN (``m(image) -> boxes, scores, classes, masks``), the instance-sensitive FCN (``m(image)
    -> dict`` of its maps, ``m.detect(image) -> masks, scores, centers``). A family without an
    exporter (the recurrent attention model) is refused with a ValueError naming it and what
    exists. The ``"detections"`` post-processing is not compiled in: ``postprocessing=True``
    is refused."""
    from instembed.engine.export_instances import instance_exporter

    exporter = instance_exporter(model)
    if exporter is None:
        raise ValueError(
            f"export: {type(model).__name__} returns instances itself (Outputs.instances) and "
            f"its family has no TorchScript exporter: its inference loop (per-step Python "
            f"control flow) is not compiled; {_instance_support()}"
        )
    if postprocessing:
        raise ValueError(
            f"export: the post-processing of {type(model).__name__} (the 'detections' method: "
            "mask threshold, score threshold, mask NMS) has no TorchScript version; the file "
            "holds the raw detections -- export without requiring post-processing"
        )
    with _quiet_tracer():
        return torch.jit.script(exporter(model, example))


def postprocessing_wrapper(
    traced: torch.jit.ScriptModule,
    names: list[str],
    divisor: int,
    method: str,
    params: dict,
    postprocessing: bool | None = None,
    in_channels: int = 0,
) -> ScriptedNet:
    """The scripted wrapper of a traced network: with the method's TorchScript exporter (from
    the table :mod:`instembed.cluster.methods`) when it has one and the network has the
    outputs it reads, else the network only.

    Args:
        postprocessing: None: post-processing when possible (else the network only, logged);
            True: required (ValueError naming the methods that have an exporter, or the
            missing outputs); False: the network only. A method with an exporter whose
            configured parameters cannot all be exported (e.g. ``fill_holes``) is refused
            with a ValueError naming the parameter unless ``postprocessing`` is False: the
            file would otherwise segment differently from ``instembed predict``.
        in_channels: the channel count the exported module checks its input against (0: any).
    """
    if postprocessing is False:
        return ScriptedNet(traced, names, divisor, in_channels)
    exporter, reason = None, ""
    try:
        spec = get_method(method)
    except ValueError as err:
        reason = str(err)
    else:
        missing = [f for f in spec.fields if f not in names]
        if spec.exporter is None:
            reason = (
                f"method {method!r} has no TorchScript post-processing; methods with one: "
                f"{list(exportable_methods())}"
            )
        elif missing:
            reason = (
                f"method {method!r} needs the network outputs {missing}, which the model "
                f"lacks (outputs: {names})"
            )
        else:
            exporter = spec.exporter
    if exporter is not None:
        wrapper = exporter(traced, names, divisor, params)
        wrapper.in_channels = int(in_channels)
        return wrapper
    if postprocessing:
        raise ValueError(f"cannot export the post-processing: {reason}")
    log.info("%s: exporting the network only", reason)
    return ScriptedNet(traced, names, divisor, in_channels)


def export_torchscript(
    model: nn.Module,
    cfg: Config,
    path: str | Path,
    example_size: int | None = None,
    postprocessing: bool | None = None,
) -> Path:
    """Write a TorchScript file (see module docstring); returns its path.

    ``postprocessing``: None (default) includes the configured method's post-processing when it
    has a TorchScript exporter (:func:`instembed.cluster.methods.exportable_methods`), else
    the file holds the network only; True requires it (ValueError listing the methods that
    have one); False exports the network only.
    """
    from instembed.engine.inference import model_facts

    model = model.eval()
    example = _example(model, example_size)
    path = Path(path)
    if returns_instances(model, example):
        scripted = export_instance_model(model, example, postprocessing)
        path.parent.mkdir(parents=True, exist_ok=True)
        scripted.save(str(path), _extra_files={"config.yaml": config_to_yaml(cfg)})
        return path
    names = output_names(model, example)
    facts = model_facts(model)
    with torch.no_grad(), _quiet_tracer():
        traced = torch.jit.trace(_TupleNet(model, names).eval(), example, check_trace=False)
    method, params = cfg.cluster.method, dict(cfg.cluster.params)
    wrapper = postprocessing_wrapper(
        traced, names, facts["size_divisor"], method, params, postprocessing, example.shape[1]
    )
    scripted = torch.jit.script(wrapper)
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted.save(str(path), _extra_files={"config.yaml": config_to_yaml(cfg)})
    return path


class _quiet_tracer:
    """Silence TracerWarnings of shape checks that are constant for a fixed divisor-multiple."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def export_onnx(
    model: nn.Module,
    cfg: Config,
    path: str | Path,
    example_size: int | None = None,
    opset: int = 17,
) -> Path:
    """Write an ONNX file of the network (dynamic B, H, W; H, W multiples of size_divisor)."""
    try:
        import onnx
    except ImportError:
        raise ImportError(
            "ONNX export needs the 'onnx' package: pip install 'instembed[onnx]'"
        ) from None
    from instembed.engine.inference import model_facts

    model = model.eval()
    example = _example(model, example_size)
    names = output_names(model, example)
    facts = model_facts(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {"image": {0: "batch", 2: "height", 3: "width"}}
    axes.update({n: {0: "batch", 2: "height", 3: "width"} for n in names})
    with torch.no_grad(), _quiet_tracer():
        # an eval-mode wrapper: the exporter restores the wrapper's mode on the whole tree
        torch.onnx.export(
            _TupleNet(model, names).eval(),
            (example,),
            str(path),
            input_names=["image"],
            output_names=names,
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    proto = onnx.load(str(path))
    meta = {
        "size_divisor": str(facts["size_divisor"]),
        "outputs": ",".join(names),
        "semiconv": str(facts["semiconv"]),
        "coord_scale": repr(facts["coord_scale"]),
        "config": config_to_yaml(cfg),
    }
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(proto, str(path))
    return path

"""Export a trained model to TorchScript (network + post-processing where possible) or ONNX.

TorchScript. The network is traced (``torch.jit.trace``) on an input whose size is a multiple
of its ``size_divisor``; a scripted wrapper pads any input (reflection, bottom/right) to such a
multiple, runs the traced network and crops the outputs back, as the Python model does. For the
clusterers that compile with ``torch.jit.script`` -- ``seeded`` (Neven et al. 2019) and
``center_offset`` (Panoptic-DeepLab) -- the same file also holds the clustering::

    m = torch.jit.load("model.ts")
    outputs = m(image)                 # dict name -> (B, ., H, W): image (B, C, H, W) float32
    labels, scores = m.segment(image)  # (H, W) int64, (N,) -- one image (1, C, H, W); only
                                       # when m.has_postprocessing

Other clusterers (mean-shift, threshold, k-means, HDBSCAN) are data-dependent Python code: the
file holds the network only and ``m.has_postprocessing`` is False. Every file carries the run
config as the extra file ``config.yaml``.

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

from instembed.cluster.center_offset import center_offset_cluster
from instembed.cluster.seeded import seeded_cluster
from instembed.engine.config import Config, config_to_yaml

log = logging.getLogger(__name__)

SCRIPTABLE_CLUSTERERS = ("seeded", "center_offset")


class _TupleNet(nn.Module):
    """Network returning a tuple of its output fields in a fixed order (for tracing)."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        out = self.model(x)
        return tuple(getattr(out, n) for n in self.names)


class ScriptedNet(nn.Module):
    """Pad -> traced network -> crop; ``forward(image) -> dict`` of output fields."""

    def __init__(self, traced: torch.jit.ScriptModule, names: list[str], divisor: int) -> None:
        super().__init__()
        self.net = traced
        self.names = names
        self.divisor = divisor
        self.has_postprocessing = False

    def forward(self, image: Tensor) -> dict[str, Tensor]:
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


class SeededExport(ScriptedNet):
    """Network + seeded clustering (Neven et al. 2019) in TorchScript."""

    def __init__(self, traced, names, divisor, params: dict) -> None:
        super().__init__(traced, names, divisor)
        self.has_postprocessing = True
        self.fg_thresh = float(params.get("fg_thresh", 0.5))
        self.seed_thresh = float(params.get("seed_thresh", 0.9))
        self.min_size = int(params.get("min_size", 128))
        self.new_fraction = float(params.get("new_fraction", 0.5))
        self.prob_thresh = float(params.get("prob_thresh", 0.5))
        self.kernel = str(params.get("kernel", "gaussian"))
        self.sigma_mode = str(params.get("sigma_mode", "std"))
        self.max_points = int(params.get("max_points", 16384))
        self.stride = int(params.get("stride", 4))

    @torch.jit.export
    def segment(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """(labels (H, W) int64 0 = background, scores (N,)) for one image (1, C, H, W)."""
        out = self.forward(image)
        labels, scores, _ = seeded_cluster(
            out["embedding"][0],
            out["seed"][0, 0],
            out["sigma"][0],
            None,
            self.fg_thresh,
            self.seed_thresh,
            self.min_size,
            self.new_fraction,
            self.prob_thresh,
            self.kernel,
            self.sigma_mode,
            self.max_points,
            self.stride,
        )
        return labels, scores


class CenterOffsetExport(ScriptedNet):
    """Network + Panoptic-DeepLab center/offset grouping in TorchScript."""

    def __init__(self, traced, names, divisor, params: dict) -> None:
        super().__init__(traced, names, divisor)
        self.has_postprocessing = True
        self.threshold = float(params.get("threshold", 0.1))
        self.nms_kernel = int(params.get("nms_kernel", 7))
        self.top_k = int(params.get("top_k", 200))
        self.stride = int(params.get("stride", 4))
        self.fg_thresh = float(params.get("fg_thresh", 0.5))
        self.use_seed = "seed" in names

    @torch.jit.export
    def segment(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """(labels (H, W) int64, scores (N,)) for one image (1, C, H, W)."""
        out = self.forward(image)
        thing: Tensor | None = None
        if self.use_seed:
            thing = out["seed"][0, 0] > self.fg_thresh
        labels, scores, _ = center_offset_cluster(
            out["center"][0],
            out["offset"][0],
            thing,
            self.threshold,
            self.nms_kernel,
            self.top_k,
            self.stride,
        )
        return labels, scores


def _example(model: nn.Module, size: int | None) -> Tensor:
    from instembed.engine.inference import model_facts

    d = model_facts(model)["size_divisor"]
    side = size or max(64, 2 * d)
    side += (-side) % d
    c = int(getattr(model, "in_channels", 1))
    return torch.rand(1, c, side, side, generator=torch.Generator().manual_seed(0))


def output_names(model: nn.Module, example: Tensor) -> list[str]:
    with torch.no_grad():
        return list(model(example).to_dict())


def export_torchscript(
    model: nn.Module, cfg: Config, path: str | Path, example_size: int | None = None
) -> Path:
    """Write a TorchScript file (see module docstring); returns its path."""
    from instembed.engine.inference import model_facts

    model = model.eval()
    example = _example(model, example_size)
    names = output_names(model, example)
    facts = model_facts(model)
    with torch.no_grad(), _quiet_tracer():
        traced = torch.jit.trace(_TupleNet(model, names).eval(), example, check_trace=False)
    method, params = cfg.cluster.method, dict(cfg.cluster.params)
    wrapper: ScriptedNet
    if method == "seeded" and {"embedding", "seed", "sigma"} <= set(names):
        wrapper = SeededExport(traced, names, facts["size_divisor"], params)
    elif method == "center_offset" and {"center", "offset"} <= set(names):
        wrapper = CenterOffsetExport(traced, names, facts["size_divisor"], params)
    else:
        log.info("clusterer %r is not TorchScript-compatible: exporting the network only", method)
        wrapper = ScriptedNet(traced, names, facts["size_divisor"])
    scripted = torch.jit.script(wrapper)
    path = Path(path)
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

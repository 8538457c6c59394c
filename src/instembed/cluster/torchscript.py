"""TorchScript post-processing: a scripted network wrapper with the clustering of one image
compiled in (``segment``), for the clusterers that compile with ``torch.jit.script``.

:class:`ScriptedNet` pads any input to a multiple of the network's ``size_divisor``, runs the
traced network and crops the outputs back (``forward(image) -> dict`` of output fields);
``has_postprocessing`` is False. Its subclasses add ``segment(image) -> (labels, scores)`` for one
image (1, C, H, W) and set ``has_postprocessing``:

* :class:`SeededExport`: seeded clustering (Neven et al. 2019);
* :class:`CenterOffsetExport`: Panoptic-DeepLab center/offset grouping.

Each is the ``exporter`` of its method in :mod:`instembed.cluster.methods`; an exporter is built as
``exporter(traced, names, divisor, params)`` with ``params`` the method's parameters
(:func:`instembed.engine.export.export_torchscript` does this).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from instembed.cluster.center_offset import center_offset_cluster
from instembed.cluster.seeded import seeded_cluster


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

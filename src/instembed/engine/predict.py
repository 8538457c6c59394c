"""Prediction: model lookup (checkpoint or shipped pretrained name), images -> instances -> files.

Pipeline of one image (C, H, W)::

    network outputs   <- engine.inference.infer (whole image, or tiles + stitching; optional TTA)
    instances         <- the clusterer of the model's config, run ONCE on the stitched outputs
    files             <- <stem>.tif labels, <stem>.json table, <stem>_overlay.png,
                         optional COCO results json (RLE) and panoptic PNG + json

A model is named by a checkpoint path (``.pt`` written by ``instembed train``), a run folder
(its ``best.pt``, else ``last.pt``), or the name of a pretrained model shipped in
``instembed/pretrained/<name>.pt`` with ``<name>.json`` holding its ``sha256`` (checked before
loading).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from instembed.data.sizes import auto_search, diameter_scale, image_diameter, start_scale
from instembed.engine import checkpoint as ck
from instembed.engine.blockwise import (
    DEFAULT_HALO,
    auto_block,
    n_blocks,
    network_regions,
    segment_blockwise,
)
from instembed.engine.build import build_model_from_config, cluster_outputs
from instembed.engine.config import ClusterConfig, Config, config_from_yaml
from instembed.engine.inference import default_overlap, infer, model_facts, tta_forward
from instembed.structures import Instances, Outputs

log = logging.getLogger(__name__)

PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"


# --------------------------------------------------------------------------- model lookup
def pretrained_names(folder: Path = PRETRAINED_DIR) -> list[str]:
    """Names of the shipped pretrained models (``<name>.pt`` with a ``<name>.json`` beside it)."""
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.pt") if p.with_suffix(".json").is_file())


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def resolve_model(spec: str | Path, pretrained_dir: Path = PRETRAINED_DIR) -> Path:
    """Checkpoint path for ``spec``: a file, a run folder, or a pretrained model name.

    A pretrained file is checked against the ``sha256`` in its JSON card; a mismatch raises
    :class:`~instembed.engine.checkpoint.CheckpointError`. Unknown names raise
    ``FileNotFoundError`` listing the shipped names.
    """
    path = Path(spec)
    if path.is_file():
        return path
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"--model {spec}: folder has no best.pt or last.pt")
    weights = pretrained_dir / f"{spec}.pt"
    card = pretrained_dir / f"{spec}.json"
    if weights.is_file() and card.is_file():
        try:
            expected = json.loads(card.read_text())["sha256"]
        except (ValueError, KeyError) as err:
            raise ck.CheckpointError(f"{card}: no readable 'sha256' entry ({err})") from None
        got = sha256_file(weights)
        if got != expected:
            raise ck.CheckpointError(
                f"pretrained model {spec!r}: sha256 of {weights} is {got}, expected {expected}"
                " (file corrupted or replaced)"
            )
        return weights
    names = pretrained_names(pretrained_dir)
    raise FileNotFoundError(
        f"--model {spec}: no such checkpoint file or run folder, and not a pretrained model name"
        f" (shipped: {', '.join(names) if names else 'none'})"
    )


def load_model(
    spec: str | Path, device: str | torch.device = "cpu", pretrained_dir: Path = PRETRAINED_DIR
) -> tuple[nn.Module, Config]:
    """(model in eval mode on ``device``, its run config) from a checkpoint / run / pretrained name."""
    path = resolve_model(spec, pretrained_dir)
    model, cfg = model_from_checkpoint(ck.load_checkpoint(path, map_location="cpu"), path)
    return model.to(device).eval(), cfg


def model_from_checkpoint(state: dict, path: str | Path) -> tuple[nn.Module, Config]:
    """(model with the weights of the loaded checkpoint ``state``, its run config); errors name
    ``path``. The checkpoint's size model, if any, is attached as ``model.size_model``."""
    try:
        cfg = config_from_yaml(state["config"])
    except ValueError as err:
        raise ck.CheckpointError(f"{path}: stored config does not parse: {err}") from None
    model = build_model_from_config(cfg.model)
    ck.load_model_state(model, state["model"], source=str(path))
    if state.get("size_model") is not None:  # for scale="auto" (instembed.engine.size_model)
        from instembed.engine.size_model import SizeModel

        model.size_model = SizeModel.from_dict(state["size_model"], source=str(path))
    return model, cfg


# --------------------------------------------------------------------------- prediction
def instances_from_outputs(outputs: Outputs, cluster: ClusterConfig) -> Instances:
    """The :class:`~instembed.structures.Instances` of one image (batch dim 1), as numpy arrays:
    the configured post-processing of the outputs (``labels`` int32, ``scores`` float32,
    ``masks`` for overlapping instances, ``semantic`` argmax when the model has a semantic
    head)."""
    res = cluster_outputs(outputs, cluster).numpy()
    if outputs.semantic is not None:
        res.semantic = outputs.semantic[0].argmax(0).cpu().numpy().astype(np.int32)
    return res


def _plain(model: nn.Module, x: torch.Tensor, origin: torch.Tensor) -> Outputs:
    return model(x, coords_origin=origin)


def _tta(model: nn.Module, x: torch.Tensor, origin: torch.Tensor) -> Outputs:
    return tta_forward(model, x, origin)


class Predictor:
    """Model + post-processing + inference options; ``predictor(image) -> Instances`` (numpy).

    ``image`` (C, H, W) float32 numpy array or tensor, normalised like the training data.

    Images up to ``AUTO_BLOCK_SIDE`` pixels a side run whole; larger ones, and every image when
    ``tile`` is given, are segmented block by block (:mod:`instembed.engine.blockwise`):
    ``tile`` is the block (core) size, ``halo`` the margin each block is clustered with (at least
    the radius of the largest object), ``overlap`` twice the network context around each region
    (default: the model's receptive field). Memory then grows with the block, not the image.
    ``outputs(image)`` still gives the whole image's network outputs (tiled and stitched when
    ``tile`` is given).

    ``scale`` (> 0, default 1) resizes the image by that factor before the network (bilinear,
    antialiased when shrinking), for objects of another size than the model was trained on (0.5
    when they are twice as large); everything above then works on the resized image, and the
    instances come back at the input size (:func:`rescale_instances`: labels, masks and the
    semantic map by nearest neighbour, boxes scaled, scores and classes unchanged).
    ``outputs(image)`` is not resized. ``scale="auto"`` picks the factor per image from the
    size of the objects found at scale 1 and the training sizes in ``cfg.data.object_diameter``
    (:func:`instembed.data.sizes.auto_search`: shrunk only when the objects are far larger
    than the training sizes, step by step while they still come out too large, and a shrunk
    result kept only when its objects come out closer to the training median; the measured
    size never enlarges, a size model may); ``diameter`` (pixels, the objects' typical size)
    sets ``scale`` to the training median over ``diameter``
    (:func:`instembed.data.sizes.diameter_scale`). The factor used is in ``meta["scale"]``;
    with auto, the size of the objects of its first pass (in the image's pixels) in
    ``meta["measured_diameter"]``, every pass's ``(factor, size in the resized image)`` in
    ``meta["auto_trail"]`` and, when the model carries a size model
    (:mod:`instembed.engine.size_model`, which then sets the first pass's factor), its
    predicted diameter in ``meta["predicted_diameter"]`` (NaN without one).
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: Config,
        *,
        device: str | torch.device = "cpu",
        tile: int | None = None,
        overlap: int | None = None,
        tta: bool = False,
        batch: int = 1,
        cluster: ClusterConfig | None = None,
        halo: int | None = None,
        scale: float | str = 1.0,
        diameter: float | None = None,
    ) -> None:
        self.scale = check_scale(scale)
        self.sizes = getattr(cfg.data, "object_diameter", None)
        if diameter is not None:  # replaces a scale left at 1 or "auto", not a chosen one
            if self.scale not in (1.0, AUTO):
                raise ValueError(f"give scale or diameter, not both (scale {scale!r})")
            self.scale = diameter_scale(diameter, self.sizes)
        self.model = model.to(device).eval()
        self.cfg = cfg
        self.cluster = cluster or cfg.cluster
        self.device = torch.device(device)
        self.tile, self.overlap, self.tta, self.batch = tile, overlap, tta, max(1, batch)
        self.halo = DEFAULT_HALO if halo is None else int(halo)
        self.in_channels = int(getattr(model, "in_channels", cfg.model.in_channels))

    @classmethod
    def from_spec(cls, spec: str | Path, device: str | torch.device = "cpu", **kw) -> Predictor:
        model, cfg = load_model(spec, device)
        return cls(model, cfg, device=device, **kw)

    def read(self, path, channel: int | None = None) -> np.ndarray:
        """Image file ``path`` as (C, H, W) float32, read as the model's training data were:
        its input normalisation and ``min_range`` (``data.reader_params``), its channel count
        (``channel`` picks one channel of a colour file for a 1-channel model)."""
        from instembed.data.io import load_image
        from instembed.data.normalize import model_normalization

        normalize, min_range = model_normalization(self.cfg.data.reader_params)
        image, _ = load_image(
            path, normalize, channels=self.in_channels, channel=channel, min_range=min_range
        )
        return image

    @torch.no_grad()
    def outputs(self, image) -> Outputs:
        """Network outputs (batch dim 1, on CPU, float32) for one image (C, H, W)."""
        x = self._tensor(image)
        out = infer(
            self.model, x, tile=self.tile, overlap=self.overlap, tta=self.tta, batch=self.batch
        )
        return out.map(lambda t: t.float().cpu())

    def _tensor(self, image) -> torch.Tensor:
        x = torch.as_tensor(
            np.ascontiguousarray(image, np.float32)
            if not isinstance(image, torch.Tensor)
            else image
        )
        if x.ndim != 3 or x.shape[0] != self.in_channels:
            raise ValueError(
                f"image must be ({self.in_channels}, H, W) for this model, got shape {tuple(x.shape)}"
            )
        return x.to(self.device, torch.float32)

    def __call__(self, image, progress=None) -> Instances:
        """Instances of one image; ``progress(done, total)`` is called after each block (when
        the image, resized by ``scale``, is segmented block by block)."""
        if self.scale == AUTO:

            def segment(factor: float):
                if factor == 1.0:
                    pred = self._segment(image, progress)
                else:
                    pred = self._resized(image, factor, progress)
                # measured in the resized image: the size the network saw
                return pred, image_diameter(pred.masks_or_labels) * factor

            predicted, start = float("nan"), 1.0
            size_model = getattr(self.model, "size_model", None)
            if size_model is not None and self.sizes is not None:
                # through _tensor: a wrong channel count is refused with its message first
                predicted = size_model.diameter(self.model, self._tensor(image))
                start = start_scale(predicted, self.sizes)
            pred, factor, trail = auto_search(segment, self.sizes, start=start)
            if len(trail) > 1 or start != 1.0:
                log.info(
                    "training median %s px, size model %.1f px; objects measured at each "
                    "factor: %s; kept %.3g",
                    self.sizes[1],
                    predicted,
                    ", ".join(f"{f:.3g}: {d:.1f} px" for f, d in trail),
                    factor,
                )
            pred.meta.update(
                scale=factor,
                measured_diameter=trail[0][1] / trail[0][0],  # first pass, image pixels
                predicted_diameter=predicted,
                auto_trail=trail,
            )
            return pred
        if self.scale == 1.0:
            return self._segment(image, progress)
        return self._resized(image, self.scale, progress)

    def _resized(self, image, factor: float, progress=None) -> Instances:
        x = self._tensor(image)
        size = (int(x.shape[-2]), int(x.shape[-1]))
        small = resize_image(x, scaled_size(size, factor))
        pred = rescale_instances(self._segment(small, progress), size)
        pred.meta["scale"] = factor
        return pred

    def will_block(self, image) -> bool:
        """Whether ``self(image)`` segments the image block by block (its size after ``scale``
        above ``AUTO_BLOCK_SIDE``, or ``tile`` given)."""
        size = (int(image.shape[-2]), int(image.shape[-1]))
        if self.scale not in (1.0, AUTO):  # auto: decided by the first pass, at scale 1
            size = scaled_size(size, self.scale)
        return auto_block(size, self.tile) is not None

    def _segment(self, image, progress=None) -> Instances:
        import time

        t0 = time.perf_counter()
        size = tuple(int(v) for v in image.shape[-2:])
        block = auto_block(size, self.tile)
        if block is None:
            out = self.outputs(image)
            t1 = time.perf_counter()
            pred = instances_from_outputs(out, self.cluster)
            pred.meta["timing"] = {"network_s": t1 - t0, "cluster_s": time.perf_counter() - t1}
            return pred
        facts = model_facts(self.model)
        overlap = default_overlap(self.model) if self.overlap is None else int(self.overlap)
        forward = _tta if self.tta else _plain
        regions = network_regions(
            self.model, self._tensor(image), forward, overlap // 2, facts["size_divisor"]
        )
        pred = segment_blockwise(
            regions,
            size,
            lambda out: instances_from_outputs(out, self.cluster),
            block=block,
            halo=self.halo,
            progress=progress,
        )
        pred.meta["timing"] = {"total_s": time.perf_counter() - t0}
        pred.meta["blocks"] = n_blocks(size, block)
        return pred


# --------------------------------------------------------------------------- scale
AUTO = "auto"


def check_scale(scale) -> float | str:
    """``scale`` as a float, or ``"auto"``; ValueError unless it is ``"auto"`` or a finite
    number > 0."""
    import math

    if isinstance(scale, str) and scale.strip().lower() == AUTO:
        return AUTO
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"scale must be a number > 0 or 'auto', got {scale!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"scale must be a number > 0 or 'auto', got {scale!r}")
    return value


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """(H, W) of an image of ``size`` resized by ``scale`` (rounded, at least 1 pixel)."""
    return tuple(max(1, int(round(v * scale))) for v in size)  # type: ignore[return-value]


def resize_image(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, H, W) float image resized to ``size`` (bilinear; antialiased when shrinking)."""
    import torch.nn.functional as F

    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(
        x[None], size=tuple(size), mode="bilinear", align_corners=False, antialias=shrink
    )[0]


def _nearest_index(n_out: int, n_in: int) -> np.ndarray:
    """Source index of each of ``n_out`` pixels resampled from ``n_in`` (pixel centres)."""
    return np.minimum(((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64), n_in - 1)


def rescale_instances(pred: Instances, size: tuple[int, int]) -> Instances:
    """Numpy :class:`Instances` of a resized image brought back to ``size`` (H, W): labels,
    masks and the semantic map by nearest neighbour, boxes scaled; scores, classes and
    centres unchanged. Instances that vanish (shrinking by nearest neighbour can lose one
    pixel wide objects) are dropped, the others renumbered 1..N in order."""
    pred = pred.numpy()
    h0, w0 = pred.labels.shape
    h, w = int(size[0]), int(size[1])
    rows, cols = _nearest_index(h, h0), _nearest_index(w, w0)
    labels = pred.labels[rows][:, cols]
    masks = None if pred.masks is None else pred.masks[:, rows][:, :, cols]
    semantic = None if pred.semantic is None else np.asarray(pred.semantic)[rows][:, cols]
    boxes = None
    if pred.boxes is not None:
        boxes = np.asarray(pred.boxes, np.float32) * np.array(
            [w / w0, h / h0, w / w0, h / h0], np.float32
        )
    out = Instances(
        labels=labels,
        scores=pred.scores,
        classes=pred.classes,
        centers=pred.centers,
        masks=masks,
        boxes=boxes,
        semantic=semantic,
        meta=dict(pred.meta),
    )
    n = len(out)
    if masks is not None:
        present = masks.reshape(n, masks.shape[1] * masks.shape[2]).any(1)  # n may be 0
    else:
        present = np.zeros(n + 1, bool)
        present[np.unique(labels)] = True
        present = present[1:]
    if not present.all():
        out = out[np.flatnonzero(present)]
    return out


# --------------------------------------------------------------------------- inputs / outputs
def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files from files and folders (non-recursive, sorted); also (input, problem) pairs
    for inputs that do not exist or hold no images. In folders, hidden files (names starting
    with ``.``: macOS ``._*`` AppleDouble files, ``.DS_Store``) are skipped; a file named
    explicitly is kept."""
    from instembed.data.io import IMAGE_SUFFIXES, image_files

    files: list[Path] = []
    bad: list[tuple[str, str]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = image_files(p)
            if not found:
                bad.append((item, f"folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"))
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            bad.append((item, "no such file or folder"))
    return files, bad


@dataclass
class WriteOptions:
    labels_format: str = "tif"  # "tif" | "png"
    overlay: bool = True
    coco: Path | None = None  # COCO results json for all images
    panoptic: Path | None = None  # folder for panoptic PNGs + panoptic.json


def write_prediction(
    out_dir: Path, stem: str, image: np.ndarray, pred: Instances, opts: WriteOptions
) -> list[Path]:
    """Write the per-image files of one prediction; returns the paths written. ``stem`` may be
    a relative path (``plate1/A01``, see :mod:`instembed.engine.outputs`)."""
    from instembed.data.io import write_labels
    from instembed.engine import writers as W

    (out_dir / stem).parent.mkdir(parents=True, exist_ok=True)
    if pred.masks is not None and opts.labels_format != "tif":
        raise ValueError(
            f"{stem}: overlapping masks (cluster overlap_thresh) are written as a (N, H, W) "
            f"mask-stack TIFF; got labels format {opts.labels_format!r}, use 'tif'"
        )
    written = [write_labels(out_dir / f"{stem}.{opts.labels_format}", pred.masks_or_labels)]
    recs = W.instance_records(pred.masks_or_labels, pred.scores, pred.classes)
    h, w = pred.labels.shape
    table: dict = {"image": stem, "height": h, "width": w}
    # the factor used (--scale S / auto / --diameter); with auto, the sizes it went by
    for key in ("scale", "measured_diameter", "predicted_diameter"):
        if key in pred.meta:
            value = float(pred.meta[key])
            table[key] = value if np.isfinite(value) else None
    if "auto_trail" in pred.meta:  # auto: each pass's factor and object size there
        table["auto_trail"] = [
            {"scale": float(f), "diameter": float(d) if np.isfinite(d) else None}
            for f, d in pred.meta["auto_trail"]
        ]
    table["instances"] = recs
    written.append(W.write_json(out_dir / f"{stem}.json", table))
    if opts.overlay:
        written.append(W.write_overlay(out_dir / f"{stem}_overlay.png", image, pred.labels))
    return written

"""The napari plugin's logic without Qt: what a model is, how an Image layer becomes frames for
:func:`instembed.segment`, whether it fits in memory, and how results become layer data.

Everything here works on NumPy arrays and plain objects, so it is tested without a viewer; the
widget (:mod:`instembed.napari._widget`) only wires it to napari.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PRETRAINED = Path(__file__).resolve().parents[1] / "pretrained"

#: memory kept free for the network, the blocks and napari itself when checking a run's size
OVERHEAD_BYTES = 1 << 30

#: dense outputs shown as layers, in this order
DENSE_NAMES = ("seed", "sigma", "embedding")

#: embedding dimensions shown as image layers (the first ones)
EMBEDDING_DIMS = 2


class InputError(ValueError):
    """The layer or the settings cannot be segmented (a one-line message for the user)."""


class Cancelled(Exception):
    """Raised by the progress callback to stop :func:`instembed.segment` mid-image."""


# --------------------------------------------------------------------------- models
def shipped_models(folder: Path = PRETRAINED) -> list[str]:
    """Names of the shipped models (``<name>.pt`` with its ``<name>.json`` card), read from the
    folder as :func:`instembed.engine.predict.pretrained_names` does, without importing torch."""
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.pt") if p.with_suffix(".json").is_file())


@dataclass
class ModelInfo:
    """What the widget shows about a model: its input channels, normalisation and clusterer."""

    spec: str
    in_channels: int = 1
    normalize: str = "percentile"
    method: str = "seeded"
    params: dict = field(default_factory=dict)

    @property
    def overlapping(self) -> bool:
        """Whether the model's instances may overlap (a mask stack instead of a label image)."""
        return self.params.get("overlap_thresh") is not None

    @property
    def thresholds(self) -> dict:
        """The clusterer's numeric parameters (floats and ints, not bools): the widget's
        threshold fields, with the model's values as defaults."""
        return {
            k: v
            for k, v in self.params.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }


def _info_from_config(spec: str, cfg: dict) -> ModelInfo:
    data, model, cluster = cfg.get("data", {}), cfg.get("model", {}), cfg.get("cluster", {})
    reader = data.get("reader_params") or {}
    return ModelInfo(
        spec=spec,
        in_channels=int(model.get("in_channels", 1)),
        normalize=str(reader.get("normalize", "percentile")),
        method=str(cluster.get("method", "seeded")),
        params=dict(cluster.get("params") or {}),
    )


def model_info(spec: str | os.PathLike) -> ModelInfo:
    """:class:`ModelInfo` of a shipped model (read from its JSON card, no torch) or of a
    checkpoint / run folder (its stored config; imports torch). FileNotFoundError naming the
    shipped models for anything else."""
    spec = str(spec)
    card = PRETRAINED / f"{spec}.json"
    if not Path(spec).exists() and card.is_file() and card.with_suffix(".pt").is_file():
        return _info_from_config(spec, json.loads(card.read_text()).get("config", {}))
    import dataclasses

    from instembed.engine import checkpoint as ck
    from instembed.engine.config import config_from_yaml
    from instembed.engine.predict import resolve_model

    path = resolve_model(spec)
    cfg = config_from_yaml(ck.load_checkpoint(path, map_location="cpu")["config"])
    return _info_from_config(spec, dataclasses.asdict(cfg))


# --------------------------------------------------------------------------- input layers
@dataclass
class Plan:
    """How an Image layer is segmented: ``frames`` leading frame axes (0 = one image),
    ``shape`` of the result labels, ``rgb`` (channels last), ``notices`` to show the user."""

    data: object
    name: str
    stack: bool
    rgb: bool
    shape: tuple[int, ...]
    channels: int
    notices: list[str] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        return self.shape[0] if self.stack else 1

    def frame(self, i: int) -> np.ndarray:
        """Frame ``i`` as a NumPy array (a lazy layer -- dask, zarr -- is read one frame at a
        time)."""
        return np.asarray(self.data[i] if self.stack else self.data)


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def available_memory() -> int:
    """Bytes of memory available now (psutil when installed, else the OS page counts)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil comes with napari
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def plan_layer(
    data, *, name: str, rgb: bool, multiscale: bool, info: ModelInfo, channel: int | None
) -> Plan:
    """Check an Image layer's data and say how it is segmented; :class:`InputError` (one line
    naming the layer, what was expected and what it is) for data that cannot be.

    Accepted: a 2-D image, a 2-D RGB(A) image, a stack of 2-D frames (3-D, one result per
    frame; also a z-stack, slice by slice) and a stack of RGB frames; integer or float pixels.
    Multi-channel images for a 1-channel model are averaged to gray (or ``channel`` picked), as
    :func:`instembed.segment` does, with a notice.
    """
    if multiscale:
        data = data[0]
    shape = tuple(int(s) for s in data.shape)
    dtype = np.dtype(data.dtype)
    what = f"layer {name!r}"
    if dtype.kind not in "uif":
        raise InputError(
            f"{what}: expected integer or float pixels, got dtype {dtype} (shape {shape}); "
            "convert it first (e.g. a mask: astype uint8)"
        )
    spatial = len(shape) - (1 if rgb else 0)
    if spatial not in (2, 3):
        raise InputError(
            f"{what}: expected a 2-D image, an RGB image or a stack of 2-D frames (3-D), got "
            f"{spatial}-D data of shape {shape}; split channels or pick a time point first"
        )
    stack = spatial == 3
    hw = shape[-3:-1] if rgb else shape[-2:]
    if min(hw) < 4:
        raise InputError(f"{what}: expected frames of at least 4 x 4 pixels, got {shape}")
    channels = shape[-1] if rgb else 1
    plan = Plan(data, name, stack, rgb, (shape[0], *hw) if stack else hw, channels)
    if multiscale:
        plan.notices.append(f"{what} is multiscale: its full-resolution level is segmented")
    if rgb and info.in_channels == 1:
        how = "averaged" if channel is None else f"reduced to channel {channel}"
        plan.notices.append(
            f"{what} has {min(channels, 3)} colour channels; {how} to 1 gray channel for the "
            f"1-channel model {Path(info.spec).name!r}"
        )
    if rgb and channel is not None and channel >= min(channels, 3):
        raise InputError(
            f"{what}: channel {channel} asked for, the image has {min(channels, 3)} channels"
        )
    if stack and plan.n_frames > 1:
        plan.notices.append(f"{what}: {plan.n_frames} frames, segmented one by one")
    return plan


def check_memory(plan: Plan, info: ModelInfo, *, dense: bool, available: int | None = None):
    """:class:`InputError` with the sizes when segmenting ``plan`` would need more memory than
    is available. Large images are segmented block by block (their memory grows with the block,
    not the image), so what counts is the result (int32 labels for all frames), one frame's
    float32 input and -- for a lazy layer -- the frame read, and the dense layers if asked."""
    available = available_memory() if available is None else available
    h, w = plan.shape[-2:]
    frame_px, total_px = h * w, h * w * plan.n_frames
    need = total_px * 4 + frame_px * (4 * max(info.in_channels, plan.channels) + 16)
    if not isinstance(plan.data, np.ndarray):
        need += frame_px * plan.channels * np.dtype(plan.data.dtype).itemsize
    if dense:  # the stitched outputs of a frame (seed, sigma, embedding: <= 8 channels), kept
        need += frame_px * 4 * 8 + total_px * 4 * (2 + EMBEDDING_DIMS)
    if need + OVERHEAD_BYTES > available:
        raise InputError(
            f"layer {plan.name!r} of {'x'.join(map(str, plan.shape))} px needs about "
            f"{_gib(need + OVERHEAD_BYTES)} to segment{' with the dense layers' if dense else ''}"
            f", {_gib(available)} of memory is available; crop or downsample it, or run "
            "`instembed predict --tile 512` on the file"
        )


# --------------------------------------------------------------------------- results
def overlap_levels(masks: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray:
    """``(L, H, W)`` int32 label images holding the ``(N, H, W)`` masks without overlaps: masks
    are placed by decreasing score (the order :func:`instembed.structures.masks_to_labels`
    paints them, highest on top) on the first level where they overlap nothing; mask ``k``
    keeps id ``k + 1``. At least one level."""
    masks = np.asarray(masks, bool)
    n, hw = masks.shape[0], masks.shape[1:]
    order = np.argsort(-np.asarray(scores), kind="stable") if scores is not None else range(n)
    levels: list[np.ndarray] = []
    for k in order:
        m = masks[k]
        for level in levels:
            if not level[m].any():
                level[m] = k + 1
                break
        else:
            level = np.zeros(hw, np.int32)
            level[m] = k + 1
            levels.append(level)
    return np.stack(levels) if levels else np.zeros((1, *hw), np.int32)


def mask_stack_view(masks: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` int32 with mask ``k`` painted ``k + 1`` (one instance per slice: napari's
    slider walks through the instances); ``(1, H, W)`` zeros for no instance."""
    masks = np.asarray(masks, bool)
    if masks.shape[0] == 0:
        return np.zeros((1, *masks.shape[1:]), np.int32)
    ids = np.arange(1, masks.shape[0] + 1, dtype=np.int32).reshape(-1, 1, 1)
    return np.where(masks, ids, 0).astype(np.int32)


def features_table(scores, classes, n: int) -> dict:
    """napari Labels ``features``: one row per label value 0..n (row 0 the background) with
    ``index``, ``score`` and, when the model has classes, ``class``."""
    feats = {
        "index": np.arange(n + 1),
        "score": np.concatenate([[np.nan], np.asarray(scores, np.float64)[:n]]),
    }
    if classes is not None:
        feats["class"] = np.concatenate([[-1], np.asarray(classes, np.int64)[:n]])
    return feats


def dense_outputs(
    frame: np.ndarray,
    model,
    *,
    device=None,
    normalize: str = "auto",
    channel: int | None = None,
    tile: int | None = None,
    tta: bool = False,
) -> dict[str, np.ndarray]:
    """The model's dense outputs for one frame, for display: ``seed`` ``(H, W)``, ``sigma``
    ``(H, W)`` (mean over its channels) and ``embedding`` ``(D, H, W)`` (its first
    :data:`EMBEDDING_DIMS` dimensions), those the model has.

    Uses :func:`instembed.segment`'s own preparation and cached model (the same channel
    handling and normalisation) and the engine's :meth:`Predictor.outputs` -- the network pass
    ``segment`` makes, kept whole instead of clustered.
    """
    from instembed import api
    from instembed.engine.blockwise import AUTO_BLOCK_SIDE, DEFAULT_BLOCK
    from instembed.engine.distributed import resolve_device
    from instembed.engine.predict import Predictor

    dev = resolve_device("auto" if device is None else str(device), key="device")
    net, cfg = api._load(model, dev)
    if tile is None and max(frame.shape[:2] if frame.ndim == 3 else frame.shape) > AUTO_BLOCK_SIDE:
        tile = DEFAULT_BLOCK  # as segment: a large image goes through the network in tiles
    predictor = Predictor(net, cfg, device=dev, tile=tile, tta=bool(tta))
    from instembed.data.normalize import model_normalization

    mode, floor = model_normalization(cfg.data.reader_params)  # floor: the model's min_range
    mode = mode if normalize == "auto" else normalize
    _, layout = api.split_frames(frame.shape, predictor.in_channels, False, channel)
    chw = api._frame_chw(frame, layout)
    img = api._prepare(chw, mode, predictor.in_channels, channel, [1], floor)
    out = predictor.outputs(img)
    res = {}
    if out.seed is not None:
        res["seed"] = out.seed[0, 0].numpy()
    if out.sigma is not None:
        res["sigma"] = out.sigma[0].mean(0).numpy()
    if out.embedding is not None:
        res["embedding"] = out.embedding[0, :EMBEDDING_DIMS].numpy()
    return res


@dataclass
class Request:
    """One run of the widget: the layer plan and :func:`instembed.segment`'s arguments."""

    plan: Plan
    model: str
    kwargs: dict
    dense: tuple[str, ...] = ()


@dataclass
class Result:
    """What a run gives back: per frame the :class:`~instembed.structures.Instances` and the
    dense outputs asked for (else empty dicts)."""

    request: Request
    preds: list
    dense: list


def run_frames(request: Request, cancelled, report=None):
    """Segment the frames of ``request`` one by one with :func:`instembed.segment`; a
    generator (napari's ``thread_worker`` runs it off the GUI thread) yielding
    ``(frame, n_frames)`` after each frame and returning a :class:`Result`, or None when
    ``cancelled()`` became true (checked between frames and after each block).

    ``report(frame, n_frames, done, total)`` is called after each block of a frame segmented
    block by block.
    """
    from instembed import segment

    plan, n = request.plan, request.plan.n_frames
    preds, dense = [], []
    for i in range(n):
        if cancelled():
            return None

        def progress(done, total, i=i):
            if cancelled():
                raise Cancelled
            if report is not None:
                report(i, n, done, total)

        frame = plan.frame(i)
        try:
            pred = segment(frame, request.model, frames=False, progress=progress, **request.kwargs)
        except Cancelled:
            return None
        maps = {}
        if request.dense:
            kw = {k: request.kwargs.get(k) for k in ("device", "normalize", "channel", "tile")}
            maps = dense_outputs(frame, request.model, tta=request.kwargs.get("tta", False), **kw)
            maps = {k: v for k, v in maps.items() if k in request.dense}
        preds.append(pred)
        dense.append(maps)
        log.info(
            "instembed napari: %s frame %d/%d: %d instances",
            plan.name,
            i + 1,
            n,
            pred.num_instances,
        )
        yield i + 1, n
    return Result(request, preds, dense)


def stack_frames(arrays: list[np.ndarray], stack: bool) -> np.ndarray:
    """One frame's array, or the frames stacked on a new first axis (padded with zeros to the
    largest shape when they differ, e.g. a different number of overlap levels)."""
    if not stack:
        return arrays[0]
    shapes = {a.shape for a in arrays}
    if len(shapes) == 1:
        return np.stack(arrays)
    big = tuple(max(s[d] for s in shapes) for d in range(arrays[0].ndim))
    out = np.zeros((len(arrays), *big), arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[(i, *(slice(0, s) for s in a.shape))] = a
    return out

"""Segmentation of an image larger than memory, block by block, as Dask tasks, into zarr.

:func:`segment_to_zarr` segments one huge image (zarr / OME-Zarr, a TIFF read lazily, a dask or
NumPy array; :func:`instembed.data.lazy.open_lazy`) into a zarr label array
(:mod:`instembed.engine.zarr_io`), with the block grid, anchor rule and network windows of
:mod:`instembed.engine.blockwise`, in three steps of tasks:

1. **statistics** (percentile normalisations only): one task per core returns a histogram / a
   grid sample of its pixels; the driver merges them into the whole image's normalisation
   (:class:`~instembed.data.lazy.GlobalNorm`), recorded in the output;
2. **blocks**: one task per block reads the network window around its region, normalises it,
   runs the network, clusters the region, keeps the instances whose anchor lies in its core
   (:func:`~instembed.engine.blockwise.keep_block`) and writes them, with block-local ids, to
   its own work file;
3. **assembly**: one task per core fills that core of ``OUT/labels`` from the work files of the
   blocks whose regions overlap it, with global ids (the first claim wins, as in
   :func:`~instembed.engine.blockwise.segment_blockwise`: the result equals the in-memory
   block-wise segmentation); ids left unused are closed up by a last pass, so ids are 1..N.

Each object is kept, whole, by one block -- the one whose core holds its anchor -- as StarDist's
big-image mode keeps each object in one block (Weigert et al. 2020, ``predict_instances_big``);
its pixels in the neighbouring cores come from that block's region, so an object across a
block border gets one id. The blocks run as Dask tasks on a given cluster, as in Cellpose's
distributed mode. Memory: a task holds one block (region, network window, outputs); the driver
holds per-block counts and the instance table (N scores and anchors), never an image-sized
array.

Where tasks run, how the model reaches the workers, how failures are reported:
:mod:`instembed.engine.dask_run`. A stopped or failed run is continued by calling again with the
same settings: finished blocks (their work files) are skipped, and a finished output is
returned as it is.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from instembed.engine import zarr_io as Z
from instembed.engine.blockwise import DEFAULT_HALO, Block, block_grid, warn_cut
from instembed.engine.dask_run import (
    ModelSpec,
    Runner,
    TaskFailed,
    dask_client,
    model_identity,
    progress_callback,
    raise_failed,
)

log = logging.getLogger(__name__)

DEFAULT_BLOCK = 2048


# --------------------------------------------------------------------------- tasks
def _stats_task(lazy, y0: int, y1: int, x0: int, x1: int, stride: int) -> dict:
    from instembed.data.lazy import window_stats

    try:
        return window_stats(lazy, y0, y1, x0, x1, stride)
    except Exception as err:
        raise TaskFailed(
            f"{lazy.name}: statistics of rows {y0}:{y1}, columns {x0}:{x1}: "
            f"{type(err).__name__}: {err}"
        ) from None


def _block_task(spec, lazy, norm, out: str, i: int, b: Block, geometry: dict) -> dict:
    """Segment block ``i`` and write its work file (step 2)."""
    import torch

    from instembed.engine.blockwise import keep_block, region_outputs, window_for
    from instembed.engine.predict import _plain, _tta, instances_from_outputs

    t0 = time.perf_counter()
    size = tuple(geometry["size"])
    try:
        pred = spec.predictor()
        region = (b.ry0, b.ry1, b.rx0, b.rx1)
        wy0, wy1, wx0, wx1 = window_for(region, size, geometry["context"], geometry["divisor"])
        raw = lazy.read(wy0, wy1, wx0, wx1)
        img = norm.prepare(raw, pred.in_channels, geometry["channel"], lazy.name)
        x = torch.from_numpy(img).to(pred.device)
        forward = _tta if pred.tta else _plain
        outputs = region_outputs(pred.model, x, (wy0, wx0), region, forward)
        kept = keep_block(instances_from_outputs(outputs, pred.cluster), b, size)
        Z.save_block(out, i, kept)
    except Exception as err:
        log.exception("%s: block %d failed", lazy.name, i)
        raise TaskFailed(
            f"{lazy.name}: block {i} (rows {b.cy0}:{b.cy1}, columns {b.cx0}:{b.cx1}): "
            f"{type(err).__name__}: {err}"
        ) from None
    return {
        "instances": len(kept),
        "seconds": time.perf_counter() - t0,
        "pid": os.getpid(),
        "loads": spec.loads(),
    }


def _assemble_task(out: str, size, block: int, halo: int, i: int, bases, missing, name: str):
    try:
        return Z.assemble_core(out, size, block, halo, i, bases, missing)
    except Exception as err:
        raise TaskFailed(f"{name}: core {i} of {out}: {type(err).__name__}: {err}") from None


# --------------------------------------------------------------------------- the run
@dataclass
class BlockRun:
    """What :func:`segment_to_zarr` did: ``out`` (the zarr group; the label array is
    ``out/labels``), ``instances`` in all, ``blocks`` in the grid, ``computed`` blocks segmented
    by this call and ``resumed`` ones found finished, ``cut`` (kept instances touching an inner
    edge of their region: :func:`~instembed.engine.blockwise.warn_cut`), ``seconds``, and
    ``loads`` (process id -> times the model was built there, for the blocks computed)."""

    out: Path
    instances: int
    blocks: int
    computed: int = 0
    resumed: int = 0
    cut: int = 0
    seconds: float = 0.0
    loads: dict = field(default_factory=dict)

    @property
    def labels(self) -> str:
        return str(self.out / Z.LABELS)


def _resolve(model, cluster, device: str):
    """(ModelSpec, network, config) of ``model``, with its clusterer checked."""
    from instembed.engine.config import check_cluster
    from instembed.engine.predict import Predictor, load_model

    if isinstance(model, Predictor):
        net, cfg = model.model, model.cfg
        spec = ModelSpec(net, cfg, device=str(model.device), tta=model.tta, overlap=model.overlap)
        base = cluster or model.cluster
    elif isinstance(model, (str, os.PathLike)):
        net, cfg = load_model(model, "cpu")
        spec = ModelSpec(str(model), device=device)
        base = cluster or cfg.cluster
    else:
        raise TypeError(
            "model: expected a checkpoint path, run folder or shipped model name, or a "
            f"Predictor, got {type(model).__name__}"
        )
    spec.cluster = check_cluster(base, require=True, key="cluster")
    return spec, net, cfg


def _norm(meta: dict, mode: str, out: Path, lazy, blocks, runner, report, min_range=0.0):
    """The image's :class:`~instembed.data.lazy.GlobalNorm`: the one recorded in ``out``, or
    computed from per-core statistics (step 1) and recorded (``min_range``: the floor on the
    percentile range; recorded too, 0 when a record from before it has none)."""
    from instembed.data.lazy import GlobalNorm, StatsAccumulator, sample_stride

    rec = meta.get("norm")
    if rec is not None:

        def arr(v):
            return None if v is None else np.asarray(v, rec["dtype"])[:, None, None]

        lo, hi, mr = arr(rec["lo"]), arr(rec["hi"]), rec.get("min_range", 0.0)
        return GlobalNorm(rec["mode"], lo, hi, rec["invert"], min_range=mr)
    if mode in ("range", "none"):
        norm = GlobalNorm(mode, min_range=min_range)
    else:
        acc = StatsAccumulator()
        stride = sample_stride(lazy.height, lazy.width)
        shared = runner.share(lazy)
        jobs = {i: (shared, b.cy0, b.cy1, b.cx0, b.cx1, stride) for i, b in enumerate(blocks)}
        failed = runner.run(_stats_task, jobs, "statistics", lambda k, r: acc.add(r), report)
        if failed:
            raise_failed(lazy.name, "statistics block", failed, len(blocks), out)
        norm = acc.norm(mode, min_range=min_range)
    flat = lambda a: None if a is None else a.ravel().tolist()  # noqa: E731
    Z.update_attrs(
        out,
        norm={
            "mode": norm.mode,
            "lo": flat(norm.lo),
            "hi": flat(norm.hi),
            "invert": norm.invert,
            "min_range": norm.min_range,
            "dtype": "float64" if norm.lo is None else str(norm.lo.dtype),
        },
    )
    return norm


def _check_args(block, halo, channel) -> None:
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 16:
        raise ValueError(f"block: expected an int >= 16 pixels, got {block!r}")
    if isinstance(halo, bool) or not isinstance(halo, (int, np.integer)) or halo < 0:
        raise ValueError(f"halo: expected an int >= 0 pixels, got {halo!r}")
    if channel is not None and (isinstance(channel, bool) or not isinstance(channel, int)):
        raise ValueError(f"channel: expected an int >= 0 or None, got {channel!r}")


def segment_to_zarr(
    image,
    model,
    out: str | os.PathLike,
    *,
    block: int = DEFAULT_BLOCK,
    halo: int = DEFAULT_HALO,
    overlap: int | None = None,
    tta: bool | None = None,
    cluster=None,
    normalize: str = "auto",
    min_range: float | None = None,
    channel: int | None = None,
    axes: str | None = None,
    device: str = "auto",
    scheduler=None,
    workers: int | None = None,
    threads: int | None = None,
    progress: bool | Callable[[str, int, int], None] | None = None,
    overwrite: bool = False,
    keep_work: bool = False,
) -> BlockRun:
    """Segment ``image`` block by block into the zarr group ``out`` (module docstring).

    Args:
        image: a zarr / OME-Zarr / TIFF path, a ``zarr.Array``, a dask or NumPy array
            (:func:`~instembed.data.lazy.open_lazy`; ``axes`` overrides its axes).
        model: a checkpoint, run folder or shipped model name (each worker loads it), or a
            :class:`~instembed.engine.predict.Predictor` (its network, config, clusterer, TTA,
            overlap and device; the network is sent to each worker once).
        out: the output folder (a zarr group; ``out/labels`` is the label array).
        block, halo: core size, and the margin each block is clustered with (at least the
            radius of the largest object). overlap: twice the network context around each
            region (default: the model's receptive field). tta: test-time augmentation.
        cluster: a :class:`~instembed.engine.config.ClusterConfig` replacing the model's.
        normalize: ``"auto"`` (the model's, from its config) or one of
            :data:`~instembed.data.normalize.NORMALIZATIONS`, computed on the whole image.
        min_range: floor on the percentile range (raw intensity units); ``None``: the model's
            (``data.reader_params.min_range``, 0 when absent).
        channel: use this channel of a multi-channel image (default: average to gray for a
            1-channel model, as ``predict``). device: for a model given by name or path.
        scheduler, workers: where the tasks run (:mod:`instembed.engine.dask_run`); threads:
            torch threads per worker (default 1 on a local cluster started here).
        progress: True for tqdm bars on stderr, or ``fn(phase, done, total)``.
        overwrite: delete an existing ``out`` first (otherwise a run with the same settings is
            continued and one with other settings refused). keep_work: keep ``out/_blocks``.

    Returns:
        :class:`BlockRun`. Raises :class:`~instembed.engine.dask_run.BlockwiseError` when
        blocks fail (after the others finished), :class:`~instembed.engine.zarr_io.
        OutputMismatch` when ``out`` holds another run.
    """
    from instembed.data.lazy import open_lazy
    from instembed.data.normalize import check_min_range, model_normalization
    from instembed.engine.inference import default_overlap, model_facts

    t_start = time.perf_counter()
    _check_args(block, halo, channel)
    block, halo = int(block), int(halo)
    spec, net, cfg = _resolve(model, cluster, device)
    spec.tta = spec.tta if tta is None else bool(tta)
    spec.overlap = spec.overlap if overlap is None else int(overlap)
    lazy = open_lazy(image, axes=axes)
    h, w = lazy.height, lazy.width
    if channel is not None and not 0 <= channel < lazy.channels:
        raise ValueError(
            f"{lazy.name}: channel {channel} asked for, but the image has {lazy.channels} "
            f"channel(s) (0..{lazy.channels - 1})"
        )
    if spec.cluster.params.get("overlap_thresh") is not None:
        log.warning("overlapping masks are written as one label image (first claim wins)")
    in_channels = int(getattr(net, "in_channels", cfg.model.in_channels))
    if lazy.channels > 1 and in_channels == 1 and channel is None:
        log.warning(
            "%s: the %d image channels are averaged to 1 gray channel for a 1-channel model; "
            "to use one channel instead pass channel=C (predict: --channel C)",
            lazy.name,
            lazy.channels,
        )
    context = (default_overlap(net) if spec.overlap is None else spec.overlap) // 2
    divisor = model_facts(net)["size_divisor"]
    mode, model_min_range = model_normalization(cfg.data.reader_params)
    mode = mode if normalize == "auto" else normalize
    min_range = model_min_range if min_range is None else check_min_range(min_range)
    settings = {
        "input": str(Path(lazy.where).resolve()) if lazy.kind != "array" else lazy.name,
        "shape": [h, w],
        "dtype": str(lazy.dtype),
        "block": block,
        "halo": halo,
        "context": int(context),
        "tta": spec.tta,
        "model": model_identity(spec.model if isinstance(spec.model, str) else net),
        "cluster": {"method": spec.cluster.method, "params": dict(spec.cluster.params)},
        "normalize": mode,
        "channel": channel,
    }
    if min_range:  # recorded only when set: outputs of earlier versions stay resumable
        settings["min_range"] = min_range
    out = Path(out)
    meta = Z.open_output(out, (h, w), block, settings, overwrite=overwrite)
    blocks = block_grid(h, w, block, halo)
    if meta.get("complete"):
        summary = meta["summary"]
        log.info("%s: already complete (%d instances)", out, summary["instances"])
        return BlockRun(out, summary["instances"], len(blocks), resumed=len(blocks),
                        cut=summary["cut"], seconds=time.perf_counter() - t_start)  # fmt: skip
    report = progress_callback(progress)
    spec.threads = threads if threads is not None else (1 if scheduler is None else None)
    geometry = {"size": [h, w], "context": int(context), "divisor": divisor, "channel": channel}
    run = BlockRun(out, 0, len(blocks))
    with dask_client(scheduler, workers) as client:
        runner = Runner(client)
        norm = _norm(meta, mode, out, lazy, blocks, runner, report, min_range)
        done = Z.finished_blocks(out, len(blocks))
        todo = {i: b for i, b in enumerate(blocks) if i not in done}
        run.resumed, run.computed = len(done), len(todo)
        shared = [runner.share(x) for x in (spec, lazy, norm)]
        jobs = {i: (*shared, str(out), i, b, geometry) for i, b in todo.items()}

        def got(i, res):
            run.loads[res["pid"]] = max(run.loads.get(res["pid"], 0), res["loads"])

        failed = runner.run(_block_task, jobs, "blocks", got, report)
        written = Z.finished_blocks(out, len(blocks), among=failed)  # result lost, file written
        failed = {i: e for i, e in failed.items() if i not in written}
        if failed:
            raise_failed(
                lazy.name,
                "block",
                failed,
                len(blocks),
                out / Z.WORK,
                lambda i: (
                    f" (rows {blocks[i].cy0}:{blocks[i].cy1}, "
                    f"columns {blocks[i].cx0}:{blocks[i].cx1})"
                ),
            )
        metas = [Z.block_meta(out, i) for i in range(len(blocks))]
        missing = _assemble(out, lazy.name, (h, w), block, halo, blocks, metas, runner, report)
    run.instances = Z.write_table(out, metas, missing)
    run.cut = sum(m["cut"] for m in metas)
    Z.update_attrs(
        out, complete=True, summary={"instances": run.instances, "blocks": len(blocks),
                                     "cut": run.cut}
    )  # fmt: skip
    if not keep_work:
        Z.remove_work(out)
    warn_cut(run.cut, halo)
    run.seconds = time.perf_counter() - t_start
    return run


def _assemble(out: Path, name: str, size, block, halo, blocks, metas, runner, report):
    """Step 3: every core not yet assembled, then the cores holding ids above an unused one
    again with the ids closed up; returns the unused ids (sorted)."""
    h, w = size
    counts = np.array([len(m["scores"]) for m in metas], np.int64)
    bases = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    ny, nx = -(-h // block), -(-w // block)

    def run(cores, missing, what):
        jobs = {}
        for i in cores:
            near = {j: int(bases[j]) for j in Z.neighbours(blocks, ny, nx, i, block, halo)}
            jobs[i] = (str(out), (h, w), block, halo, i, near, missing, name)
        ids: dict = {}
        failed = runner.run(_assemble_task, jobs, what, ids.__setitem__, report)
        if failed:
            raise_failed(name, "core", failed, len(blocks), out / Z.WORK)
        return ids

    assembled = Z.assembled_cores(out, len(blocks))
    todo = [i for i in range(len(blocks)) if i not in assembled]
    assembled.update(run(todo, None, "assembly"))
    missing = Z.missing_ids(assembled, int(counts.sum()))
    if len(missing):
        log.info("%s: %d instance(s) hidden by earlier ones; ids closed up", out, len(missing))
        redo = [i for i, ids in assembled.items() if len(ids) and ids[-1] > missing[0]]
        run(redo, missing, "relabel")
    return missing

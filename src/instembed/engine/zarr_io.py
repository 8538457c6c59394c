"""The output of a block-wise run (:mod:`instembed.engine.dask_blocks`): a zarr group on disk,
written block by block, that a stopped run resumes.

Layout of ``OUT`` (a zarr v3 group; zarr-python 3)::

    OUT/labels        (H, W) uint32 label image, 0 = background, ids 1..N; chunks = the blocks'
                      cores, so each core is one chunk and has one writer
    OUT/scores        (N,) float32 score of instance k + 1
    OUT/anchors       (N, 2) int64 (y, x) anchor (floor of the mean pixel position)
    OUT/classes       (N,) int64, only for models with classes
    OUT/_blocks/      work files while the run is not finished (deleted at the end unless kept):
        b000012.npz   block 12's kept instances drawn on its region (local ids 1..n), their
                      scores, classes, anchors; written atomically (temporary file + rename),
                      so an existing file is a finished block
        a000012.npy   the ids written into core 12 (a finished assembly)

``OUT.attrs["instembed"]`` records the settings the run was started with (image, shape, block,
halo, context, model, clusterer, normalisation); a run on an existing ``OUT`` continues it
only when they are the same, and ``complete`` once it is done.

Stitching (:func:`assemble_core`). Each object is kept by the one block whose core holds its
anchor, whole (its block's region reaches ``halo`` px beyond the core), and that block's file
holds its full mask, including the part lying in the neighbours' cores. A core is then filled
from the files of the blocks whose regions overlap it, in block (raster) order, a pixel keeping
the first instance that claims it, with block ``j``'s local ids shifted by ``base[j]`` (the
number of instances kept by the blocks before ``j``): exactly the label image of
:func:`instembed.engine.blockwise.segment_blockwise`, computed one core at a time. An instance
whose every pixel an earlier one claimed leaves its id unused; :func:`missing_ids` finds such
gaps and a final pass rewrites the cores with consecutive ids.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np

from instembed.engine.blockwise import Block, KeptBlock, block_grid, paste_first

log = logging.getLogger(__name__)

WORK = "_blocks"
LABELS = "labels"
ATTR = "instembed"


class OutputMismatch(ValueError):
    """An existing output was written by another run (other settings, or not instembed's)."""


# --------------------------------------------------------------------------- the group
def _differences(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def open_output(
    path: str | os.PathLike,
    size: tuple[int, int],
    block: int,
    settings: dict,
    overwrite: bool = False,
) -> dict:
    """Create ``path`` (the layout of the module docstring) or reopen the unfinished or finished
    run recorded there; returns its ``instembed`` attributes (``settings``, and ``complete``,
    ``norm``, ``summary`` once known).

    An existing ``path`` is continued when its recorded ``settings`` equal ``settings``; other
    settings, or a path that is not an instembed output, raise :class:`OutputMismatch` naming
    the differences -- unless ``overwrite``, which deletes it first.
    """
    import zarr

    path = Path(path)
    settings = json.loads(json.dumps(settings))  # as stored: lists, not tuples
    if path.exists():
        try:
            group = zarr.open_group(str(path), mode="r")
            meta = group.attrs.asdict().get(ATTR)
        except Exception:
            meta = None
        if overwrite:
            if meta is None and any(path.iterdir()):
                raise OutputMismatch(
                    f"{path}: exists and is not an instembed block-wise output; not deleting it "
                    "(choose another output path)"
                )
            shutil.rmtree(path)
        elif meta is None:
            raise OutputMismatch(
                f"{path}: exists and is not an instembed block-wise output; choose another "
                "output path"
            )
        else:
            diff = _differences(meta.get("settings", {}), settings)
            if diff:
                raise OutputMismatch(
                    f"{path}: holds a run started with other settings ({'; '.join(diff)}); "
                    "use the same settings to continue it, or overwrite it "
                    "(--overwrite / overwrite=True)"
                )
            return meta
    group = zarr.open_group(str(path), mode="w")
    group.create_array(
        LABELS, shape=size, chunks=(min(block, size[0]), min(block, size[1])), dtype="uint32"
    )
    meta = {"settings": settings, "complete": False}
    group.attrs[ATTR] = meta
    (path / WORK).mkdir()
    return meta


def update_attrs(path: str | os.PathLike, **items) -> dict:
    """Merge ``items`` into ``OUT.attrs["instembed"]`` (driver only: one writer)."""
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    meta = dict(group.attrs[ATTR])
    meta.update(json.loads(json.dumps(items)))
    group.attrs[ATTR] = meta
    return meta


# --------------------------------------------------------------------------- block files
def block_file(path: str | os.PathLike, i: int) -> Path:
    return Path(path) / WORK / f"b{i:06d}.npz"


def core_file(path: str | os.PathLike, i: int) -> Path:
    return Path(path) / WORK / f"a{i:06d}.npy"


def _atomic(target: Path, write) -> None:
    tmp = target.with_name(f"{target.stem}.{os.getpid()}.tmp{target.suffix}")
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_block(path: str | os.PathLike, i: int, kept: KeptBlock) -> None:
    """Write block ``i``'s kept instances (atomically: the file exists only when complete)."""
    arrays = {
        "labels": kept.labels.astype(np.int32, copy=False),
        "scores": kept.scores.astype(np.float32),
        "anchors": kept.anchors.astype(np.int64).reshape(-1, 2),
        "cut": np.int64(kept.cut),
    }
    if kept.classes is not None:
        arrays["classes"] = kept.classes.astype(np.int64)
    _atomic(block_file(path, i), lambda tmp: np.savez_compressed(tmp, **arrays))


def finished_blocks(path: str | os.PathLike, n: int, among=None) -> set[int]:
    """Indices (of ``range(n)``, or of ``among``) of the blocks whose file exists and is a
    readable archive."""
    done = set()
    for i in range(n) if among is None else among:
        f = block_file(path, i)
        if f.is_file() and zipfile.is_zipfile(f):
            done.add(i)
    return done


def block_meta(path: str | os.PathLike, i: int) -> dict:
    """``scores``, ``anchors``, ``classes`` (or None) and ``cut`` of block ``i`` (its labels are
    not decoded)."""
    with np.load(block_file(path, i)) as z:
        return {
            "scores": z["scores"],
            "anchors": z["anchors"],
            "classes": z["classes"] if "classes" in z.files else None,
            "cut": int(z["cut"]),
        }


def _block_labels(path: str | os.PathLike, i: int, b: Block) -> np.ndarray:
    f = block_file(path, i)
    try:
        with np.load(f) as z:
            labels = z["labels"]
    except Exception as err:
        raise OSError(f"{f}: unreadable block file ({err}); delete it and run again") from err
    if labels.shape != (b.ry1 - b.ry0, b.rx1 - b.rx0):
        raise OSError(f"{f}: labels of shape {labels.shape}, expected the region of block {i}")
    return labels


def neighbours(blocks: list[Block], ny: int, nx: int, i: int, block: int, halo: int) -> list[int]:
    """Indices (raster order) of the blocks whose region overlaps the core of block ``i``."""
    r = -(-halo // block)
    by, bx = divmod(i, nx)
    c = blocks[i]
    out = []
    for y in range(max(by - r, 0), min(by + r + 1, ny)):
        for x in range(max(bx - r, 0), min(bx + r + 1, nx)):
            n = blocks[y * nx + x]
            if n.ry0 < c.cy1 and n.ry1 > c.cy0 and n.rx0 < c.cx1 and n.rx1 > c.cx0:
                out.append(y * nx + x)
    return out


def assemble_core(
    path: str | os.PathLike,
    size: tuple[int, int],
    block: int,
    halo: int,
    i: int,
    bases: dict[int, int],
    missing: np.ndarray | None = None,
) -> np.ndarray:
    """Fill core ``i`` of ``OUT/labels`` from the block files (module docstring) and return the
    sorted ids written. ``bases[j]``: the id offset of each neighbour ``j``; ``missing``: sorted
    ids left unused, which the ids above them close up (new id = id - number of missing ids
    below it). Reads one neighbour file at a time (memory: one region and one core)."""
    import zarr

    h, w = size
    blocks = block_grid(h, w, block, halo)
    ny, nx = -(-h // block), -(-w // block)
    c = blocks[i]
    core = np.zeros((c.cy1 - c.cy0, c.cx1 - c.cx0), np.int64)
    for j in neighbours(blocks, ny, nx, i, block, halo):
        n = blocks[j]
        y0, y1 = max(n.ry0, c.cy0), min(n.ry1, c.cy1)
        x0, x1 = max(n.rx0, c.cx0), min(n.rx1, c.cx1)
        kept = _block_labels(path, j, n)[y0 - n.ry0 : y1 - n.ry0, x0 - n.rx0 : x1 - n.rx0]
        paste_first(core[y0 - c.cy0 : y1 - c.cy0, x0 - c.cx0 : x1 - c.cx0], kept, bases[j])
    if missing is not None and len(missing):
        fg = core > 0
        core[fg] -= np.searchsorted(missing, core[fg])
    arr = zarr.open_array(str(Path(path) / LABELS), mode="r+")
    arr[c.cy0 : c.cy1, c.cx0 : c.cx1] = core.astype(np.uint32)
    ids = np.unique(core[core > 0])
    if missing is None:
        _atomic(core_file(path, i), lambda tmp: np.save(tmp, ids))
    return ids


def assembled_cores(path: str | os.PathLike, n: int) -> dict[int, np.ndarray]:
    """The ids written into each assembled core (from its ``a*.npy`` file)."""
    out = {}
    for i in range(n):
        f = core_file(path, i)
        if f.is_file():
            try:
                out[i] = np.load(f)
            except (OSError, ValueError):
                continue
    return out


def missing_ids(core_ids: dict[int, np.ndarray], total: int) -> np.ndarray:
    """Sorted ids in 1..``total`` that no core holds (instances every pixel of which an earlier
    one claimed)."""
    present = np.zeros(total + 1, bool)
    for ids in core_ids.values():
        present[ids] = True
    return np.flatnonzero(~present[1:]) + 1


def write_table(path: str | os.PathLike, metas: list[dict], missing: np.ndarray) -> int:
    """Write ``scores``, ``anchors`` (and ``classes``) of the instances, in id order, without
    the ``missing`` ones; returns their number."""
    import zarr

    scores = np.concatenate([m["scores"] for m in metas]) if metas else np.zeros(0, np.float32)
    anchors = np.concatenate([m["anchors"] for m in metas]) if metas else np.zeros((0, 2), np.int64)
    has_classes = any(m["classes"] is not None for m in metas)
    classes = None
    if has_classes:
        classes = np.concatenate(
            [
                m["classes"] if m["classes"] is not None else np.zeros(len(m["scores"]), np.int64)
                for m in metas
            ]
        )
    keep = np.ones(len(scores), bool)
    keep[np.asarray(missing, np.int64) - 1] = False
    group = zarr.open_group(str(path), mode="r+")
    for name, values in (("scores", scores), ("anchors", anchors), ("classes", classes)):
        if values is None:
            continue
        values = values[keep]
        rows = max(1, min(len(values), 1 << 20))
        arr = group.create_array(
            name,
            shape=values.shape,
            dtype=values.dtype,
            chunks=(rows, *values.shape[1:]),
            overwrite=True,
        )
        if len(values):
            arr[...] = values
    return int(keep.sum())


def remove_work(path: str | os.PathLike) -> None:
    shutil.rmtree(Path(path) / WORK, ignore_errors=True)

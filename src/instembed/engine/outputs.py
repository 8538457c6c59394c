"""Where ``instembed predict`` writes, decided before any work starts, so that nothing is lost.

Output names keep the inputs' folder structure below the folder the inputs have in common:
``predict plate1/ plate2/ --out pred`` writes ``pred/plate1/A01.tif`` and ``pred/plate2/A01.tif``
(equal stems in different folders never collide), while ``predict imgs/ --out pred`` writes
``pred/A01.tif``. Two inputs that would still get the same name (``a.png`` and ``a.tif`` in one
folder) are an error naming both.

:func:`check_outputs` refuses, before anything is written,

* any output path that is one of the input images (never allowed, whatever the options);
* an output folder that holds input images, and any output file that exists already, unless
  ``overwrite`` is given (``--overwrite``) — e.g. ``--out`` pointed at the ground-truth folder.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path


class OutputConflict(ValueError):
    """The planned outputs would replace inputs or existing files."""


def output_names(files: Sequence[Path]) -> list[str]:
    """One relative output name per input (POSIX path without suffix), keeping the inputs'
    folders below their common folder; raises ``ValueError`` naming inputs that share a name."""
    if not files:
        return []
    parents = [Path(f).resolve().parent for f in files]
    root = Path(os.path.commonpath([str(p) for p in parents]))
    names = [(p / Path(f).stem).relative_to(root).as_posix() for p, f in zip(parents, files)]
    groups: dict[str, list[str]] = defaultdict(list)
    for name, f in zip(names, files):
        groups[name].append(str(f))
    clash = {k: v for k, v in groups.items() if len(v) > 1}
    if clash:
        name, paths = next(iter(clash.items()))
        raise ValueError(
            f"inputs {', '.join(paths)} would all be written as {name!r} (same folder and stem); "
            "rename one or segment them in separate runs"
        )
    return names


def planned_files(
    out: Path,
    names: Sequence[str],
    labels_format: str = "tif",
    overlay: bool = True,
    panoptic: bool = False,
    coco: Path | None = None,
) -> list[Path]:
    """Every file a prediction run will write (per image: labels, JSON table, overlay PNG,
    panoptic PNG; once: ``panoptic.json`` and the COCO results file)."""
    out = Path(out)
    paths: list[Path] = []
    for name in names:
        paths += [out / f"{name}.{labels_format}", out / f"{name}.json"]
        if overlay:
            paths.append(out / f"{name}_overlay.png")
        if panoptic:
            paths.append(out / "panoptic" / f"{name}.png")
    if panoptic:
        paths.append(out / "panoptic.json")
    if coco is not None:
        paths.append(Path(coco))
    return paths


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def check_outputs(
    inputs: Sequence[Path], planned: Sequence[Path], out: Path, overwrite: bool = False
) -> None:
    """Raise :class:`OutputConflict` when writing ``planned`` would lose data (module doc)."""
    inputs_r = {Path(p).resolve(): Path(p) for p in inputs}
    for p in planned:
        hit = inputs_r.get(Path(p).resolve())
        if hit is not None:
            raise OutputConflict(
                f"output {p} would replace the input image {hit}; choose another --out folder"
            )
    if overwrite:
        return
    out_r = Path(out).resolve()
    held = [str(orig) for res, orig in inputs_r.items() if _inside(res, out_r)]
    if held:
        raise OutputConflict(
            f"--out {out} holds input images ({', '.join(held[:3])}"
            f"{', ...' if len(held) > 3 else ''}); choose another folder, or pass --overwrite "
            "to write beside them"
        )
    existing = [str(p) for p in planned if Path(p).exists()]
    if existing:
        more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        raise OutputConflict(
            f"{len(existing)} output file(s) exist already ({', '.join(existing[:3])}{more}); "
            "choose another --out folder, or pass --overwrite to replace them"
        )

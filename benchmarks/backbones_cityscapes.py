"""Cityscapes for ``benchmarks/repro_backbones.py --cityscapes PATH``: the semantic table on a
user's copy of Cityscapes (Cordts et al. 2016) instead of the synthetic street scenes.

Layout (as distributed, ``leftImg8bit_trainvaltest.zip`` + ``gtFine_trainvaltest.zip``)::

    PATH/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    PATH/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
    PATH/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_instanceIds.png

Images and labels are read by instembed's own reader,
:class:`instembed.data.readers.CityscapesReader`: labelIds -> the 19 trainIds of the
cityscapesScripts label table (``labels.py``; road 0 ... bicycle 18), every other labelId
(unlabeled, ego vehicle, parking, rail track, guard rail, caravan, trailer, ...) -> 255, void.
Each image is then downscaled by ``scale`` with :func:`instembed.data.transforms.rescale`
(linear interpolation for the image, nearest neighbour for trainIds, instance ids and the
ignore mask, so no class ids are mixed), e.g. ``scale=0.25``: 1024 x 2048 -> 256 x 512.

``n_train`` / ``n_val`` images (evenly spaced through the sorted file list, so every city is
drawn from; 0 = all) are loaded once, before any training, and kept in memory (a 256 x 512
image is 1.5 MB as float32). mIoU is the Cityscapes one: per-class IoU over the pixels whose
ground truth is not 255, averaged over the classes present in the ground truth or the
prediction of the scored images (classes absent from both are left out, as cityscapesScripts
leaves out NaN classes).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

SPLITS = ("train", "val")
NUM_CLASSES = 19
THING_CLASSES = tuple(range(11, 19))  # person ... bicycle (trainIds)
DEFAULTS = {"scale": 0.25, "n_train": 256, "n_val": 64, "crop": [128, 256]}


def check_layout(root: str | Path) -> Path:
    """``root`` as a Path when it has the four split folders; else ``ValueError`` naming it and
    every missing folder."""
    root = Path(root)
    expected = (
        "expected leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and "
        "gtFine/{train,val}/<city>/*_gtFine_{labelIds,instanceIds}.png"
    )
    if not root.is_dir():
        raise ValueError(f"--cityscapes {root}: no such folder ({expected})")
    missing = [
        str(root / top / split)
        for top in ("leftImg8bit", "gtFine")
        for split in SPLITS
        if not (root / top / split).is_dir()
    ]
    if missing:
        raise ValueError(
            f"--cityscapes {root}: not a Cityscapes copy, missing {', '.join(missing)} ({expected})"
        )
    return root


def evenly_spaced(n_total: int, n: int) -> list[int]:
    """``n`` indices spread evenly over ``0..n_total-1`` (all of them when ``n`` is 0 or
    ``>= n_total``)."""
    if n <= 0 or n >= n_total:
        return list(range(n_total))
    return sorted({int(i) for i in np.linspace(0, n_total - 1, n).round()})


def load_split(root: str | Path, split: str, scale: float, n: int) -> list:
    """The Samples of one split: trainIds in ``semantic`` (255 void), downscaled by ``scale``."""
    from instembed.data.readers import CityscapesReader
    from instembed.data.transforms import relabel, rescale

    root = check_layout(root)
    if not 0 < scale <= 1:
        raise ValueError(f"--cityscapes-scale must be in (0, 1], got {scale}")
    reader = CityscapesReader(root, split=split)
    if len(reader) == 0:
        raise ValueError(
            f"--cityscapes {root}: no *_leftImg8bit.png under {root / 'leftImg8bit' / split}"
        )
    out = []
    for i in evenly_spaced(len(reader), n):
        s = reader[i]
        if scale != 1:
            s = relabel(rescale(s, scale))  # nearest for labels; classes kept in step
        out.append(s)
    return out


def load(root: str | Path, scale: float, n_train: int, n_val: int) -> tuple[list, list, dict]:
    """(train Samples, val Samples, what was loaded: path, scale, counts, shapes, seconds)."""
    t0 = time.perf_counter()
    train = load_split(root, "train", scale, n_train)
    val = load_split(root, "val", scale, n_val)
    info = {
        "path": str(Path(root).resolve()),
        "scale": scale,
        "n_train": len(train),
        "n_val": len(val),
        "train_shape": list(train[0].shape),
        "val_shape": list(val[0].shape),
        "load_s": round(time.perf_counter() - t0, 1),
    }
    return train, val, info


def data_section(root: str | Path, crop: list[int], batch_size: int) -> dict:
    """The engine data section recorded with each run (the samples themselves are loaded by
    :func:`load` and handed to the Trainer; ``path`` / ``format`` say where they came from)."""
    return {
        "path": str(Path(root).resolve()),
        "format": "cityscapes",
        "crop": list(crop),
        "batch_size": batch_size,
        "flip": False,
        "rot90": False,
        "augment": [{"name": "flip", "p_horizontal": 0.5, "p_vertical": 0.0}],
        "targets": [],
    }


def add_arguments(ap) -> None:
    """The ``--cityscapes*`` options of ``repro_backbones.py``."""
    ap.add_argument(
        "--cityscapes", default=None, metavar="PATH", help="a Cityscapes copy: semantic table on it"
    )
    ap.add_argument(
        "--cityscapes-scale",
        type=float,
        default=DEFAULTS["scale"],
        help="downscale factor (default %(default)s: 1024x2048 -> 256x512)",
    )
    ap.add_argument(
        "--cityscapes-n-train",
        type=int,
        default=DEFAULTS["n_train"],
        help="train images, evenly spaced (default %(default)s; 0: all)",
    )
    ap.add_argument(
        "--cityscapes-n-val",
        type=int,
        default=DEFAULTS["n_val"],
        help="val images, evenly spaced (default %(default)s; 0: all)",
    )
    ap.add_argument(
        "--cityscapes-crop",
        type=int,
        nargs=2,
        default=DEFAULTS["crop"],
        metavar=("H", "W"),
        help="training crop (default %(default)s)",
    )


def command_args(args) -> str:
    """The ``--cityscapes*`` part of the command line that reproduces a run."""
    return (
        f"--cityscapes {args.cityscapes} --cityscapes-scale {args.cityscapes_scale:g} "
        f"--cityscapes-n-train {args.cityscapes_n_train} --cityscapes-n-val {args.cityscapes_n_val} "
        f"--cityscapes-crop {args.cityscapes_crop[0]} {args.cityscapes_crop[1]}"
    )


def prepare(args, mode: dict) -> dict:
    """Load the images ``args`` ask for; update ``mode`` (counts, sizes, crop, speed input);
    return the ``section`` / ``train`` / ``val`` / ``key`` / ``info`` fields of
    ``repro_backbones.Data``. ``ValueError`` for a wrong layout or bad options."""
    train, val, info = load(
        args.cityscapes, args.cityscapes_scale, args.cityscapes_n_train, args.cityscapes_n_val
    )
    mode.update(
        n_train=info["n_train"],
        n_val=info["n_val"],
        size=info["train_shape"],
        crop=list(args.cityscapes_crop),
        speed_size=info["val_shape"],
    )
    return {
        "section": data_section(args.cityscapes, mode["crop"], mode["batch_size"]),
        "train": train,
        "val": val,
        "key": {k: info[k] for k in ("path", "scale", "n_train", "n_val")},
        "info": info,
    }


NOTE = (
    "Cityscapes (gtFine, the user's copy): labelIds mapped to the 19 trainIds of "
    "cityscapesScripts' labels.py, other labelIds void (255); images downscaled by the scale "
    "(linear image, nearest labels); n_train / n_val images evenly spaced through the sorted "
    "train / val file lists. mIoU over the 19 classes on the non-void pixels of the whole "
    "(downscaled) val images, classes absent from ground truth and prediction left out."
)

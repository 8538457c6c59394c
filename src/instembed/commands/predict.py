"""``instembed predict --model M INPUTS... --out DIR [--tile SIZE --overlap PX] [--tta] [--batch N]
[--scale S|auto] [--diameter D] [--cluster KEY=VALUE ...] [--blocks SIZE] [--scheduler ADDRESS]
[--workers N]``."""

from __future__ import annotations

import argparse

from instembed.commands._options import add_threads_argument, show_defaults

HELP = "segment images with a trained or pretrained model (tiling, TTA, label/JSON/overlay/COCO writers)"
DESCRIPTION = """Segment images (files or folders) with a model: a checkpoint written by
`instembed train`, a run folder, or the name of a shipped pretrained model. Writes, per image,
DIR/<stem>.tif (label image, 0 = background), DIR/<stem>.json (id, score, class, area, bbox per
instance) and DIR/<stem>_overlay.png; optionally one COCO results json (RLE) and panoptic
PNGs + json. Images that fail to load are reported, skipped and listed at the end, and the
exit code is then 1. --scale S resizes each image by S before the network (objects of another
size than the model's training data: 0.5 when they are twice as large) and writes the results
at the image's own size; --scale auto (the default) does so only for images whose objects,
segmented at scale 1, are far larger than those the model was trained on (the factor used is
in each image's JSON); --diameter D resizes objects of D pixels to the training median.
--cluster overrides are checked against the clustering method's parameters (names, types,
required ones) before any image is read.

Huge images: --blocks SIZE segments each input (TIFF read lazily, zarr / OME-Zarr folder, or any
image) block by block into DIR/<stem>.zarr (a zarr group; the label array is <stem>.zarr/labels)
as Dask tasks: on a local cluster of --workers processes, or on the cluster of --scheduler
ADDRESS. Running the same command again after a failure computes only the missing blocks.
Many images: --scheduler or --workers without --blocks spreads the images over Dask workers,
each written as without them (--resume skips images whose files all exist)."""


def _scale_arg(text: str):
    """--scale: "auto" or a number > 0 (checked in run, with the other options)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0 or 'auto', got {text!r}") from None


def add_arguments(parser) -> None:
    show_defaults(parser)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    parser.add_argument(
        "--model", required=True, help="checkpoint .pt, run folder, or pretrained name"
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--tile",
        type=int,
        default=None,
        help="segment block by block with blocks of SIZE px (automatic, 512 px, for images with "
        "a side over 1024 px); memory then grows with the block, not the image",
    )
    parser.add_argument(
        "--halo",
        type=int,
        default=64,
        help="pixels around each block clustered with it: at least the radius of the largest "
        "object (half the length of a worm)",
    )
    parser.add_argument(
        "--overlap",
        type=int,
        default=None,
        help="network context around each block region, twice the pixels on each side "
        "(default: the model's receptive field)",
    )
    parser.add_argument(
        "--tta", action="store_true", help="test-time augmentation (8 flips/rotations)"
    )
    parser.add_argument("--batch", type=int, default=1, help="tiles per forward pass")
    parser.add_argument(
        "--scale",
        type=_scale_arg,
        default="auto",
        metavar="S",
        help="resize each image by S before the network (bilinear; e.g. 0.5 for objects twice "
        "the size of the training data's); labels are written at the image's own size. auto: "
        "1, unless the objects found at scale 1 are above the model's training size range "
        "and over 1.25x its median: then shrunk towards that median, step by step while they "
        "still come out too large (at most 3 passes; never enlarged; 1 with --blocks)",
    )
    parser.add_argument(
        "--diameter",
        type=float,
        default=None,
        metavar="D",
        help="typical object diameter in the images (pixels): resize by the model's training "
        "median diameter / D (instead of --scale)",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument(
        "--channel",
        type=int,
        default=None,
        metavar="N",
        help="use channel N (0-based) of multi-channel images instead of averaging them to gray "
        "(default: average for a 1-channel model)",
    )
    parser.add_argument("--format", choices=("tif", "png"), default="tif", help="label file type")
    parser.add_argument("--no-overlay", action="store_true", help="do not write overlay PNGs")
    parser.add_argument(
        "--coco", metavar="FILE", default=None, help="also write COCO results json (RLE)"
    )
    parser.add_argument(
        "--coco-gt",
        metavar="FILE",
        default=None,
        help="COCO annotation json of the inputs: --coco / --panoptic use its image ids (matched "
        "by file name) instead of the inputs' positions 1..N",
    )
    parser.add_argument(
        "--panoptic",
        action="store_true",
        help="also write DIR/panoptic/<stem>.png + DIR/panoptic.json",
    )
    parser.add_argument(
        "--cluster",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override the clusterer: method=NAME and/or parameters, e.g. method=meanshift "
        "bandwidth=0.5 (values parsed as YAML; a new method drops the model's parameters it "
        "does not take); k-means needs k=N",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars (over images, and over the blocks of a large image)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing output files and allow --out to be a folder holding input images "
        "(an input image itself is never replaced)",
    )
    parser.add_argument(
        "--blocks",
        type=int,
        default=None,
        metavar="SIZE",
        help="segment each input block by block (SIZE px cores) into OUT/<stem>.zarr as Dask "
        "tasks: for images larger than memory (TIFF read lazily, .zarr / OME-Zarr folders); "
        "the same command continues a stopped run",
    )
    parser.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="Dask scheduler to run on (tcp://host:8786; 'synchronous': in this process); "
        "default with --blocks or --workers: a local cluster of --workers processes",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="processes of the local Dask cluster (default: one per CPU core)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="skip the images whose output files all exist and write the others (replacing "
        "their partial files): continue a stopped run",
    )
    add_threads_argument(parser)


def apply_cluster_overrides(base, items: list[str], *, key: str = "--cluster"):
    """``base`` with ``KEY=VALUE`` items applied (values parsed as YAML; ``method=NAME``
    switches the method, and then the base parameters the new method does not accept are
    dropped). Only the syntax is checked here (:class:`ConfigError` naming ``key``); check the
    result with :func:`instembed.engine.config.check_cluster`."""
    import dataclasses

    import yaml

    from instembed.cluster.methods import find_method
    from instembed.engine.config import ENGINE_PARAM_TYPES, ConfigError

    method, given = base.method, {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{key} {item!r}: expected KEY=VALUE")
        name, raw = item.split("=", 1)
        name = name.strip()
        if not name:
            raise ConfigError(f"{key} {item!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"{key} {name}: value {raw!r} is not valid YAML") from None
        if name == "method":
            if not isinstance(value, str):
                raise ConfigError(f"{key} method: expected a method name, got {raw!r}")
            method = value
        else:
            given[name] = value
    params = dict(base.params)
    spec = find_method(method)
    if method != base.method and spec is not None and spec.params is not None:
        keep = {*(spec.valid_params() or ()), *ENGINE_PARAM_TYPES}
        params = {k: v for k, v in params.items() if k in keep}
    params.update(given)
    return dataclasses.replace(base, method=method, params=params)


def _cluster_config(base, items: list[str]):
    """The model's clusterer with the ``--cluster`` items applied, checked for prediction:
    known method and parameters, values of the parameters' types, required ones given (k-means's
    ``k``, which training takes from the ground truth). ConfigError (one line) otherwise."""
    from instembed.engine.config import check_cluster

    return check_cluster(apply_cluster_overrides(base, items), require=True, key="--cluster")


class _BlockProgress:
    """``progress(done, total)`` callback of :class:`~instembed.engine.predict.Predictor`: a
    tqdm bar over the blocks of one image on stderr, made at the first call."""

    def __init__(self, name: str) -> None:
        self.name, self.bar = name, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            import sys

            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=self.name, unit="block", leave=False, file=sys.stderr)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(args) -> int:
    import sys
    from pathlib import Path

    import numpy as np

    from instembed.commands._options import apply_threads, check_threads
    from instembed.engine import writers as W
    from instembed.engine.distributed import resolve_device
    from instembed.engine.outputs import check_outputs, output_names, planned_files
    from instembed.engine.predict import Predictor, WriteOptions, expand_inputs, write_prediction

    check_threads(args.threads)
    device = resolve_device(args.device, key="--device")  # a bad device: before any work
    if args.channel is not None and args.channel < 0:
        raise ValueError(f"--channel must be >= 0, got {args.channel}")
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    if args.tile is not None and args.tile < 16:
        raise ValueError(f"--tile must be >= 16 pixels, got {args.tile}")
    if args.overlap is not None and args.overlap < 0:
        raise ValueError(f"--overlap must be >= 0, got {args.overlap}")
    if args.halo < 0:
        raise ValueError(f"--halo must be >= 0, got {args.halo}")
    if args.scale != "auto" and (not args.scale > 0 or args.scale == float("inf")):
        raise ValueError(f"--scale must be a number > 0 or auto, got {args.scale}")
    if args.diameter is not None:
        if not args.diameter > 0 or args.diameter == float("inf"):
            raise ValueError(f"--diameter must be a number of pixels > 0, got {args.diameter}")
        if args.scale != "auto":
            raise ValueError(f"give --scale or --diameter, not both (--scale {args.scale})")
    if args.cluster:  # the syntax of the overrides, before the model is loaded
        from instembed.engine.config import ClusterConfig

        apply_cluster_overrides(ClusterConfig(), args.cluster)
    if args.coco_gt is not None and not (args.coco or args.panoptic):
        raise ValueError("--coco-gt gives image ids to --coco / --panoptic; pass one of them")
    dask = _check_dask_options(args)
    if args.blocks is not None:
        return _run_blocks(args)
    files, bad = expand_inputs(args.inputs)
    if not files and bad:
        for item, why in bad:
            print(f"instembed predict: {item}: {why}", file=sys.stderr)
        return 1
    out = Path(args.out)
    names = output_names(files)
    plan = dict(
        labels_format=args.format,
        overlay=not args.no_overlay,
        panoptic=args.panoptic,
        coco=None if args.coco is None else Path(args.coco),
    )
    skip: set = set()
    if args.resume:  # images whose every file exists were done by the stopped run
        per_image = {k: v for k, v in plan.items() if k != "coco"}
        skip = {
            f
            for f, n in zip(files, names)
            if all(p.exists() for p in planned_files(out, [n], **per_image))
        }
        files, names = (
            [f for f in files if f not in skip],
            [n for f, n in zip(files, names) if f not in skip],
        )
    planned = planned_files(out, names, **plan)
    # before any work; --resume rewrites the partial files of the images not done
    check_outputs(files, planned, out, overwrite=args.overwrite or args.resume)
    id_of = coco_image_ids(args.coco_gt, files)  # before the model is loaded
    if dask:
        return _run_files_on_dask(args, files, names, out, skip, bad)
    if skip:
        print(f"{len(skip)} image(s) already segmented: skipped (--resume)")
    apply_threads(args.threads)
    predictor = Predictor.from_spec(
        args.model,
        device=device,
        tile=args.tile,
        overlap=args.overlap,
        tta=args.tta,
        batch=args.batch,
        scale=args.scale,
        diameter=args.diameter,
        halo=args.halo,
    )
    predictor.cluster = _cluster_config(predictor.cluster, args.cluster)  # before any image
    out.mkdir(parents=True, exist_ok=True)
    opts = WriteOptions(labels_format=args.format, overlay=not args.no_overlay)
    coco_records: list[dict] = []
    panoptic_annotations: list[dict] = []
    stuff = tuple(predictor.cluster.params.get("stuff_classes", ()))

    iterator = files
    if not args.no_progress:
        from tqdm.auto import tqdm

        iterator = tqdm(files, desc="predict", unit="image")
    n_done, n_inst = 0, 0
    stem_of = dict(zip(files, names))
    for position, path in enumerate(iterator, start=1):
        image_id = position if id_of is None else id_of[path]
        try:
            image = predictor.read(path, args.channel)
        except (ValueError, OSError) as err:  # ImageReadError is a ValueError
            msg = str(err) if str(path) in str(err) else f"{path}: {err}"
            print(f"instembed predict: skipped {msg}", file=sys.stderr)
            bad.append((str(path), str(err)))
            continue
        stem = stem_of[path]
        blocks = None
        if not args.no_progress and predictor.will_block(image):
            blocks = _BlockProgress(f"{stem} blocks")
        try:
            pred = predictor(image) if blocks is None else predictor(image, progress=blocks)
        finally:
            if blocks is not None:
                blocks.close()
        write_prediction(out, stem, image, pred, opts)
        n_done += 1
        n_inst += pred.num_instances
        if args.coco:
            coco_records += W.coco_result_records(
                image_id, pred.masks_or_labels, pred.scores, pred.classes
            )
        if args.panoptic:
            seg, infos = W.panoptic_segments(pred.labels, pred.classes, pred.semantic, stuff)
            W.write_panoptic_png(out / "panoptic" / f"{stem}.png", seg)
            panoptic_annotations.append(
                {"image_id": image_id, "file_name": f"{stem}.png", "segments_info": infos}
            )
    if args.coco:
        W.write_json(Path(args.coco), coco_records)
    if args.panoptic:
        images = [{"id": a["image_id"], "file_name": a["file_name"]} for a in panoptic_annotations]
        W.write_json(out / "panoptic.json", {"images": images, "annotations": panoptic_annotations})
    print(f"{n_done} image(s) segmented, {n_inst} instance(s), written to {out}")
    if bad:
        print(f"{len(bad)} input(s) failed and were skipped:", file=sys.stderr)
        for item, why in bad:
            print(f"  {item}: {why}", file=sys.stderr)
        return 1
    del np
    return 0


# --------------------------------------------------------------------------- Dask
def _check_dask_options(args) -> bool:
    """Whether the run uses Dask (--blocks, --scheduler or --workers); refuses the options that
    do not go with it (one-line ValueError naming them)."""
    dask = args.blocks is not None or args.scheduler is not None or args.workers is not None
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.workers is not None and args.scheduler is not None:
        raise ValueError("--workers sizes the local Dask cluster; it does not go with --scheduler")
    if args.blocks is not None:
        if args.blocks < 16:
            raise ValueError(f"--blocks must be >= 16 pixels, got {args.blocks}")
        for given, name in (
            (args.tile is not None, "--tile (the in-memory block size)"),
            (args.scale not in (1.0, "auto"), "--scale"),
            (args.diameter is not None, "--diameter"),
            (args.batch != 1, "--batch"),
            (args.format != "tif", "--format"),
        ):
            if given:
                raise ValueError(f"--blocks writes a zarr label array; {name} does not apply")
    if args.resume and (args.coco or args.panoptic):
        raise ValueError(
            "--resume does not go with --coco / --panoptic (their files cover every image of the "
            "run); run without them"
        )
    if dask and (args.coco or args.panoptic):
        raise ValueError(
            "--coco and --panoptic are not written by Dask runs (--blocks / --scheduler / "
            "--workers); run without them"
        )
    return dask


def coco_image_ids(gt: str | None, files: list) -> dict | None:
    """``{input: image id}`` from the ``images`` of the COCO annotation file ``gt`` (matched by
    file name, as pycocotools' users match results to images), or None without ``gt``.

    Raises ``ValueError`` naming the file when it is not COCO annotations, when a file name is
    listed twice, or when an input is not listed (its results could not be scored)."""
    if gt is None:
        return None
    import json
    from pathlib import Path

    try:
        data = json.loads(Path(gt).read_text())
        images = data["images"]
        by_name: dict[str, int] = {}
        for im in images:
            name = Path(im["file_name"]).name
            if name in by_name:
                raise ValueError(f"--coco-gt {gt}: file name {name!r} is listed twice")
            by_name[name] = int(im["id"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(
            f"--coco-gt {gt}: expected a COCO annotation json with images [{{id, file_name}}], "
            f"got {type(err).__name__}: {err}"
        ) from None
    missing = [f for f in files if Path(f).name not in by_name]
    if missing:
        raise ValueError(
            f"--coco-gt {gt}: {len(missing)} input(s) are not among its images, e.g. "
            f"{Path(missing[0]).name!r}"
        )
    return {f: by_name[Path(f).name] for f in files}


def _zarr_inputs(inputs: list[str]):
    """(inputs, problems) for --blocks: zarr folders (``*.zarr``, or holding ``zarr.json`` /
    ``.zarray`` / ``.zgroup``) as themselves, other items as predict expands them."""
    from pathlib import Path

    from instembed.engine.predict import expand_inputs

    found, rest = [], []
    for item in inputs:
        p = Path(item)
        marks = ("zarr.json", ".zarray", ".zgroup")
        if p.is_dir() and (p.suffix.lower() == ".zarr" or any((p / m).exists() for m in marks)):
            found.append(p)
        else:
            rest.append(item)
    files, bad = expand_inputs(rest) if rest else ([], [])
    return found + files, bad


def _run_blocks(args) -> int:
    """--blocks: each input into OUT/<stem>.zarr (instembed.engine.dask_blocks)."""
    import sys
    from pathlib import Path

    from instembed.data.errors import ImageReadError
    from instembed.engine.dask_blocks import segment_to_zarr
    from instembed.engine.dask_run import BlockwiseError, dask_client
    from instembed.engine.outputs import OutputConflict, output_names
    from instembed.engine.predict import load_model

    inputs, bad = _zarr_inputs(args.inputs)
    for item, why in bad:
        print(f"instembed predict: {item}: {why}", file=sys.stderr)
    if not inputs:
        return 1
    out = Path(args.out)
    targets = [out / f"{name}.zarr" for name in output_names(inputs)]
    for src, target in zip(inputs, targets):
        if Path(src).resolve() == target.resolve():
            raise OutputConflict(
                f"output {target} would replace the input {src}; choose another --out"
            )
    _, cfg = load_model(args.model, "cpu")
    cluster = _cluster_config(cfg.cluster, args.cluster)  # before any block
    threads = args.threads if args.threads is not None else (1 if args.scheduler is None else None)
    n_done, n_inst = 0, 0
    with dask_client(args.scheduler, args.workers) as client:
        for src, target in zip(inputs, targets):
            try:
                res = segment_to_zarr(
                    str(src),
                    args.model,
                    target,
                    block=args.blocks,
                    halo=args.halo,
                    overlap=args.overlap,
                    tta=args.tta,
                    cluster=cluster,
                    channel=args.channel,
                    device=args.device,
                    scheduler=client if client is not None else "synchronous",
                    threads=threads,
                    progress=not args.no_progress,
                    overwrite=args.overwrite,
                )
            except (BlockwiseError, ImageReadError) as err:
                print(f"instembed predict: {err}", file=sys.stderr)
                bad.append((str(src), str(err).splitlines()[0]))
                continue
            n_done += 1
            n_inst += res.instances
            done = f"{res.computed} computed"
            if res.resumed:
                done += f", {res.resumed} already done"
            print(
                f"{src}: {res.instances} instance(s), {res.blocks} blocks ({done}) -> {res.labels}"
            )
    print(f"{n_done} image(s) segmented, {n_inst} instance(s), written to {out}")
    if bad:
        print(f"{len(bad)} input(s) failed:", file=sys.stderr)
        for item, why in bad:
            print(f"  {item}: {why}", file=sys.stderr)
        return 1
    return 0


def _run_files_on_dask(args, files, names, out, skip, bad) -> int:
    """--scheduler / --workers without --blocks: one Dask task per image."""
    import sys

    from instembed.engine.dask_run import ModelSpec, predict_files
    from instembed.engine.predict import WriteOptions, load_model

    _, cfg = load_model(args.model, "cpu")
    cluster = _cluster_config(cfg.cluster, args.cluster)  # before any image
    spec = ModelSpec(
        args.model,
        device=args.device,
        cluster=cluster,
        tta=args.tta,
        overlap=args.overlap,
        tile=args.tile,
        halo=args.halo,
        scale=args.scale,
        diameter=args.diameter,
        batch=args.batch,
    )
    out.mkdir(parents=True, exist_ok=True)
    res = predict_files(
        files,
        names,
        spec,
        out,
        WriteOptions(labels_format=args.format, overlay=not args.no_overlay),
        channel=args.channel,
        scheduler=args.scheduler,
        workers=args.workers,
        threads=args.threads,
        progress=not args.no_progress,
    )
    skipped = f" ({len(skip)} already segmented: skipped)" if skip else ""
    print(f"{res.done} image(s) segmented, {res.instances} instance(s), written to {out}{skipped}")
    bad = bad + res.failed
    if bad:
        print(f"{len(bad)} input(s) failed and were skipped:", file=sys.stderr)
        for item, why in bad:
            print(f"  {item}: {why}", file=sys.stderr)
        return 1
    return 0

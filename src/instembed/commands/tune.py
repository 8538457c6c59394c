"""``instembed tune --model M --data PATH [--out TUNED.pt]``: choose clustering thresholds."""

from __future__ import annotations

from instembed.commands._options import add_threads_argument, show_defaults

HELP = "tune a model's clustering thresholds on annotated images (grid search, like StarDist's optimize_thresholds)"
DESCRIPTION = """Run a model once over annotated images (any layout the data readers know), then
cluster its outputs with every setting of a small grid of thresholds (seeded: fg / seed / kernel
thresholds, plus overlapping masks when the ground truth has overlapping objects; mean-shift:
bandwidth; threshold: delta_v; center/offset: centre threshold) and keep the best by --metric.
Prints one row per setting and the choice; --out writes a copy of the checkpoint whose stored
config carries the chosen thresholds (then `instembed predict --model TUNED.pt` uses them).
--grid names and values, and --cluster overrides, are checked against the clustering method's
parameters (names, types) before the model runs. Tune on validation images, never on the
images you report."""


def add_arguments(parser) -> None:
    show_defaults(parser)
    parser.add_argument(
        "--model", required=True, help="checkpoint .pt, run folder, or pretrained name"
    )
    parser.add_argument("--data", required=True, help="annotated data set folder")
    parser.add_argument(
        "--format", default="auto", help="data layout: auto, folder, bbbc039, bbbc010, dsb2018, ..."
    )
    parser.add_argument(
        "--split",
        default=None,
        help="use only the val images of a recorded split (bbbc039, bbbc010, dsb2018)",
    )
    parser.add_argument("--max-images", type=int, default=None, help="use the first N images")
    parser.add_argument("--metric", default="AP_dsb@0.5", help="summary key to maximise")
    parser.add_argument(
        "--grid",
        nargs="*",
        default=[],
        metavar="KEY=V1,V2",
        help="replace the grid, e.g. seed_thresh=0.5,0.7 prob_thresh=0.5 (default: per method; "
        "values parsed as YAML, checked against the parameter's type)",
    )
    parser.add_argument(
        "--cluster",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override the model's clusterer before tuning (as predict --cluster): "
        "method=NAME and/or fixed parameters, e.g. min_size=20",
    )
    parser.add_argument(
        "--keep-within",
        type=float,
        default=0.0,
        metavar="EPS",
        help="keep the model's own thresholds (after --cluster) unless the best setting beats "
        "them by more than EPS in --metric (default 0: always the best setting)",
    )
    parser.add_argument("--out", default=None, help="write the tuned checkpoint here (.pt)")
    parser.add_argument("--json", dest="json_out", default=None, help="write every row here")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip bad items of the data set with a warning instead of failing",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars (network over the images, clustering over the grid settings)",
    )
    add_threads_argument(parser)


def _grid(items: list[str]) -> dict[str, list] | None:
    """``--grid KEY=V1,V2 ...`` -> ``{key: [values]}`` (values parsed as YAML); None when no
    items. Only the syntax is checked here (:func:`check_grid` checks names and types)."""
    import yaml

    if not items:
        return None
    grid: dict[str, list] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--grid {item!r}: expected KEY=V1,V2,...")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ValueError(f"--grid {item!r}: empty key")
        values = []
        for v in raw.split(","):
            if v == "":
                continue
            try:
                values.append(yaml.safe_load(v))
            except yaml.YAMLError:
                raise ValueError(f"--grid {key}: value {v!r} is not valid YAML") from None
        if not values:
            raise ValueError(f"--grid {item!r}: no values")
        grid[key] = values
    return grid


def check_grid(grid: dict[str, list] | None, cluster) -> dict[str, list] | None:
    """The grid with every name checked against the parameters of the clusterer's method and
    every value against the parameter's type (ints given for floats made floats); one-line
    ConfigError naming ``--grid KEY`` otherwise."""
    import dataclasses

    from instembed.engine.config import check_cluster

    if grid is None:
        return None
    out: dict[str, list] = {}
    for key, values in grid.items():
        checked = []
        for v in values:
            cc = dataclasses.replace(cluster, params={**cluster.params, key: v})
            checked.append(check_cluster(cc, require=False, key="--grid").params[key])
        out[key] = checked
    return out


def run(args) -> int:
    import dataclasses
    import json
    import sys
    from pathlib import Path

    from instembed.commands._options import apply_threads, check_threads
    from instembed.commands.predict import apply_cluster_overrides
    from instembed.data.readers import open_dataset
    from instembed.engine import checkpoint as ck
    from instembed.engine.config import check_cluster, config_to_yaml
    from instembed.engine.distributed import resolve_device
    from instembed.engine.predict import Predictor, resolve_model
    from instembed.engine.tune import METRICS, tune_thresholds

    check_threads(args.threads)
    device = resolve_device(args.device, key="--device")  # a bad device: before any work
    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {args.max_images}")
    if not args.keep_within >= 0:
        raise ValueError(f"--keep-within must be a number >= 0, got {args.keep_within}")
    if args.out is not None and not str(args.out).endswith(".pt"):
        raise ValueError(f"--out must name a .pt file, got {args.out!r}")
    grid = _grid(args.grid)
    apply_threads(args.threads)
    if args.cluster:  # the syntax of the overrides, before the model is loaded
        from instembed.engine.config import ClusterConfig

        apply_cluster_overrides(ClusterConfig(), args.cluster)
    predictor = Predictor.from_spec(args.model, device=device)
    cfg = predictor.cfg
    # the clusterer with the overrides, and the grid, checked before the network runs
    cluster = check_cluster(
        apply_cluster_overrides(predictor.cluster, args.cluster), require=False, key="--cluster"
    )
    grid = check_grid(grid, cluster)
    first = {k: v[0] for k, v in (grid or {}).items()}  # a required parameter may come from it
    check_cluster(
        dataclasses.replace(cluster, params={**cluster.params, **first}),
        require=True,
        key="--cluster",
    )
    predictor.cluster = cfg.cluster = cluster
    reader_params = dict(cfg.data.reader_params)
    if args.skip_bad:
        reader_params["skip_bad"] = True
    reader = open_dataset(args.data, format=args.format, **reader_params)
    if args.split:
        from instembed.data.splits import split_dataset

        reader = split_dataset(reader, args.split)[1]
    n = len(reader) if args.max_images is None else min(args.max_images, len(reader))
    if n == 0:
        raise ValueError(f"{args.data}: no annotated images to tune on")
    samples = [reader[i] for i in range(n)]
    print(f"instembed tune: {n} image(s) from {args.data}, method {predictor.cluster.method}")
    images = samples
    if not args.no_progress:
        from tqdm.auto import tqdm

        images = tqdm(samples, desc="network", unit="image", leave=False, file=sys.stderr)
    outputs = [predictor.outputs(s.image) for s in images]
    bar = None

    def progress(done: int, total: int) -> None:  # one step per grid setting
        nonlocal bar
        if args.no_progress:
            return
        if bar is None:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc="tune", unit="setting", file=sys.stderr)
        bar.update(done - bar.n)

    try:
        result = tune_thresholds(
            outputs,
            samples,
            predictor.cluster,
            grid=grid,
            metric=args.metric,
            progress=progress,
            # the model's own values of the tuned keys are the incumbent
            incumbent={} if args.keep_within > 0 else None,
            keep_within=args.keep_within,
        )
    finally:
        if bar is not None:
            bar.close()

    print("  ".join(f"{k:>10s}" for k in METRICS) + "  params")
    for row in result.rows:
        print(
            "  ".join(f"{row[k]:10.4f}" if row[k] is not None else f"{'-':>10s}" for k in METRICS)
            + f"  {row['params']}"
        )
    kept = any(r.get("incumbent") and r["params"] == result.params for r in result.rows)
    print(
        f"chosen: {result.params} ({args.metric} {result.metrics[args.metric]:.4f})"
        + (f"; the model's own, kept within {args.keep_within:g}" if kept else "")
    )
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps(
                {"chosen": result.params, "metrics": result.metrics, "rows": result.rows},
                indent=1,
            )
            + "\n"
        )
    if args.out:
        src = resolve_model(args.model)
        state = ck.load_checkpoint(src)
        cfg.cluster.params.update(result.params)
        ck.save_checkpoint(
            args.out,
            model_state=state["model"],
            config_yaml=config_to_yaml(cfg),
            step=int(state.get("step", 0)),
            metrics={k: float(v) for k, v in result.metrics.items()},
        )
        print(f"wrote {args.out} (clustering {cfg.cluster.method} {cfg.cluster.params})")
    return 0

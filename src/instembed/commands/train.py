"""``instembed train CONFIG [key=value ...] [--out RUN] [--resume | --overwrite]``."""

from __future__ import annotations

from instembed.commands._options import add_threads_argument, show_defaults

HELP = "train a model from a YAML config (resumable; torchrun for multi-GPU)"
DESCRIPTION = """Train the model of a YAML config. Overrides are dotted key=value pairs parsed as
YAML, e.g. optim.lr=3e-4 data.crop=[128,128] run.steps=2000. Writes RUN/config.yaml, RUN/last.pt,
RUN/best.pt, RUN/train_log.csv, RUN/val_log.csv, RUN/run.log and TensorBoard logs in RUN/tb.
A RUN folder that already holds a run is refused unless --resume (continue it) or --overwrite
(delete its checkpoints and logs when training starts, then start over) is given. A run that
fails before its first checkpoint leaves no half-made files behind.
Multi-GPU or multi-node: torchrun --nproc_per_node N -m instembed train CONFIG ... (gloo on CPU).
Exit codes: 0 done, 2 usage / config error, 3 non-finite loss, 130 interrupted (a final
checkpoint is written)."""


def add_arguments(parser) -> None:
    show_defaults(parser)
    parser.add_argument("config", help="YAML config file (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    parser.add_argument("--out", default=None, help="run folder (default: runs/<config name>)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from RUN/last.pt (exact: same step, optimizer, RNG)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in a RUN folder that holds a run: its checkpoints and logs are deleted "
        "when training starts",
    )
    parser.add_argument("--steps", type=int, default=None, help="shorthand for run.steps=N")
    parser.add_argument(
        "--device",
        default=None,
        help="shorthand for run.device=D: auto | cpu | cuda | cuda:N | mps",
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip bad items of a data folder with a warning instead of failing "
        "(shorthand for data.reader_params.skip_bad=true)",
    )
    parser.add_argument(
        "--size-model",
        action="store_true",
        help="after training, fit a size model on the training images (the object size from "
        "the look of an image: predict --scale auto then resizes images at another "
        "magnification in one step) and store it in best.pt",
    )
    add_threads_argument(parser, why="--threads 1 is often fastest on a busy machine")


def run(args) -> int:
    import sys
    from pathlib import Path

    from instembed.commands._options import apply_threads, check_threads
    from instembed.engine.config import load_config
    from instembed.engine.distributed import check_device_spec
    from instembed.engine.trainer import (
        NO_VALIDATION,
        NonFiniteLossError,
        Trainer,
        check_run_folder,
        existing_run_files,
    )

    check_threads(args.threads)
    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"run.steps={args.steps}")
    if args.device is not None:
        overrides.append(f"run.device={args.device}")
    if args.skip_bad:
        overrides.append("data.reader_params.skip_bad=true")
    cfg = load_config(args.config, overrides)  # rejects bad keys / types / values before any work
    check_device_spec(cfg.run.device)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    check_run_folder(out, resume=args.resume, overwrite=args.overwrite)
    old = existing_run_files(out) if args.overwrite else []
    if old:
        print(
            f"instembed train: --overwrite: the earlier run's {', '.join(old)} in {out} are "
            "deleted when training starts",
            file=sys.stderr,
        )
    apply_threads(args.threads)
    trainer = Trainer(cfg, out, resume=args.resume)
    try:
        result = trainer.fit()
    except NonFiniteLossError as err:
        print(f"instembed train: stopped: {err}", file=sys.stderr)
        if err.last_checkpoint is None:
            print(
                "instembed train: no checkpoint had been written; the run's half-made files "
                f"were removed from {out}",
                file=sys.stderr,
            )
        return 3
    finally:
        trainer.close()
    if trainer.dist.is_main:
        metrics = ", ".join(
            f"{k}={v:.4f}" for k, v in result.metrics.items() if k in ("AP", "AP50", "SBD", "PQ")
        )
        print(
            f"{result.status} at step {result.step}; checkpoints in {out}"
            + (f"; {metrics}" if metrics else "")
        )
        if result.no_validation:
            print(f"instembed train: warning: {NO_VALIDATION}", file=sys.stderr)
        elif result.best:
            print(
                f"best {result.best['metric']}={result.best['value']:.4f} at step "
                f"{result.best['step']}: {out / 'best.pt'}"
            )
        if args.size_model and result.status != "interrupted":
            fit_size_model_into(out, trainer)
    return 130 if result.status == "interrupted" else 0


def fit_size_model_into(out, trainer) -> None:
    """``train --size-model``: a size model for the run's selected weights (best.pt, or last.pt
    when there is none), fitted on the training set's whole images."""
    import sys

    from instembed.engine.predict import resolve_model
    from instembed.engine.size_model import add_to_checkpoint

    try:
        path = resolve_model(out)  # what predict --model RUN loads: best.pt, else last.pt
    except FileNotFoundError:
        print(f"instembed train: --size-model: no checkpoint in {out}", file=sys.stderr)
        return
    sm = add_to_checkpoint(path, trainer.train_set.samples)
    if sm is None:
        print(
            "instembed train: warning: --size-model: fewer than two training images hold "
            f"objects; {path} has no size model",
            file=sys.stderr,
        )
    else:
        print(f"size model fitted on {sm.n_images} training image(s), stored in {path}")

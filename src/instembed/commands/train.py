"""``instembed train CONFIG [key=value ...] [--out RUN] [--resume]``."""

from __future__ import annotations

HELP = "train a model from a YAML config (resumable; torchrun for multi-GPU)"
DESCRIPTION = """Train the model of a YAML config. Overrides are dotted key=value pairs parsed as
YAML, e.g. optim.lr=3e-4 data.crop=[128,128] run.steps=2000. Writes RUN/config.yaml, RUN/last.pt,
RUN/best.pt, RUN/train_log.csv, RUN/val_log.csv and TensorBoard logs in RUN/tb. Multi-GPU or
multi-node: torchrun --nproc_per_node N -m instembed train CONFIG ... (gloo on CPU).
Exit codes: 0 done, 3 non-finite loss, 130 interrupted (a final checkpoint is written)."""


def add_arguments(parser) -> None:
    parser.add_argument("config", help="YAML config file (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    parser.add_argument("--out", default=None, help="run folder (default: runs/<config name>)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from RUN/last.pt (exact: same step, optimizer, RNG)",
    )
    parser.add_argument("--steps", type=int, default=None, help="shorthand for run.steps=N")


def run(args) -> int:
    import sys
    from pathlib import Path

    from instembed.engine.config import load_config
    from instembed.engine.trainer import NonFiniteLossError, Trainer

    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"run.steps={args.steps}")
    cfg = load_config(args.config, overrides)  # rejects bad keys / types before any work
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    if args.resume and not (out / "last.pt").is_file():
        raise FileNotFoundError(f"--resume: no checkpoint to resume from at {out / 'last.pt'}")
    trainer = Trainer(cfg, out, resume=args.resume)
    try:
        result = trainer.fit()
    except NonFiniteLossError as err:
        print(f"instembed train: stopped: {err}", file=sys.stderr)
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
        if result.best:
            print(
                f"best {result.best['metric']}={result.best['value']:.4f} at step {result.best['step']}: {out / 'best.pt'}"
            )
    return 130 if result.status == "interrupted" else 0

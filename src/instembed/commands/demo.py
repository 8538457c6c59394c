"""``instembed demo [--out DIR] [--minutes M]``: the coloring dilemma on CPU, no data needed."""

from __future__ import annotations

from instembed.commands._options import add_threads_argument, show_defaults

HELP = "the coloring dilemma: conv vs semi-conv embeddings on a dot grid (CPU, ~1-3 min)"
DESCRIPTION = """Generate grids of identical dots, train a plain convolutional and a
semi-convolutional embedding network (same U-Net, same discriminative loss), cluster their
embeddings with k-means (true number of dots), evaluate (ARI, COCO AP) and write DIR/report.md
with figures and DIR/metrics.json. Needs no data and no download."""


def add_arguments(parser) -> None:
    show_defaults(parser)
    parser.add_argument("--out", default="demo_out", help="output folder")
    parser.add_argument(
        "--minutes", type=float, default=5.0, help="time budget; training stops early past it"
    )
    parser.add_argument("--steps", type=int, default=300, help="training steps per model")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the networks")
    add_threads_argument(
        parser, default=1, why="1 is fastest for these tiny networks on a busy CPU"
    )


def run(args) -> int:
    import json
    import time

    from instembed.commands._options import apply_threads, check_threads
    from instembed.engine.demo import run_demo

    if args.minutes <= 0:
        raise ValueError(f"--minutes must be > 0, got {args.minutes}")
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    check_threads(args.threads)
    apply_threads(args.threads)
    t0 = time.perf_counter()
    metrics = run_demo(args.out, minutes=args.minutes, steps=args.steps, seed=args.seed)
    print(json.dumps(metrics, indent=2))
    print(f"report: {args.out}/report.md  ({time.perf_counter() - t0:.0f} s)")
    return 0

"""Command-line entry point: ``instembed <command> ...``.

Each sub-command lives in its own module under :mod:`instembed.commands`. A command module
imports nothing heavy at module level (so ``--help`` stays instant) and defines::

    HELP: str                                 # one line for the command list
    def add_arguments(parser) -> None         # fills the sub-parser
    def run(args) -> int                      # does the work, returns the exit code

Heavy imports (torch, numpy, ...) happen inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from instembed import __version__

# command name -> module under instembed.commands (one plain dict, no registry decorators)
COMMANDS: dict[str, str] = {
    "demo": "demo",
    "train": "train",
    "predict": "predict",
    "evaluate": "evaluate",
    "tune": "tune",
    "export": "export",
    "synth": "synth",
    "data": "data",
}


def _load(module: str):
    return importlib.import_module(f"instembed.commands.{module}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instembed",
        description="Instance segmentation by pixel embeddings: train, predict, evaluate, demo.",
    )
    parser.add_argument("--version", action="version", version=f"instembed {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        try:
            mod = _load(module)
        except ModuleNotFoundError as err:  # a command not yet built is simply not listed
            if err.name == f"instembed.commands.{module}":
                continue
            raise
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 0 if argv is None and len(sys.argv) <= 1 else 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stderr.close()
        return 0
    except (FileNotFoundError, ValueError, NotADirectoryError, PermissionError) as err:
        # user errors: say what was wrong, no traceback (run with -vv for one)
        if args.verbose >= 2:
            raise
        print(f"instembed {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

"""``instembed data info PATH``: what a data set folder holds, as the readers see it."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HELP = "inspect a data set folder (data info PATH)"
DESCRIPTION = """\
Inspect data sets with the same readers that training uses.

  instembed data info PATH [--format F] [--json OUT] [--skip-bad] [--no-progress]

prints the detected layout, number of images and instances, instances per image
(min / mean / max), pixels covered by more than one instance, image sizes, dtypes and channels,
and the label encoding found. Formats: auto, folder, bbbc039, bbbc010, dsb2018, cvppp, coco,
coco_panoptic, cityscapes, stardist (docs/data.md). Problems found on open (missing labels, size mismatch,
truncated files, ...) are an error naming each file, or with --skip-bad a listed warning.
While the samples are decoded a progress bar is drawn on stderr when it is a terminal
(--no-progress turns it off); the report on stdout is the same either way.
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout and shows every option's default: ``(default: X)`` is
    appended to the help of an option whose default is not ``None`` unless the help already
    mentions its default; an on/off flag shows ``(default: off)``."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or default is None
            or default is argparse.SUPPRESS
            or "default" in help.lower()
        ):
            return help
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return f"{help} (default: {'on' if default else 'off'})"
        if isinstance(default, (list, tuple)):
            shown = " ".join(str(v) for v in default) if default else "none"
            return f"{help} (default: {shown})"
        return help + " (default: %(default)s)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = HelpFormatter
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    info = sub.add_parser(
        "info",
        help="count images, instances, overlaps, sizes of a data set",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    info.add_argument("path", type=Path, help="data set folder (or COCO json file)")
    info.add_argument(
        "--format", default="auto", help="layout: auto (default) or a reader name (docs/data.md)"
    )
    info.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write JSON here")
    info.add_argument(
        "--skip-bad", action="store_true", help="skip bad items with a warning instead of failing"
    )
    info.add_argument(
        "--per-image", action="store_true", help="print the instance count of every image"
    )
    info.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bar on stderr (default: a bar while reading, when stderr is a terminal)",
    )


def _table(summary: dict, reason: str | None) -> str:
    ipi = summary["instances_per_image"]
    lines = [
        f"format           {summary['format']}" + (f"  (auto: {reason})" if reason else ""),
        f"images           {summary['images']}",
        f"instances        {summary['instances']}",
        f"per image        min {ipi['min']}  mean {ipi['mean']:.2f}  max {ipi['max']}",
        f"empty images     {summary['empty_images']}",
        f"overlap pixels   {summary['overlap_pixels']}",
        f"ignore pixels    {summary['ignore_pixels']}",
        "image sizes      " + ", ".join(f"{k} ({v})" for k, v in summary["image_sizes"].items()),
        "image dtypes     " + ", ".join(f"{k} ({v})" for k, v in summary["image_dtypes"].items()),
        "channels         " + ", ".join(f"{k} ({v})" for k, v in summary["channels"].items()),
        "label encoding   "
        + ", ".join(f"{k} ({v})" for k, v in summary["label_encodings"].items()),
        f"semantic labels  {'yes' if summary['has_semantic'] else 'no'}",
    ]
    if summary["classes"]:
        lines.append(
            "instances/class  " + ", ".join(f"{k}: {v}" for k, v in summary["classes"].items())
        )
    if summary["bad"]:
        lines.append(f"skipped          {len(summary['bad'])} bad item(s):")
        lines += [f"  {b['item']}: {b['problem']}" for b in summary["bad"]]
    return "\n".join(lines)


class _ProgressBar:
    """Context manager giving ``summarize`` its ``progress(done, total)`` callback: a tqdm bar
    on stderr, or ``None`` with ``--no-progress`` or when stderr is not a terminal."""

    def __init__(self, args: argparse.Namespace, total: int) -> None:
        self.bar = None
        if getattr(args, "progress", True) and _isatty(sys.stderr):
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="reading", unit="image", file=sys.stderr)

    def _update(self, done: int, total: int) -> None:
        self.bar.update(done - self.bar.n)

    def __enter__(self):
        return None if self.bar is None else self._update

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def run(args: argparse.Namespace) -> int:
    if getattr(args, "data_command", None) != "info":
        print("usage: instembed data info PATH [--format F] [--json OUT]", file=sys.stderr)
        return 2
    from instembed.data.readers import detect_format, open_dataset
    from instembed.data.summary import summarize

    reason = None
    fmt = args.format
    if fmt == "auto":
        fmt, reason = detect_format(args.path)
    t0 = time.perf_counter()
    reader = open_dataset(args.path, format=fmt, skip_bad=args.skip_bad)
    with _ProgressBar(args, len(reader)) as progress:
        summary = summarize(reader, progress=progress)
    summary["path"] = str(args.path)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    print(_table(summary, reason))
    if args.per_image:
        for row in summary["per_image"]:
            print(
                f"  {row['name']}: {row['instances']} instances, {row['overlap_pixels']} overlap px"
            )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.json}")
    return 0

"""``instembed synth KIND``: write a synthetic data set in the generic folder layout."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "write a synthetic data set (dot_grid, touching_cells, leaf_rosettes, worms, street)"
DESCRIPTION = """\
Write N synthetic images with exact ground truth in the generic folder layout, readable with
`instembed data info DIR` / open_dataset(DIR):

  DIR/images/<kind>_<i>.png     8-bit gray (1 channel kinds) or RGB image
  DIR/labels/<kind>_<i>.png     instance label image (0 = background, 1..N; 16-bit when N > 255)
  DIR/labels/<kind>_<i>.tif     for overlapping kinds (worms): an (N, H, W) mask-stack TIFF,
                                N pages of uint8 0/255, page k-1 = instance k, tagged
                                {"axes": "QYX", "instembed": "mask_stack"} in its description
  DIR/semantic/<kind>_<i>.png   semantic class ids (255 = void)
  DIR/classes.json              {"<kind>_<i>": [class of instance 1, 2, ...]}
  DIR/meta.json                 kind, n, size, seed, parameters, class names

Kind parameters go with --param NAME=VALUE (VALUE parsed as JSON, e.g. --param radius=3
--param spacing=[12,16]); see docs/data.md.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    from instembed.commands.data import HelpFormatter

    parser.formatter_class = HelpFormatter  # keeps the description, shows every default
    parser.add_argument("kind", help="dot_grid, touching_cells, leaf_rosettes, worms or street")
    parser.add_argument("--n", type=int, default=16, help="number of images (default 16)")
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(96, 96),
        metavar=("H", "W"),
        help="image size (default: 96 96)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a generator parameter (repeatable), VALUE as JSON (default: none, the kind's "
        "own defaults, docs/data.md)",
    )


def _params(items: list[str]) -> dict:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--param expects NAME=VALUE, got {item!r}")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out


def run(args: argparse.Namespace) -> int:
    from instembed.data.io import write_image, write_labels
    from instembed.data.synth import KINDS, make_samples

    if args.kind not in KINDS:
        raise ValueError(f"unknown synthetic kind {args.kind!r}; expected one of {sorted(KINDS)}")
    params = _params(args.param)
    try:
        samples = make_samples(args.kind, args.n, size=tuple(args.size), seed=args.seed, **params)
    except TypeError as err:
        raise ValueError(f"bad --param for kind {args.kind!r}: {err}") from None
    out: Path = args.out
    classes = {}
    digits = max(4, len(str(max(args.n - 1, 0))))
    for i, s in enumerate(samples):
        stem = f"{args.kind}_{i:0{digits}d}"
        write_image(out / "images" / f"{stem}.png", s.image)
        write_labels(out / "labels" / (f"{stem}.tif" if s.is_stack else f"{stem}.png"), s.instances)
        if s.semantic is not None:
            write_labels(out / "semantic" / f"{stem}.png", s.semantic)
        if s.classes is not None:
            classes[stem] = [int(c) for c in s.classes]
    (out / "classes.json").write_text(json.dumps(classes))
    meta = {
        "kind": args.kind,
        "n": args.n,
        "size": list(args.size),
        "seed": args.seed,
        "params": params,
        "class_names": list(samples[0].meta.get("class_names", ())) if samples else [],
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    n_inst = sum(s.num_instances for s in samples)
    print(f"wrote {len(samples)} {args.kind} images ({n_inst} instances) to {out}")
    return 0

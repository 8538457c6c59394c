"""``instembed export --model M --format torchscript|onnx|bioimageio --out F``."""

from __future__ import annotations

from instembed.commands._options import add_threads_argument, show_defaults

HELP = "export a model to TorchScript (with post-processing where possible), ONNX or bioimage.io"
DESCRIPTION = """Export a checkpoint, run folder or pretrained model. TorchScript: the network
(any input size) and, for the seeded and center_offset clusterers, the clustering too
(m.segment(image) -> labels, scores: those of `instembed predict`, with the configured min_size,
score mode and thresholds); a post-processing parameter that cannot be compiled (fill_holes) is
refused, --network-only exports the network alone. The run config is stored as the extra file
config.yaml. ONNX: the network only, dynamic batch/height/width (H and W multiples of the model's
size_divisor, stored in the file's metadata). bioimageio: a BioImage Model Zoo package (.zip,
model description format 0.5) for deepImageJ / Fiji, QuPath, ilastik and bioimageio.core: raw
image in, label image out (the model's normalisation, network and clustering in one TorchScript
file; equal to instembed.segment's labels), with test tensors, cover, README, licence and
citations; --validate runs bioimageio.core's model test on it (needs instembed[bioimageio])."""


def add_arguments(parser) -> None:
    show_defaults(parser)
    parser.add_argument(
        "--model", required=True, help="checkpoint .pt, run folder, or pretrained name"
    )
    parser.add_argument("--format", required=True, choices=("torchscript", "onnx", "bioimageio"))
    parser.add_argument("--out", required=True, help="output file (bioimageio: a .zip)")
    parser.add_argument(
        "--example-size",
        type=int,
        default=None,
        help="side of the example input used to trace (default: from the model)",
    )
    parser.add_argument(
        "--network-only",
        action="store_true",
        help="TorchScript: export the network without the post-processing (e.g. for a config "
        "whose post-processing cannot be compiled, such as fill_holes)",
    )
    parser.add_argument(
        "--test-image",
        default=None,
        metavar="FILE",
        help="bioimageio: the image stored as the package's test input, with its labels as the "
        "test output (default: a synthetic 256 x 256 scene)",
    )
    parser.add_argument(
        "--test-channel",
        type=int,
        default=None,
        metavar="C",
        help="bioimageio: use channel C (0-based) of a multi-channel --test-image",
    )
    parser.add_argument(
        "--name", default=None, help="bioimageio: the package's name (default: from --model)"
    )
    parser.add_argument(
        "--author",
        action="append",
        default=None,
        metavar="NAME",
        help="bioimageio: an author of the package (repeat for several; default: instembed "
        "developers)",
    )
    parser.add_argument(
        "--validate",
        action="store_true",
        help="bioimageio: run bioimageio.core's model test on the written package (exit 1 "
        "when it fails)",
    )
    add_threads_argument(parser)


def _check(args) -> None:
    """Refuse options that do not apply to the chosen format (one line, naming them)."""
    only_bio = ("test_image", "test_channel", "name", "author", "validate")
    given = [n for n in only_bio if getattr(args, n) not in (None, False)]
    if args.format != "bioimageio" and given:
        opts = ", ".join("--" + n.replace("_", "-") for n in given)
        raise ValueError(f"{opts}: only for --format bioimageio, got --format {args.format}")
    if args.format == "bioimageio" and (args.network_only or args.example_size is not None):
        raise ValueError(
            "--network-only / --example-size: not for --format bioimageio (the package holds "
            "the clustering; the network is traced at its own size)"
        )


def run(args) -> int:
    from instembed.commands._options import apply_threads

    _check(args)
    apply_threads(args.threads)
    if args.format == "bioimageio":
        return _bioimageio(args)
    from instembed.engine.export import export_onnx, export_torchscript
    from instembed.engine.predict import load_model

    model, cfg = load_model(args.model, "cpu")
    if args.format == "torchscript":
        post = False if args.network_only else None
        path = export_torchscript(model, cfg, args.out, args.example_size, post)
    else:
        path = export_onnx(model, cfg, args.out, args.example_size)
    print(f"wrote {path}")
    return 0


def _bioimageio(args) -> int:
    from instembed.engine.bioimageio import export_bioimageio, test_package

    path = export_bioimageio(
        args.model,
        args.out,
        test_image=args.test_image,
        channel=args.test_channel,
        name=args.name,
        authors=args.author,
    )
    print(f"wrote {path}")
    if not args.validate:
        return 0
    import sys

    try:
        summary = test_package(path)
    except ImportError as err:
        print(f"instembed export: error: {err}", file=sys.stderr)
        return 2
    print(f"bioimageio.core test of {path}: {summary.status}")
    for d in summary.details:
        print(f"  {d.status}: {d.name}")
        for e in d.errors:
            print(f"    error: {e.msg}")
    return 0 if summary.status == "passed" else 1

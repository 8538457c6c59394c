"""``instembed export --model M --format torchscript|onnx --out F``."""

from __future__ import annotations

from instembed.commands._options import add_threads_argument, show_defaults

HELP = "export a model to TorchScript (with post-processing where possible) or ONNX"
DESCRIPTION = """Export a checkpoint, run folder or pretrained model. TorchScript: the network
(any input size) and, for the seeded and center_offset clusterers, the clustering too
(m.segment(image) -> labels, scores: those of `instembed predict`, with the configured min_size,
score mode and thresholds); a post-processing parameter that cannot be compiled (fill_holes) is
refused, --network-only exports the network alone. The run config is stored as the extra file
config.yaml. ONNX: the network only, dynamic batch/height/width (H and W multiples of the model's
size_divisor, stored in the file's metadata)."""


def add_arguments(parser) -> None:
    show_defaults(parser)
    parser.add_argument(
        "--model", required=True, help="checkpoint .pt, run folder, or pretrained name"
    )
    parser.add_argument("--format", required=True, choices=("torchscript", "onnx"))
    parser.add_argument("--out", required=True, help="output file")
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
    add_threads_argument(parser)


def run(args) -> int:
    from instembed.commands._options import apply_threads
    from instembed.engine.export import export_onnx, export_torchscript
    from instembed.engine.predict import load_model

    apply_threads(args.threads)
    model, cfg = load_model(args.model, "cpu")
    if args.format == "torchscript":
        post = False if args.network_only else None
        path = export_torchscript(model, cfg, args.out, args.example_size, post)
    else:
        path = export_onnx(model, cfg, args.out, args.example_size)
    print(f"wrote {path}")
    return 0

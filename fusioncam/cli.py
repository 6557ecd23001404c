"""The `fusioncam` command: thin subcommands over the Python API (they parse arguments and call it)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import FusionCamError


def _model_source(model: str) -> str:
    """'onnx' for a .onnx path, 'named' for efficientnet_lite0 or a torchvision name."""
    return "onnx" if model.lower().endswith(".onnx") or Path(model).is_file() else "named"


def cmd_export(args: argparse.Namespace) -> int:
    """fusioncam export MODEL --layer NAME --out DIR"""
    from .export import export_onnx, export_torch
    from .export.model_zoo import named_model

    from .bundle import check_bundle_destination

    check_bundle_destination(args.out, [p for p in (args.model, args.weights) if p and Path(p).exists()])
    size = tuple(args.input_size) if args.input_size else None
    layout = {"output": args.output, "token_grid": tuple(args.token_grid) if args.token_grid else None,
              "prefix_tokens": args.prefix_tokens, "channels_last": True if args.channels_last else None}
    if args.segmentation:
        result = _export_segmentation(args, size)
    elif _model_source(args.model) == "onnx":
        result = export_onnx(args.model, args.out, args.layer, input_size=size, fp16_scorer=args.fp16_scorer, **layout)
    else:
        named = named_model(args.model, args.weights)
        layer = args.layer or named.default_layer  # None: the automatic target (describe() says which)
        result = export_torch(named.module, layer, args.out, input_size=size or named.input_size, class_names=named.class_names,
                               fp16_scorer=args.fp16_scorer, **layout)
    print(result.describe())
    return 0


def _export_segmentation(args: argparse.Namespace, size):
    """fusioncam export MODEL.onnx --segmentation: a segmentation bundle (docs/segmentation.md)."""
    from .errors import InputError
    from .export import export_onnx_segmentation

    if _model_source(args.model) != "onnx":
        raise InputError("--segmentation exports .onnx files; export a PyTorch segmentation model from Python with "
                         "fusioncam.export_torch_segmentation(model, layer, out)")
    return export_onnx_segmentation(args.model, args.out, args.layer, input_size=size, fp16_scorer=args.fp16_scorer)


def cmd_layers(args: argparse.Namespace) -> int:
    """fusioncam layers MODEL: candidate target layers with shapes, in graph order."""
    from .export import list_layers
    from .export.model_zoo import named_model

    size = tuple(args.input_size) if args.input_size else None
    if _model_source(args.model) == "onnx":
        layers = list_layers(args.model, size)
    else:
        named = named_model(args.model, args.weights)
        layers = list_layers(named.module, size or named.input_size)
    width = max((len(layer.name) for layer in layers), default=4)
    print(f"{'layer':<{width}}  {'op':<20} {'shape':<16} note")
    for layer in layers:
        shape = "x".join(str(d) for d in layer.shape)
        print(f"{layer.name:<{width}}  {layer.op_type:<20} {shape:<16} {layer.note}".rstrip())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="fusioncam", description="Fusion-CAM explanations for image classifiers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is chosen (device, layer)")
    sub = parser.add_subparsers(dest="command", required=True)

    export = sub.add_parser("export", help="make a bundle (explain graph + scorer) from a model")
    export.add_argument("model", help="a .onnx file, 'efficientnet_lite0', or a torchvision model name (with --weights)")
    export.add_argument("--layer", help="target layer: a module path (PyTorch) or tensor name (ONNX); ONNX default: automatic")
    export.add_argument("--out", required=True, help="bundle directory to write")
    export.add_argument("--weights", help="state dict file for a torchvision model (loaded with weights_only=True)")
    export.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="input height and width")
    export.add_argument("--fp16-scorer", action="store_true", help="also write a float16 scorer (explain with --precision fp16)")
    export.add_argument("--segmentation", action="store_true",
                        help="the .onnx model outputs per-pixel class scores [N,C,H,W]: a segmentation bundle (explain "
                             "a class over a region: fusioncam explain --target CLASS --region ...)")
    export.add_argument("--output", help="the model output holding the class scores, when it has several (default: the first)")
    export.add_argument("--token-grid", type=int, nargs=2, metavar=("H", "W"), help="the target's tokens form an HxW grid")
    export.add_argument("--prefix-tokens", type=int, metavar="K", help="the target's first K tokens are not patches (class, registers)")
    export.add_argument("--channels-last", action="store_true", help="the target tensor is [N,h,w,C]")
    export.set_defaults(run=cmd_export)

    layers = sub.add_parser("layers", help="list candidate target layers with their shapes")
    layers.add_argument("model")
    layers.add_argument("--weights")
    layers.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"))
    layers.set_defaults(run=cmd_layers)

    from . import cli_evaluate, cli_explain

    cli_explain.add_subcommands(sub)
    cli_evaluate.add_subcommands(sub)
    from .dataset import cli as cli_dataset  # imports no Ray: explain-dataset says how to install it when absent

    cli_dataset.add_subcommands(sub)
    from .serve import cli as cli_serve

    cli_serve.add_subcommands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a subcommand; a FusionCamError prints one clear line and exits 2; Ctrl-C or SIGTERM stops at
    a clean point, prints one line and exits 130 (explain and evaluate keep the record of what finished)."""
    from .interrupts import EXIT_INTERRUPTED, stop_signals

    with stop_signals():
        parser = build_parser()
        args = parser.parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
        try:
            return args.run(args)
        except FusionCamError as exc:
            print(f"fusioncam {args.command}: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:
            name = getattr(exc, "signal_name", "SIGINT")
            print(f"fusioncam {args.command}: interrupted ({name}); stopped before anything was written", file=sys.stderr)
            return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

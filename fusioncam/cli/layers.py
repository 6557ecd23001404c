"""The `layers` subcommand: candidate target layers with their shapes, in graph order."""

from __future__ import annotations

import argparse

from .export import _model_source


def cmd_layers(args: argparse.Namespace) -> int:
    """fusioncam layers MODEL: candidate target layers with shapes, in graph order."""
    from ..export import list_layers
    from ..export.model_zoo import named_model

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


def add_subcommands(sub) -> None:
    """Register `layers`."""
    layers = sub.add_parser("layers", help="list candidate target layers with their shapes")
    layers.add_argument("model")
    layers.add_argument("--weights")
    layers.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"))
    layers.set_defaults(run=cmd_layers)

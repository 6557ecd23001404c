"""The `fusioncam` command: thin subcommands over the Python API (they parse arguments and call it)."""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import FusionCamError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="fusioncam", description="Fusion-CAM explanations for image classifiers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is chosen (device, layer)")
    sub = parser.add_subparsers(dest="command", required=True)

    from . import bench, demo, evaluate, explain, export, layers

    for command in (export, layers, demo, explain, evaluate, bench):
        command.add_subcommands(sub)
    from ..dataset import cli as cli_dataset  # imports no Ray: explain-dataset says how to install it when absent

    cli_dataset.add_subcommands(sub)
    from ..serve import cli as cli_serve

    cli_serve.add_subcommands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a subcommand; a FusionCamError prints one clear line and exits 2; Ctrl-C or SIGTERM stops at
    a clean point, prints one line and exits 130 (explain and evaluate keep the record of what finished)."""
    from ..interrupts import EXIT_INTERRUPTED, stop_signals

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

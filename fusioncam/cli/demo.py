"""The `demo` subcommand: the built-in EfficientNet-Lite0 on the sample photos, into an output folder."""

from __future__ import annotations

import argparse

from .shared import DEVICES, SAMPLE_NAMES, finish, say


def cmd_demo(args: argparse.Namespace) -> int:
    """fusioncam demo: the default model on the sample photos."""
    from ..bundle_cache import default_bundle
    from ..report.explain_folder import check_output_dir, explain_into_folder, sample_sources
    from ..run_lock import run_lock
    from ..runtime import Explainer

    sources = sample_sources(args.images)
    with run_lock(args.out):  # one run at a time into the folder: a second one is refused, naming this one's pid
        check_output_dir(args.out, sources, ("fusion",))  # before the model loads
        explainer = Explainer(default_bundle(notify=say), device=args.device)
        summary = explain_into_folder(explainer, sources, args.out, methods=("fusion",))
    return finish(summary, "demo")


def add_subcommands(sub) -> None:
    """Register `demo`."""
    demo = sub.add_parser("demo", help="explain the sample photos with the built-in EfficientNet-Lite0")
    demo.add_argument("--out", default="fusioncam-demo", help="output folder (default: fusioncam-demo)")
    demo.add_argument("--device", choices=DEVICES, default="auto")
    demo.add_argument("--images", nargs="+", choices=SAMPLE_NAMES, metavar="NAME",
                      help=f"which samples (default: all of {', '.join(SAMPLE_NAMES)})")
    demo.set_defaults(run=cmd_demo)

"""The `demo` and `explain` subcommands: they parse arguments and call the API (default_model, runtime, report)."""

from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path

from .errors import InputError
from .runtime.channel_selection import DEFAULT_FAST_CHANNELS
from .runtime.explainer import PRECISIONS
from .runtime.methods import METHODS

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".jp2"}
SAMPLE_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle")
DEVICES = ("auto", "cpu", "cuda")


def _say(message: str) -> None:
    """A status line on stderr (stdout carries only the results table)."""
    print(message, file=sys.stderr, flush=True)


def _methods(text: str) -> tuple[str, ...]:
    """--methods: a comma-separated subset of the methods (runtime.methods.METHODS)."""
    from .runtime.methods import check_methods

    try:
        return check_methods([m.strip() for m in text.split(",") if m.strip()])
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    """--batch: a positive integer."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files as given, folders as their image files (not recursive), globs as their matches; none found is an error."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif glob.has_magic(item) and not path.exists():
            found += sorted(Path(p) for p in glob.glob(item) if os.path.isfile(p))
        else:
            found.append(path)  # a missing or unreadable file is reported by name when it is read
    unique = list(dict.fromkeys(found))
    if not unique:
        raise InputError(f"no images found in {', '.join(inputs)} (folders are searched for "
                         f"{', '.join(sorted(IMAGE_EXTENSIONS))}, not recursively)")
    return unique


def _finish(summary, command: str = "explain") -> int:
    """Print the results table and where the files went; 0 when every image was explained, 1 when some were skipped,
    130 (one line) when a signal stopped the run (the record of the finished images is written, marked incomplete)."""
    from .interrupts import EXIT_INTERRUPTED
    from .report import RESULTS_JSON, summary_table

    if summary.records:
        print(summary_table(summary.records))
    explained = len(summary.records)
    total = explained + len(summary.failures) + len(summary.not_explained)
    if summary.interrupted:
        _say(f"fusioncam {command}: interrupted ({summary.interrupted}) after {explained} of {total} image(s); "
             f"{summary.out / RESULTS_JSON} records what finished (marked incomplete)")
        return EXIT_INTERRUPTED
    _say(f"explained {explained} of {total} image(s); open {summary.out / 'index.html'}")
    return 0 if summary.all_succeeded else 1


def cmd_demo(args: argparse.Namespace) -> int:
    """fusioncam demo: the default model on the sample photos."""
    from .default_model import default_bundle
    from .report import check_output_dir, explain_into_folder, sample_sources
    from .runtime import Explainer

    sources = sample_sources(args.images)
    check_output_dir(args.out, sources, ("fusion",))  # before the model loads; the folder is made only then
    explainer = Explainer(default_bundle(notify=_say), device=args.device)
    return _finish(explain_into_folder(explainer, sources, args.out, methods=("fusion",)), "demo")


def cmd_explain(args: argparse.Namespace) -> int:
    """fusioncam explain INPUTS... --model MODEL: explain image files into an output folder."""
    from .default_model import bundle_for
    from .report import check_output_dir, explain_into_folder, file_sources
    from .runtime import Explainer

    sources = file_sources(expand_inputs(args.inputs))
    check_output_dir(args.out, sources, args.methods)  # before the model loads; the folder is made only then
    size = tuple(args.input_size) if args.input_size else None
    explainer = Explainer(bundle_for(args.model, args.layer, size, notify=_say), device=args.device, batch_size=args.batch,
                          precision=args.precision, max_channels=args.fast)
    if args.region is not None and not explainer.segmentation:
        raise InputError("--region applies to segmentation bundles only; this model explains image classes")
    from .report_segmentation import parse_region

    summary = explain_into_folder(explainer, sources, args.out, target=args.target, methods=args.methods,
                                  colormap=args.colormap, regions=parse_region(args.region))
    return _finish(summary)


def add_subcommands(sub) -> None:
    """Register the explaining subcommands on the parser's subparsers."""
    demo = sub.add_parser("demo", help="explain the sample photos with the built-in EfficientNet-Lite0")
    demo.add_argument("--out", default="fusioncam-demo", help="output folder (default: fusioncam-demo)")
    demo.add_argument("--device", choices=DEVICES, default="auto")
    demo.add_argument("--images", nargs="+", choices=SAMPLE_NAMES, metavar="NAME",
                      help=f"which samples (default: all of {', '.join(SAMPLE_NAMES)})")
    demo.set_defaults(run=cmd_demo)

    explain = sub.add_parser("explain", help="explain image files, folders or globs with a model")
    explain.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (not recursive) or globs")
    explain.add_argument("--model", required=True, help="a bundle directory, an .onnx file, or efficientnet_lite0")
    explain.add_argument("--layer", help="target layer (default: the bundle's, or picked automatically for .onnx)")
    explain.add_argument("--target", help="class index or class name to explain (default: each image's top class)")
    explain.add_argument("--out", default="fusioncam-out", help="output folder (default: fusioncam-out)")
    explain.add_argument("--device", choices=DEVICES, default="auto")
    explain.add_argument("--batch", type=_positive, help="masked images per scorer run (default: 16 CPU, 256 GPU)")
    explain.add_argument("--precision", choices=PRECISIONS, default="fp32",
                         help="fp32 (exact, default); tf32 (CUDA: TF32 convolutions); fp16 (the bundle's float16 "
                              "scorer: export it with --fp16-scorer)")
    explain.add_argument("--fast", nargs="?", type=_positive, const=DEFAULT_FAST_CHANNELS, metavar="K",
                         help="fast mode, beyond the paper: Score-CAM scores only the K channels with the largest "
                              f"Grad-CAM contribution, the others get weight 0 (K default {DEFAULT_FAST_CHANNELS})")
    explain.add_argument("--methods", type=_methods, default=("fusion",),
                         help=f"methods to write an overlay and a .npy map for, comma-separated: any of "
                              f"{','.join(METHODS)} (default: fusion); the panel shows Grad-CAM, Score-CAM, "
                              f"Fusion-CAM and the others chosen")
    explain.add_argument("--colormap", default="jet", help="OpenCV colormap name (jet, turbo, inferno, viridis, ...)")
    explain.add_argument("--region", metavar="predicted|all|x0,y0,x1,y1",
                         help="segmentation bundles: where --target is explained: where the model predicts it "
                              "(predicted, the default), the whole image (all), or a box in the model's input pixels")
    explain.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                         help="input size for an .onnx model with a dynamic height/width")
    explain.set_defaults(run=cmd_explain)

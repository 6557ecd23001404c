"""The `bench` subcommand: latency of explaining with a model on this machine, per method, batch size and precision,
against the forward-pass floor measured in the same run (fusioncam/benchmarking/)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..runtime.channel_selection import DEFAULT_FAST_CHANNELS
from .shared import DEVICES, method_list, positive_int, say


def _positive_ints(text: str) -> tuple[int, ...]:
    """--batch-sizes: comma-separated positive integers."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(f"must be comma-separated positive integers (e.g. 1,8,32), got {text!r}")
    return tuple(int(part) for part in parts)


def _precisions(text: str) -> tuple[str, ...]:
    """--precision: a comma-separated subset of fp32, tf32, fp16, int8."""
    from ..benchmarking import BENCH_PRECISIONS

    parts = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [part for part in parts if part not in BENCH_PRECISIONS]
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"unknown precision {', '.join(unknown) or '(none)'}; choose from "
                                         f"{', '.join(BENCH_PRECISIONS)}")
    return parts


def _positive_seconds(text: str) -> float:
    """--seconds: a positive number."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _torch_model(name: str, layer: str | None):
    """(module, target module) of a model-zoo model for --compare pytorch-grad-cam, else None (an ONNX or bundle)."""
    from ..export.model_zoo import DEFAULT_LAYER, DEFAULT_MODEL, efficientnet_lite0

    if name != DEFAULT_MODEL:
        return None
    module = efficientnet_lite0().module
    return module, module.get_submodule(layer or DEFAULT_LAYER)


def _check_json_out(out: Path) -> None:
    """--json must be writable, and an existing file there must be an earlier fusioncam bench JSON (never another
    file overwritten); checked before anything is measured."""
    from ..errors import OutputError
    from ..output_guard import check_writable_location

    if out.is_dir():
        raise OutputError(f"--json {out} is a folder; give a file name such as {out / 'bench.json'}")
    if out.exists():
        try:
            earlier = json.loads(out.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            earlier = None
        if not (isinstance(earlier, dict) and {"results", "machine", "settings"} <= set(earlier)):
            raise OutputError(f"--json {out} exists and is not a fusioncam bench result; it is left alone: choose "
                              f"another file name")
    check_writable_location(out, "--json")


def cmd_bench(args: argparse.Namespace) -> int:
    """fusioncam bench MODEL_OR_BUNDLE: measure, print the table, optionally write the JSON."""
    from ..atomic import write_text_atomic
    from ..benchmarking import BenchSettings, run_bench
    from ..benchmarking.table import bench_table
    from ..bundle_cache import bundle_for
    from ..progress import ProgressBar

    if args.json is not None:
        _check_json_out(Path(args.json))
    settings = BenchSettings(methods=args.methods, batch_sizes=args.batch_sizes, precisions=args.precision,
                             device=args.device, fast=args.fast, seconds=args.seconds, scorer_batch=args.batch,
                             compare=tuple(args.compare or ()))
    settings.check()
    size = tuple(args.input_size) if args.input_size else None
    bundle = bundle_for(args.model, args.layer, size, notify=say)
    torch_model = _torch_model(args.model, args.layer) if settings.compare else None
    total = len(settings.precisions) * (2 + len(settings.methods) * len(settings.batch_sizes))
    bar = ProgressBar(total)
    try:
        def progress(label: str) -> None:
            bar.advance(label)

        report = run_bench(bundle, settings, progress=progress, torch_model=torch_model)
    finally:
        bar.close()
    print(bench_table(report), end="", flush=True)
    if args.json is not None:
        write_text_atomic(Path(args.json), json.dumps(report, indent=2) + "\n")
        say(f"wrote {args.json}")
    return 0


def add_subcommands(sub) -> None:
    """Register `bench`."""
    from ..runtime.methods import METHODS

    bench = sub.add_parser("bench", help="measure explanation latency on this machine against the forward-pass floor")
    bench.add_argument("model", metavar="MODEL_OR_BUNDLE",
                       help="a bundle directory, an .onnx file, or efficientnet_lite0")
    bench.add_argument("--layer", help="target layer (default: the bundle's, or picked automatically for .onnx)")
    bench.add_argument("--methods", type=method_list, default=("fusion",),
                       help=f"comma-separated methods to time, any of {','.join(METHODS)} (default: fusion)")
    bench.add_argument("--batch-sizes", type=_positive_ints, default=(1, 8, 32), metavar="N,N,...",
                       help="images per explain call to time (default: 1,8,32)")
    bench.add_argument("--device", choices=DEVICES, default="auto")
    bench.add_argument("--precision", type=_precisions, default=("fp32",), metavar="P,P,...",
                       help="comma-separated, any of fp32, tf32 (CUDA), fp16 (the bundle's float16 scorer), int8 (its "
                            "INT8 scorer, CPU); one not available here is reported with its reason (default: fp32)")
    bench.add_argument("--fast", nargs="?", type=positive_int, const=DEFAULT_FAST_CHANNELS, metavar="K",
                       help=f"fast mode: the Score-CAM sweep scores only K channels (K default {DEFAULT_FAST_CHANNELS})")
    bench.add_argument("--batch", type=positive_int, help="masked images per scorer run (default: 16 CPU, 256 GPU)")
    bench.add_argument("--seconds", type=_positive_seconds, default=5.0, metavar="S",
                       help="time each measurement for S seconds, at least 3 runs, after a warm-up run (default: 5)")
    bench.add_argument("--compare", action="append", choices=("pytorch-grad-cam",),
                       help="also time pytorch-grad-cam's implementation of the same methods (a torch model: "
                            "efficientnet_lite0)")
    bench.add_argument("--json", metavar="OUT.json", help="write every number and the machine record here")
    bench.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                       help="input size for an .onnx model with a dynamic height/width")
    bench.set_defaults(run=cmd_bench)

"""The `explain-dataset` subcommand: it parses arguments and calls fusioncam.dataset.explain_dataset."""

from __future__ import annotations

import argparse

from ..cli.road_options import add_road_options, road_setting
from ..cli.shared import method_list, non_negative_int, positive_int, say
from ..interrupts import EXIT_INTERRUPTED
from ..metrics.perturbation_curves import DEFAULT_STEP
from ..runtime.methods import METHODS
from .crashes import CRASH_RETRIES
from .pipeline import DEFAULT_BATCH_IMAGES
from .rows import MAP_DTYPES


def _gpus(text: str) -> float:
    """--gpus-per-worker: 0 or a positive number (a fraction shares a GPU between workers)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive number of GPUs, got {text!r}")
    return int(value) if value.is_integer() else value


def _instances(args: argparse.Namespace):
    """A detection bundle's InstanceSelection from --min-score and --max-instances (None when neither is given)."""
    if args.min_score is None and args.max_instances is None:
        return None
    from ..tasks.detection import InstanceSelection

    defaults = InstanceSelection()
    return InstanceSelection(min_score=defaults.min_score if args.min_score is None else args.min_score,
                             max_instances=defaults.max_instances if args.max_instances is None else args.max_instances)


def cmd_explain_dataset(args: argparse.Namespace) -> int:
    """fusioncam explain-dataset INPUT... --model MODEL --out OUT: explain every image on Ray, Parquet out."""
    from .pipeline import explain_dataset
    from .ray_support import require_ray
    from ..run_lock import run_lock

    require_ray()  # before the model is exported: say how to install Ray first
    road_percentiles = road_setting(args, "--evaluate", args.evaluate)
    try:
        with run_lock(args.out):  # one run at a time into OUT: a second one is refused, naming this one's pid
            run = explain_dataset(args.inputs, args.model, out=args.out, methods=args.methods, evaluate=args.evaluate,
                                  workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                                  batch_images=args.batch_images, address=args.address, layer=args.layer,
                                  scorer_batch=args.batch, threads_per_worker=args.threads_per_worker, step=args.step,
                                  map_dtype=args.map_dtype, image_column=args.image_column, id_column=args.id_column,
                                  crash_retries=args.crash_retries, notify=say, instances=_instances(args),
                                  road_percentiles=road_percentiles)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM (cli.main turns both into KeyboardInterrupt)
        say(f"fusioncam explain-dataset: interrupted ({getattr(exc, 'signal_name', 'SIGINT')}); the finished "
             f"blocks are in {args.out}: run the same command again to continue")
        return EXIT_INTERRUPTED
    summary = run.summary
    print(run.markdown, end="")  # this run's own summary, not the file another run into OUT may have replaced
    say(f"explained {summary['explained']} of {summary['images']} image(s), {summary['errors']} error row(s); "
         f"results in {run.out}")
    return 0 if summary["errors"] == 0 else 1


def add_subcommands(sub) -> None:
    """Register explain-dataset on the parser's subparsers."""
    parser = sub.add_parser("explain-dataset", help="explain (and evaluate) a whole dataset on Ray: Parquet out, resumable")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="a folder (recursive), a glob, a .txt/.csv list of paths, a .parquet table with an image "
                             "column (bytes or paths), or an image; local paths or URIs (s3://...)")
    parser.add_argument("--model", required=True, help="a bundle directory, an .onnx file, or efficientnet_lite0")
    parser.add_argument("--out", required=True,
                        help="output folder: parts/*.parquet, summary.json, summary.md; a rerun resumes it")
    parser.add_argument("--methods", type=method_list, default=("fusion",),
                        help=f"comma-separated, any of {','.join(METHODS)} (default: fusion)")
    parser.add_argument("--evaluate", action="store_true",
                        help="also each method's Average Drop, Increase in Confidence, deletion and insertion AUC")
    parser.add_argument("--workers", type=positive_int, default=1, help="Ray actors, one Explainer each (default: 1)")
    parser.add_argument("--gpus-per-worker", type=_gpus, default=0,
                        help="GPUs per worker (default: 0, the CPU; then each worker gets cores/workers threads)")
    parser.add_argument("--batch-images", type=positive_int, default=DEFAULT_BATCH_IMAGES,
                        help=f"images per block, explained together and written as one part file "
                             f"(default: {DEFAULT_BATCH_IMAGES})")
    parser.add_argument("--address", help="Ray cluster to use: auto, or ray://HEAD:10001 (default: a local Ray)")
    parser.add_argument("--layer", help="target layer for an .onnx model (default: the bundle's, or automatic)")
    parser.add_argument("--batch", type=positive_int, help="masked images per scorer run (default: 16 CPU, 256 GPU)")
    parser.add_argument("--threads-per-worker", type=positive_int, help="ONNX Runtime threads per CPU worker")
    parser.add_argument("--step", type=positive_int, default=DEFAULT_STEP,
                        help=f"pixels per deletion/insertion step with --evaluate (default: {DEFAULT_STEP})")
    parser.add_argument("--map-dtype", choices=tuple(MAP_DTYPES), default="float16",
                        help="storage type of the maps (default: float16)")
    parser.add_argument("--image-column", help="an input table's image column (default: found by name and type)")
    parser.add_argument("--id-column", help="an input table's column naming each row (default: found by name, else "
                                            "the SHA-256 of the image bytes)")
    parser.add_argument("--crash-retries", type=non_negative_int, default=CRASH_RETRIES,
                        help=f"retries of a block whose worker process died; images that still crash alone become "
                             f"error rows (default: {CRASH_RETRIES})")
    parser.add_argument("--min-score", type=float, metavar="S",
                        help="detection bundles: explain each detection whose best class score is at least S "
                             "(default 0.25), after class-wise NMS; one row per instance")
    parser.add_argument("--max-instances", type=positive_int, metavar="K",
                        help="detection bundles: at most K detections per image, highest scores first (default 10)")
    add_road_options(parser, needs="--evaluate")
    parser.set_defaults(run=cmd_explain_dataset)

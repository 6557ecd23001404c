"""The `evaluate` subcommand: faithfulness metrics of each method's maps; it parses arguments and calls the API."""

from __future__ import annotations

import argparse

import numpy as np

DEFAULT_METHODS = ("gradcam", "scorecam", "fusion")
DEFAULT_OUT = "fusioncam-evaluation"


def _method_names(text: str) -> tuple[str, ...]:
    """--methods: comma-separated method names, in the order given, without repeats."""
    names = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    if not names:
        raise argparse.ArgumentTypeError(f"no method named in {text!r}; e.g. gradcam,scorecam,fusion")
    return names


def _preprocessed_inputs(inputs: list[str], manifest, say) -> tuple[np.ndarray, list[str], list[str], list[dict]]:
    """(images [N,3,H,W], names, input paths, skipped) of the given files, folders or globs, or of the five sample
    photos. A file that cannot be read is reported with `say` and skipped, as `explain` does; none readable is an
    InputError naming each file and why."""
    from .shared import expand_inputs
    from ..errors import FusionCamError, InputError
    from ..images import load_batch, preprocess, sample_images
    from ..report.explain_folder import unique_names

    if not inputs:
        samples = sample_images()
        batch = np.stack([preprocess(rgb, manifest.input_size, manifest.mean, manifest.std) for rgb in samples.values()])
        return batch, list(samples), [], []
    images, paths, skipped = [], [], []
    for path in expand_inputs(inputs):
        try:
            images.append(load_batch([path], manifest.input_size, manifest.mean, manifest.std)[0][0])
            paths.append(path)
        except FusionCamError as exc:
            skipped.append({"input": str(path), "error": str(exc)})
    if not images:
        raise InputError("no input could be read: " + "; ".join(f"{s['error']}" for s in skipped))
    for skip in skipped:
        say(f"skipped {skip['input']}: {skip['error']}")
    return np.stack(images), unique_names([p.name for p in paths]), [str(p) for p in paths], skipped


def cmd_evaluate(args: argparse.Namespace) -> int:
    """fusioncam evaluate [INPUTS...] [--model MODEL]: explain, measure AD/IC/deletion/insertion, write the report.

    Exit 0 when every image was evaluated, 1 when unreadable files were skipped, 130 when a signal stopped the run
    (the report covers the images finished, marked incomplete). The output folder is locked for the whole run: a
    second run into it is refused, naming this one's pid."""
    from ..run_lock import run_lock

    with run_lock(args.out):
        return _evaluate_into_locked_folder(args)


def _evaluate_into_locked_folder(args: argparse.Namespace) -> int:
    """cmd_evaluate's work, once the output folder is locked."""
    from .shared import expand_inputs, say
    from ..bundle_cache import bundle_for
    from ..report.evaluation import check_evaluation_folder, evaluate_images, metrics_table, write_evaluation_record
    from ..interrupts import EXIT_INTERRUPTED, active
    from ..metrics.evaluation import checked_methods
    from ..metrics.inputs import checked_step
    from ..runtime import Explainer
    from ..report.segmentation import parse_region
    from ..tasks.payloads import payloads_for

    from .road_options import road_setting

    methods = checked_methods(args.methods)
    road_percentiles = road_setting(args)
    region = parse_region(args.region)
    # Before the model loads (the folder itself is made only when the report is written, checked again then).
    out = check_evaluation_folder(args.out, [str(p) for p in expand_inputs(args.inputs)] if args.inputs else [])
    bundle = bundle_for(args.model, notify=say)
    manifest = bundle.manifest
    checked_step(args.step, manifest.input_size[0] * manifest.input_size[1])
    payloads = payloads_for(manifest)
    region = _instance_selection(args, manifest, region)
    if road_percentiles is not None:
        from ..metrics.road import refuse_road

        task = getattr(manifest, "task", "classification") or "classification"
        refuse_road(task, None if task == "classification" else road_percentiles)
    subject = payloads.evaluation_subject(region)  # what is measured; --region refused for classifiers
    images, names, labels, skipped = _preprocessed_inputs(args.inputs, manifest, say)
    explainer = Explainer(bundle, device=args.device, batch_size=args.batch)
    say(f"evaluating {', '.join(methods)} on {len(names)} image(s) ({explainer.device}, step {args.step})")
    run = evaluate_images(explainer, images, methods, names, args.step, region, road_percentiles)
    done = len(run.names)
    unit = getattr(payloads, "row_unit", "images")  # detection: one row per instance
    setup = (f"Model `{manifest.source}`, target layer `{manifest.target_layer}`, input "
             f"{manifest.input_size[0]}x{manifest.input_size[1]}, device {explainer.device}; n = {done} {unit} "
             f"({', '.join(run.names)}), each explained and measured for {subject}.")
    if run.interrupted:
        setup += (f" Incomplete: the run was interrupted ({run.interrupted}) after {len(names) - len(run.not_evaluated)} "
                  f"of {len(names)} images; "
                  f"not evaluated: {', '.join(run.not_evaluated)}.")
    with active().deferred():  # a signal now lets the record be written whole
        written = write_evaluation_record(out, run, setup, manifest, labels, skipped)
    if run.evaluation is not None:
        print(metrics_table(run.evaluation))
    if run.interrupted:
        say(f"fusioncam evaluate: interrupted ({run.interrupted}) after {len(names) - len(run.not_evaluated)} of {len(names)} image(s); "
             f"{out / 'results.json'} records what finished (marked incomplete)")
        return EXIT_INTERRUPTED
    say(f"wrote {', '.join(str(path) for path in written)}")
    return 1 if skipped else 0


def _instance_selection(args: argparse.Namespace, manifest, region):
    """A detection bundle's InstanceSelection (--min-score, --max-instances) in the place of the region; the two
    options are refused for other tasks, and --region for a detection bundle."""
    from ..errors import InputError
    from ..tasks.detection import InstanceSelection

    given = [flag for flag, value in (("--min-score", args.min_score), ("--max-instances", args.max_instances))
             if value is not None]
    task = getattr(manifest, "task", "classification") or "classification"
    if task != "detection":
        if given:
            raise InputError(f"{', '.join(given)} apply to detection bundles only; this model explains a {task} task")
        return region
    if region is not None:
        raise InputError("--region applies to segmentation bundles; a detection bundle explains its detections "
                         "(choose them with --min-score and --max-instances)")
    defaults = InstanceSelection()
    return InstanceSelection(min_score=defaults.min_score if args.min_score is None else args.min_score,
                             max_instances=defaults.max_instances if args.max_instances is None else args.max_instances)


def add_subcommands(sub) -> None:
    """Register the evaluate subcommand on the parser's subparsers."""
    from .road_options import add_road_options
    from .shared import DEVICES, positive_int
    from ..runtime.methods import METHODS

    evaluate = sub.add_parser("evaluate", help="faithfulness metrics (AD, IC, deletion, insertion) of each method")
    evaluate.add_argument("inputs", nargs="*", metavar="INPUT",
                          help="image files, folders (not recursive) or globs (default: the five sample photos)")
    evaluate.add_argument("--model", default="efficientnet_lite0",
                          help="a bundle directory, an .onnx file, or efficientnet_lite0 (default)")
    evaluate.add_argument("--methods", type=_method_names, default=DEFAULT_METHODS,
                          help=f"comma-separated methods to measure, any of {','.join(METHODS)} "
                               f"(default: {','.join(DEFAULT_METHODS)})")
    evaluate.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    evaluate.add_argument("--device", choices=DEVICES, default="auto")
    evaluate.add_argument("--batch", type=positive_int, help="images per scorer run (default: 16 CPU, 256 GPU)")
    evaluate.add_argument("--step", type=positive_int, default=224,
                          help="pixels removed or revealed per deletion/insertion step (default: 224)")
    evaluate.add_argument("--region", metavar="predicted|all|x0,y0,x1,y1",
                          help="segmentation bundles: where the class predicted on most pixels is explained and scored "
                               "(default: predicted, where the model predicts it); a box is in the model's input pixels")
    evaluate.add_argument("--min-score", type=float, metavar="S",
                          help="detection bundles: evaluate each detection whose best class score is at least S "
                               "(default 0.25), after class-wise NMS")
    evaluate.add_argument("--max-instances", type=positive_int, metavar="K",
                          help="detection bundles: at most K detections per image, highest scores first (default 10)")
    add_road_options(evaluate)
    evaluate.set_defaults(run=cmd_evaluate)

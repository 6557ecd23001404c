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


def _preprocessed_inputs(inputs: list[str], manifest) -> tuple[np.ndarray, list[str], list[str]]:
    """(images [N,3,H,W], names, input paths) of the given files, folders or globs, or of the five sample photos."""
    from .cli_explain import expand_inputs
    from .images import load_batch, preprocess, sample_images
    from .report import unique_names

    if inputs:
        paths = expand_inputs(inputs)
        batch, _ = load_batch(paths, manifest.input_size, manifest.mean, manifest.std)
        return batch, unique_names([p.name for p in paths]), [str(p) for p in paths]
    samples = sample_images()
    batch = np.stack([preprocess(rgb, manifest.input_size, manifest.mean, manifest.std) for rgb in samples.values()])
    return batch, list(samples), []


def cmd_evaluate(args: argparse.Namespace) -> int:
    """fusioncam evaluate [INPUTS...] [--model MODEL]: explain, measure AD/IC/deletion/insertion, write the report."""
    from .cli_explain import _say
    from .default_model import bundle_for
    from .evaluation_report import metrics_table, output_folder, write_evaluation
    from .metrics.evaluation import checked_methods, explain_and_evaluate
    from .metrics.inputs import checked_step
    from .runtime import Explainer

    methods = checked_methods(args.methods)
    bundle = bundle_for(args.model, notify=_say)
    manifest = bundle.manifest
    checked_step(args.step, manifest.input_size[0] * manifest.input_size[1])
    images, names, labels = _preprocessed_inputs(args.inputs, manifest)
    out = output_folder(args.out, labels)
    explainer = Explainer(bundle, device=args.device, batch_size=args.batch)
    _say(f"evaluating {', '.join(methods)} on {len(names)} image(s) ({explainer.device}, step {args.step})")
    evaluation = explain_and_evaluate(explainer, images, methods, names, args.step)
    setup = (f"Model `{manifest.source}`, target layer `{manifest.target_layer}`, input "
             f"{manifest.input_size[0]}x{manifest.input_size[1]}, device {explainer.device}; n = {len(names)} images "
             f"({', '.join(names)}), each explained and measured for its top class.")
    written = write_evaluation(out, evaluation, setup, manifest.class_names)
    print(metrics_table(evaluation))
    _say(f"wrote {', '.join(str(path) for path in written.values())}")
    return 0


def add_subcommands(sub) -> None:
    """Register the evaluate subcommand on the parser's subparsers."""
    from .cli_explain import DEVICES, _positive
    from .runtime.methods import METHODS

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
    evaluate.add_argument("--batch", type=_positive, help="images per scorer run (default: 16 CPU, 256 GPU)")
    evaluate.add_argument("--step", type=_positive, default=224,
                          help="pixels removed or revealed per deletion/insertion step (default: 224)")
    evaluate.set_defaults(run=cmd_evaluate)

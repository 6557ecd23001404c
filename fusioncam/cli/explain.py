"""The `explain` subcommand: image files, folders or globs explained with a model into an output folder."""

from __future__ import annotations

import argparse

from ..errors import InputError
from ..runtime.channel_selection import DEFAULT_FAST_CHANNELS
from ..runtime.explainer import PRECISIONS
from ..runtime.methods import METHODS
from ..runtime.methods.compat import COMPAT_MODES
from ..runtime.int8_sweep import DEFAULT_INT8_RESCORE
from .shared import DEVICES, expand_inputs, finish, method_list, non_negative_int, positive_int, say


def cmd_explain(args: argparse.Namespace) -> int:
    """fusioncam explain INPUTS... --model MODEL: explain image files into an output folder."""
    from ..bundle_cache import bundle_for
    from ..report.explain_folder import check_output_dir, explain_into_folder, file_sources
    from ..run_lock import run_lock
    from ..runtime import Explainer
    from ..runtime.several_layers import check_several_layer_methods

    sources = file_sources(expand_inputs(args.inputs))
    with run_lock(args.out):  # one run at a time into the folder: a second one is refused, naming this one's pid
        check_output_dir(args.out, sources, args.methods)  # before the model loads
        size = tuple(args.input_size) if args.input_size else None
        explainer = Explainer(bundle_for(args.model, args.layer, size, notify=say), device=args.device,
                              batch_size=args.batch, precision=args.precision, max_channels=args.fast,
                              compat=args.compat, int8_rescore=args.int8_rescore)
        check_several_layer_methods(explainer.bundle, args.methods)  # before any image: FullGrad, ShapleyCAM
        if args.region is not None and not explainer.segmentation:
            raise InputError("--region applies to segmentation bundles only; this model explains image classes")
        from ..report.segmentation import parse_region

        summary = explain_into_folder(explainer, sources, args.out, target=args.target, methods=args.methods,
                                      colormap=args.colormap, regions=parse_region(args.region),
                                      instances=instance_selection(args, explainer.task.name))
    return finish(summary)


def instance_selection(args: argparse.Namespace, task: str):
    """A detection bundle's InstanceSelection from --min-score and --max-instances (defaults 0.25 and 10); None for
    other tasks, which refuse the two options and --target's place is taken by the instances."""
    from ..tasks.detection import InstanceSelection

    given = [flag for flag, value in (("--min-score", args.min_score), ("--max-instances", args.max_instances))
             if value is not None]
    if task != "detection":
        if given:
            raise InputError(f"{', '.join(given)} apply to detection bundles only; this model explains a {task} task")
        return None
    if args.target is not None:
        raise InputError("--target does not apply to a detection bundle: it explains each detection the model keeps "
                         "(choose them with --min-score and --max-instances)")
    defaults = InstanceSelection()
    return InstanceSelection(min_score=defaults.min_score if args.min_score is None else args.min_score,
                             max_instances=defaults.max_instances if args.max_instances is None else args.max_instances)


def add_subcommands(sub) -> None:
    """Register `explain`."""
    explain = sub.add_parser("explain", help="explain image files, folders or globs with a model")
    explain.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (not recursive) or globs")
    explain.add_argument("--model", required=True, help="a bundle directory, an .onnx file, or efficientnet_lite0")
    explain.add_argument("--layer", help="target layer (default: the bundle's, or picked automatically for .onnx)")
    explain.add_argument("--target", help="class to explain: an index (negative counts from the end: -1 is the last "
                                          "class), a class name, or top (the default: each image's top class)")
    explain.add_argument("--out", default="fusioncam-out", help="output folder (default: fusioncam-out)")
    explain.add_argument("--device", choices=DEVICES, default="auto")
    explain.add_argument("--batch", type=positive_int, help="masked images per scorer run (default: 16 CPU, 256 GPU)")
    explain.add_argument("--precision", choices=PRECISIONS, default="fp32",
                         help="fp32 (exact, default); tf32 (CUDA: TF32 convolutions); fp16 (the bundle's float16 "
                              "scorer: export it with --fp16-scorer); int8 (CPU: the bundle's INT8 scorer: export it "
                              "with --int8-scorer)")
    explain.add_argument("--int8-rescore", type=non_negative_int, metavar="M",
                         help="with --precision int8: the Score-CAM sweep's M channels per image with the highest INT8 "
                              f"scores rescored in float32 (default {DEFAULT_INT8_RESCORE}; 0: every sweep forward INT8)")
    explain.add_argument("--fast", nargs="?", type=positive_int, const=DEFAULT_FAST_CHANNELS, metavar="K",
                         help="fast mode, beyond the paper: Score-CAM scores only the K channels with the largest "
                              f"Grad-CAM contribution, the others get weight 0 (K default {DEFAULT_FAST_CHANNELS})")
    explain.add_argument("--methods", type=method_list, default=("fusion",),
                         help=f"methods to write an overlay and a .npy map for, comma-separated: any of "
                              f"{','.join(METHODS)} (default: fusion); only these are computed, and the panel "
                              f"shows them (with fusion also the Grad-CAM and Score-CAM it combines)")
    explain.add_argument("--compat", choices=COMPAT_MODES,
                         help="pytorch-grad-cam: its Grad-CAM++ (1e-6 in alpha's denominator) and Score-CAM "
                              "(align_corners=True masks, ReLU before upsampling) instead of the authors' "
                              "arithmetic; Fusion-CAM and Union-CAM then build on that Score-CAM")
    explain.add_argument("--colormap", default="jet", help="OpenCV colormap name (jet, turbo, inferno, viridis, ...)")
    explain.add_argument("--region", metavar="predicted|all|x0,y0,x1,y1",
                         help="segmentation bundles: where --target is explained: where the model predicts it "
                              "(predicted, the default), the whole image (all), or a box in the model's input pixels")
    explain.add_argument("--min-score", type=float, metavar="S",
                         help="detection bundles: explain the detections whose best class score is at least S "
                              "(default 0.25), after class-wise NMS")
    explain.add_argument("--max-instances", type=positive_int, metavar="K",
                         help="detection bundles: explain at most K detections per image, highest scores first "
                              "(default 10)")
    explain.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                         help="input size for an .onnx model with a dynamic height/width")
    explain.set_defaults(run=cmd_explain)

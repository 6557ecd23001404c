"""The `export` subcommand: a bundle (explain graph + scorer) from an ONNX file or a named PyTorch model."""

from __future__ import annotations

import argparse
from pathlib import Path


def _model_source(model: str) -> str:
    """'onnx' for a .onnx path, 'named' for efficientnet_lite0 or a torchvision name."""
    return "onnx" if model.lower().endswith(".onnx") or Path(model).is_file() else "named"


def cmd_export(args: argparse.Namespace) -> int:
    """fusioncam export MODEL --layer NAME --out DIR"""
    from ..export import export_onnx, export_torch
    from ..export.model_zoo import named_model

    from ..bundle import check_bundle_destination
    from ..errors import InputError
    from ..file_reading import not_regular_reason

    for what, given in (("model", args.model), ("--weights", args.weights)):
        reason = not_regular_reason(given) if given else None
        if reason is not None:  # a FIFO would block the export, a device never ends
            raise InputError(f"{what} {given!r} is not a regular file (it is {reason}); give a model file")
    check_bundle_destination(args.out, [p for p in (args.model, args.weights) if p and Path(p).exists()])
    args.layer = target_layers(args.layer)
    size = tuple(args.input_size) if args.input_size else None
    preprocessing = _preprocessing_options(args)
    layout = {"output": args.output, "token_grid": tuple(args.token_grid) if args.token_grid else None,
              "prefix_tokens": args.prefix_tokens, "channels_last": True if args.channels_last else None}
    if args.layout is not None:  # a detector's raw output layout (export refuses it without --task detection)
        layout["layout"] = args.layout
    if args.segmentation:
        if args.int8_scorer:
            raise InputError("--int8-scorer applies to classifier bundles; leave it out for --segmentation")
        result = _export_segmentation(args, size, preprocessing)
    elif _model_source(args.model) == "onnx":  # --task, or the task found from the model's outputs
        result = export_onnx(args.model, args.out, args.layer, input_size=size, fp16_scorer=args.fp16_scorer,
                             task=args.task, **preprocessing, **layout, **_int8_options(args))
    else:
        named = named_model(args.model, args.weights)
        layer = args.layer or named.default_layer  # None: the automatic target (describe() says which)
        preprocessing.setdefault("class_names", named.class_names)
        result = export_torch(named.module, layer, args.out, input_size=size or named.input_size,
                              fp16_scorer=args.fp16_scorer, task=args.task, **preprocessing, **layout,
                              **_int8_options(args))
    print(result.describe())
    return 0


def target_layers(given: list[str] | str | None) -> str | list[str] | None:
    """--layer as export takes it: None (automatic), one name, or several (the option repeated, or names separated by
    commas) for one bundle with every layer's maps from one explain pass."""
    if given is None:
        return None
    names = [name.strip() for value in ([given] if isinstance(given, str) else given) for name in value.split(",")
             if name.strip()]
    if not names:
        return None
    return names[0] if len(names) == 1 else names


def _preprocessing_options(args: argparse.Namespace) -> dict:
    """--mean/--std (three numbers each, the model's normalisation of RGB/255; with --bgr of BGR/255, in that order),
    --bgr, and --class-names FILE (one name per
    line, UTF-8, as YOLO's coco.names or ImageNet label lists are written): only the ones given, so each exporter
    keeps its own defaults for the rest (ImageNet statistics for classifiers, 0 and 1 for YOLO detectors)."""
    options: dict = {}
    if args.mean is not None:
        options["mean"] = tuple(args.mean)
    if args.std is not None:
        options["std"] = tuple(args.std)
    if args.class_names is not None:
        options["class_names"] = read_class_names(args.class_names)
    if args.bgr:
        from ..errors import InputError

        if _model_source(args.model) != "onnx":
            raise InputError("--bgr applies to .onnx models (their graph gets the channel flip); a PyTorch model's "
                             "preprocessing is its own")
        options["bgr"] = True
    return options


def read_class_names(path: str) -> list[str]:
    """The class names in a text file, one per line (blank lines at the end ignored), or an InputError naming the
    file and what is wrong with it."""
    from ..errors import InputError
    from ..file_reading import not_regular_reason

    reason = not_regular_reason(path)
    if reason is not None:
        raise InputError(f"--class-names {path!r} is not a regular file (it is {reason}); give a text file with "
                         f"one class name per line")
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"--class-names {path!r} does not exist; give a text file with one class name per line") from None
    except UnicodeDecodeError as error:
        raise InputError(f"--class-names {path!r} is not UTF-8 text (byte {error.start}); give a text file with one "
                         f"class name per line") from None
    except OSError as error:
        raise InputError(f"--class-names {path!r} cannot be read: {error.strerror}") from None
    names = [line.strip() for line in text.splitlines()]
    while names and not names[-1]:
        names.pop()
    empty = [str(number) for number, name in enumerate(names, start=1) if not name]
    if not names:
        raise InputError(f"--class-names {path!r} holds no class names; write one name per line")
    if empty:
        raise InputError(f"--class-names {path!r} has empty lines between names (line {', '.join(empty[:5])}); "
                         f"every class needs a name, one per line, in class-index order")
    return names


def _int8_options(args: argparse.Namespace) -> dict:
    """--int8-scorer [--calibration IMAGES]: the INT8 scorer options of a classifier export (none when not asked)."""
    from ..errors import InputError

    if args.calibration and not args.int8_scorer:
        raise InputError("--calibration gives the images the INT8 scorer is calibrated on; add --int8-scorer")
    return {"int8_scorer": True, "calibration": args.calibration or None} if args.int8_scorer else {}


def _export_segmentation(args: argparse.Namespace, size, preprocessing: dict):
    """fusioncam export MODEL.onnx --segmentation: a segmentation bundle (docs/segmentation.md)."""
    from ..errors import InputError
    from ..export import export_onnx_segmentation

    if _model_source(args.model) != "onnx":
        raise InputError("--segmentation exports .onnx files; export a PyTorch segmentation model from Python with "
                         "fusioncam.export_torch_segmentation(model, layer, out)")
    from ..export.task_routing import one_target_layer

    return export_onnx_segmentation(args.model, args.out, one_target_layer(args.layer, "segmentation"),
                                    input_size=size, fp16_scorer=args.fp16_scorer, **preprocessing)


def add_subcommands(sub) -> None:
    """Register `export`."""
    export = sub.add_parser("export", help="make a bundle (explain graph + scorer) from a model")
    export.add_argument("model", help="a .onnx file, 'efficientnet_lite0', or a torchvision model name (with --weights)")
    export.add_argument("--layer", action="append",
                        help="target layer: a module path (PyTorch) or tensor name (ONNX); default: automatic. Several "
                             "(--layer a --layer b, or a,b): one bundle with every layer's maps from one explain pass "
                             "(classifiers; the maps are aggregated as pytorch-grad-cam does with several layers)")
    export.add_argument("--out", required=True, help="bundle directory to write")
    export.add_argument("--weights", help="state dict file for a torchvision model (loaded with weights_only=True)")
    export.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="input height and width")
    export.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"),
                        help="the model's per-channel mean of RGB/255 (default: ImageNet's; YOLO detectors 0 0 0)")
    export.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"),
                        help="the model's per-channel standard deviation of RGB/255 (default: ImageNet's; YOLO 1 1 1)")
    export.add_argument("--bgr", action="store_true",
                        help="the model takes B, G, R channels (--mean/--std then in that order); the bundle takes "
                             "RGB images and reverses the channels in its graphs")
    export.add_argument("--class-names", metavar="FILE",
                        help="a text file with one class name per line, in class-index order (default: the model's "
                             "own where it carries them: Ultralytics metadata, torchvision weights)")
    export.add_argument("--fp16-scorer", action="store_true", help="also write a float16 scorer (explain with --precision fp16)")
    export.add_argument("--int8-scorer", action="store_true",
                        help="also write an INT8 scorer (ONNX Runtime static quantization, QDQ; explain with "
                             "--precision int8 on the CPU)")
    export.add_argument("--calibration", nargs="+", metavar="IMAGES",
                        help="image files, folders or globs the INT8 scorer is calibrated on (default: the five "
                             "sample photos)")
    export.add_argument("--segmentation", action="store_true",
                        help="the .onnx model outputs per-pixel class scores [N,C,H,W]: a segmentation bundle (explain "
                             "a class over a region: fusioncam explain --target CLASS --region ...)")
    export.add_argument("--task", choices=("classification", "segmentation", "detection"),
                        help="what the model is (default: found from its outputs: class scores [N,C] classification, "
                             "per-pixel [N,C,H,W] segmentation; detection is never found: give it with --layout)")
    export.add_argument("--layout", choices=("yolov8", "yolov5"),
                        help="with --task detection: the raw output before NMS, yolov8 [N,4+C,A] (Ultralytics "
                             "YOLOv8/YOLO11) or yolov5 [N,A,5+C] (YOLOv5/YOLOX, with objectness); default yolov8")
    export.add_argument("--output", help="the model output holding the class scores, when it has several (default: the first)")
    export.add_argument("--token-grid", type=int, nargs=2, metavar=("H", "W"), help="the target's tokens form an HxW grid")
    export.add_argument("--prefix-tokens", type=int, metavar="K", help="the target's first K tokens are not patches (class, registers)")
    export.add_argument("--channels-last", action="store_true", help="the target tensor is [N,h,w,C]")
    export.set_defaults(run=cmd_export)

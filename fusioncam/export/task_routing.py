"""Which task a model is, and the export rule that makes its bundle: `export_torch` and `export_onnx` for every task.

The task is found from the model's class scores: [N, C] is a classifier, per-pixel [N, C, H', W'] a segmentation
model (fusioncam/tasks/). `task=` says it instead. Each task's export rule writes the graphs that take its targets:
classifiers in torch_export.py / onnx_export.py, segmentation models in segmentation_export.py (whose
`export_torch_segmentation` / `export_onnx_segmentation` are the same as `task="segmentation"`). A new task adds
its rule to EXPORT_TASKS and its rank (or other sign) to `onnx_task`.
"""

from __future__ import annotations

import os

import onnx

from .. import arguments
from ..errors import InputError, LayerError
from .bundle_builder import ExportResult

EXPORT_TASKS = ("classification", "segmentation", "detection")
CLASSIFIER_ONLY = ("output", "target_output", "token_grid", "prefix_tokens", "channels_last", "reshape", "int8_scorer",
                   "calibration")
SCORE_RANKS = {2: "classification", 4: "segmentation"}  # the class scores' rank -> task


def checked_task(task) -> str | None:
    """task as given (None: find it from the model), or an InputError naming the tasks export knows."""
    if task is None or (isinstance(task, str) and task in EXPORT_TASKS):
        return task
    raise InputError(f"task={task!r} is not one fusioncam exports; give None (found from the model's outputs: "
                     f"[N, C] classification, [N, C, H', W'] segmentation) or one of {', '.join(EXPORT_TASKS)} "
                     f"(detection is never found: give task='detection' and the output's layout)")


def _detection_layout(task: str | None, options: dict):
    """The `layout` option (detection exports only), taken out of `options`."""
    layout = options.pop("layout", None)
    if layout is not None and task != "detection":
        raise InputError(f"layout= applies to task='detection' (a detector's raw output layout); got task={task!r}")
    return layout


def _refuse_classifier_options(options: dict) -> None:
    """Options that describe a classifier's outputs or token targets do not apply to a segmentation export."""
    given = [name for name in CLASSIFIER_ONLY if options.get(name) is not None]
    if given:
        raise InputError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to classifier exports; this is a "
                         f"segmentation model (per-pixel class scores [N, C, H', W']): leave "
                         f"{'it' if len(given) == 1 else 'them'} out")


def onnx_task(model_path: str | os.PathLike, output: str | None = None) -> str:
    """The task of an ONNX model from the rank of its class-score output (`output`, default the first): 4 is
    segmentation; anything else (2, or a rank the graph does not declare) is left to the classifier rule, which
    checks it with its own errors."""
    try:
        graph = onnx.load(str(model_path), load_external_data=False).graph
    except Exception:  # unreadable: the classifier rule's loader says why, with its own error
        return "classification"
    outputs = [out for out in graph.output if output is None or out.name == output]
    if not outputs or not outputs[0].type.tensor_type.HasField("shape"):
        return "classification"
    return SCORE_RANKS.get(len(outputs[0].type.tensor_type.shape.dim), "classification")


def export_torch(model, target_layer: str | list[str] | None, out: str | os.PathLike,
                 input_size: tuple[int, int] = (224, 224),
                 mean=None, std=None, class_names: list[str] | None = None, fp16_scorer: bool = False, *,
                 task: str | None = None, **options) -> ExportResult:
    """A bundle from a torch.nn.Module of any task (see fusioncam.export.torch_export.export_torch for the classifier
    options): `task` None finds it from what the model returns (class scores [N, C] or [N, C, H', W'])."""
    from .segmentation_export import export_torch_segmentation
    from .torch_export import PerPixelScores, export_torch as export_torch_classifier

    task = checked_task(task)
    layout = _detection_layout(task, options)
    if task == "segmentation":
        target_layer = one_target_layer(target_layer, task)
    if task == "detection":
        from .detection_torch import export_torch_detection

        _refuse_classifier_options(options)
        return export_torch_detection(model, target_layer, out, input_size, layout=layout, mean=mean, std=std,
                                      class_names=class_names, fp16_scorer=fp16_scorer)
    common = dict(input_size=input_size, class_names=class_names, fp16_scorer=fp16_scorer,
                  **{name: value for name, value in (("mean", mean), ("std", std)) if value is not None})
    if task == "segmentation":
        _refuse_classifier_options(options)
        return export_torch_segmentation(model, target_layer, out, **common)
    try:
        return export_torch_classifier(model, target_layer, out, **common, **options)
    except PerPixelScores:
        if task is not None:  # task="classification" was asked for: its error stands
            raise
    _refuse_classifier_options(options)
    return export_torch_segmentation(model, one_target_layer(target_layer, "segmentation"), out, **common)


def one_target_layer(target_layer, task: str):
    """`target_layer` for a task whose bundles explain one layer: a LayerError for several (a list of two or more),
    the single name of a one-element list."""
    if isinstance(target_layer, (list, tuple)):
        if len(target_layer) != 1:
            raise LayerError(f"several target layers ({', '.join(map(str, target_layer))}) in one bundle are for "
                             f"classifiers and detectors; a {task} bundle explains one layer: export one bundle per "
                             f"layer")
        return target_layer[0]
    return target_layer


def export_onnx(model_path: str | os.PathLike, out: str | os.PathLike, target_layer: str | list[str] | None = None, *,
                task: str | None = None, **options) -> ExportResult:
    """A bundle from an `.onnx` model of any task (see fusioncam.export.onnx_export.export_onnx for the options):
    `task` None finds it from the rank of the model's class-score output."""
    from .onnx_export import export_onnx as export_onnx_classifier
    from .segmentation_export import export_onnx_segmentation

    task = checked_task(task)
    arguments.path("model_path", model_path)
    layout = _detection_layout(task, options)
    if task == "detection":
        from .detection_export import export_onnx_detection

        _refuse_classifier_options({name: value for name, value in options.items() if name != "output"})
        rule_options = {name: value for name, value in options.items()
                        if name not in CLASSIFIER_ONLY or name == "output"}
        return export_onnx_detection(model_path, out, target_layer, layout=layout or "yolov8", **rule_options)
    if task is None:
        task = onnx_task(model_path, options.get("output"))
    if task == "segmentation":
        target_layer = one_target_layer(target_layer, task)
        _refuse_classifier_options(options)  # given ones are refused; the others (None) are not the rule's
        rule_options = {name: value for name, value in options.items() if name not in CLASSIFIER_ONLY}
        return export_onnx_segmentation(model_path, out, target_layer, **rule_options)
    return export_onnx_classifier(model_path, out, target_layer, **options)


__all__ = ["EXPORT_TASKS", "checked_task", "export_onnx", "export_torch", "onnx_task"]

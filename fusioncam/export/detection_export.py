"""`export_onnx_detection`: a dense one-stage detector's ONNX file (raw head output, before NMS) becomes a bundle
of task "detection" (fusioncam/tasks/detection.py; graphs in detection_graph.py).

A user points fusioncam at an ONNX file exported elsewhere by giving its output layout: "yolov8" for Ultralytics
YOLOv8/YOLO11 files (`yolo export format=onnx`, output [1, 4+C, A]), "yolov5" for YOLOv5/YOLOX files ([1, A, 5+C]).
The file must have a dynamic batch axis (Ultralytics: `dynamic=True`) and no NMS inside (Ultralytics' default;
`nms=True` files are refused by the layout check). Ultralytics metadata (task, names, imgsz, stride) is read: names
become the class names and imgsz the input size unless given; the description says so.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .. import arguments
from ..bundle import Bundle, check_bundle_destination
from ..errors import ModelLoadError
from ..graph_names import ANCHOR, DETECTION_SCORES, INPUT, INSTANCE_IMAGE, REFERENCE_BOX, SCORE, TARGET
from .bundle_builder import (FP16_SCORER_TOLERANCE, ExportResult, _cpu_session, bundle_manifest, layer_entries,
                             run_explain_once, write_checked_graphs)
from .detection_graph import (LAYOUTS, Detector, auto_detection_target, build_detection_explain, build_detection_scorer,
                              checked_layout, metadata_note, prepare_detector)
from .channel_order import bundle_statistics, reverse_input_channels, with_bgr_note
from .feature_levels import target_list
from .layers import Layer, resolve_target
from .onnx_loading import load_onnx

DETECTION = "detection"
YOLO_MEAN = (0.0, 0.0, 0.0)  # Ultralytics models take RGB / 255
YOLO_STD = (1.0, 1.0, 1.0)
SCORE_SLACK = 1e-4  # activated class scores lie in [0, 1]; float rounding aside


def _scorer_feed(detector: Detector, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    height, width = detector.input_size
    return {INPUT: rng.random((2, 3, height, width)).astype(np.float32),
            TARGET: np.arange(2, dtype=np.int64) % detector.num_classes,
            REFERENCE_BOX: np.array([[0, 0, width / 2, height / 2], [width / 4, height / 4, width, height]],
                                    np.float32)}


def _check_scorer(scorer: Path, detector: Detector, origin: str):
    """The scorer at N=2 and N=1 (a batch-1 graph or one mixing images is refused); returns the session."""
    session = _cpu_session(scorer, origin, "scorer")
    feed = _scorer_feed(detector, 0)
    try:
        together = session.run([SCORE], feed)[0]
        alone = np.concatenate([session.run([SCORE], {k: v[i : i + 1] for k, v in feed.items()})[0] for i in range(2)])
    except Exception as exc:
        raise ModelLoadError(f"{origin}: the detector does not run with a batch of 2 images "
                             f"({str(exc).splitlines()[0]}); export it with a dynamic batch axis (Ultralytics: "
                             f"dynamic=True)") from None
    if together.shape != alone.shape or float(np.abs(together - alone).max()) > 1e-4:
        raise ModelLoadError(f"{origin}: scores of a batch of 2 differ from those of each image alone; the model "
                             f"mixes the images of a batch. Export it in inference mode with a dynamic batch.")
    return session


def _check_fp16_scorer(scorer_session, scorer_fp16: Path, detector: Detector, origin: str) -> None:
    feed = _scorer_feed(detector, 2)
    expected = scorer_session.run([SCORE], feed)[0]
    session = _cpu_session(scorer_fp16, origin, "float16 scorer")
    half = {name: value.astype(np.float16) if value.dtype == np.float32 else value for name, value in feed.items()}
    got = session.run([SCORE], half)[0].astype(np.float32)
    error = float(np.abs(got - expected).max()) if np.isfinite(got).all() else float("inf")
    if error > FP16_SCORER_TOLERANCE:
        raise ModelLoadError(f"{origin}: the float16 scorer's scores differ from float32 by up to {error:.3g} "
                             f"(limit {FP16_SCORER_TOLERANCE}); export without fp16_scorer")


def _check_explain(explain: Path, detector: Detector, origin: str) -> None:
    rng = np.random.default_rng(1)
    height, width = detector.input_size
    feed = {INPUT: rng.random((2, 3, height, width)).astype(np.float32),
            ANCHOR: np.array([0, detector.num_anchors - 1], np.int64),
            TARGET: np.array([0, detector.num_classes - 1], np.int64),
            REFERENCE_BOX: np.array([[0, 0, width, height]] * 2, np.float32), INSTANCE_IMAGE: np.arange(2)}
    run_explain_once(explain, feed, origin)
    scores = _cpu_session(explain, origin, "explain").run([DETECTION_SCORES], feed)[0]
    low, high = float(np.min(scores)), float(np.max(scores))
    if low < -SCORE_SLACK or high > 1 + SCORE_SLACK:  # a layout mismatch reads boxes or logits as scores
        raise ModelLoadError(
            f"{origin}: read in layout {detector.layout!r}, the class scores of two test images span [{low:.3g}, "
            f"{high:.3g}], not [0, 1]: the output is not in that layout ({', '.join(LAYOUTS)}: give the one the "
            f"file was exported in), or its scores are not activated (export the model with its sigmoid)")


ONNX_PICKING_RULE = ("the last 4-D feature map with spatial size > 1 whose channel count is not a per-level "
                     "prediction's or its parts' (1, 2, 4, C, C + 1, C + 4, C + 5)")


def write_detection_bundle(detector: Detector, layer: Layer | list[Layer], out, *, target_label: str | list[str],
                           source: str, source_sha256: str, mean, std, class_names, picked_automatically: bool,
                           fp16_scorer: bool, picking_rule: str = ONNX_PICKING_RULE,
                           nms_iou_threshold: float | None = None) -> ExportResult:
    """Build, check and write the detection bundle atomically. The manifest's output_size is (A, C): the anchors
    and classes of the per-anchor class scores; nms_iou_threshold is the model's own NMS IoU threshold (None: the
    model does not say), which the default instance selection uses. Several layers (lists of layers and labels, e.g.
    a feature pyramid's levels): one explain graph for all, the further ones in the manifest's extra_layers."""
    layers, labels, extra = layer_entries(layer, target_label, source)
    manifest = bundle_manifest(detector, layers[0], target_label=labels[0], source=source,
                               source_sha256=source_sha256, mean=mean, std=std, class_names=class_names,
                               task=DETECTION, output_size=(detector.num_anchors, detector.num_classes),
                               **({"extra_layers": extra} if extra else {}))
    manifest.nms_iou_threshold = None if nms_iou_threshold is None else float(nms_iou_threshold)
    write_checked_graphs(out, manifest, detector, layers if extra else layers[0], fp16_scorer, source, detector,
                         builders=(build_detection_scorer, build_detection_explain),
                         checks=(_check_scorer, _check_fp16_scorer, _check_explain))
    notes = (f"detection layout {detector.layout}: {detector.num_anchors} anchors, {detector.num_classes} classes, "
             f"cut before NMS", metadata_note(detector), detector.output_note,
             "" if nms_iou_threshold is None else f"default instances: NMS at the model's own IoU threshold "
                                                  f"{float(nms_iou_threshold):g}",
             f"{len(layers)} target layers, one map per method and instance from theirs, each layer weighted by its "
             f"attribution sum |A x dS/dA| to the instance's score (a level the instance does not read weighs 0)"
             if extra else "")
    return ExportResult(bundle=Bundle(path=Path(out), manifest=manifest), layer=layers[0],
                        picked_automatically=picked_automatically, notes=tuple(note for note in notes if note),
                        picking_rule=picking_rule, layers=tuple(layers) if extra else ())


def export_onnx_detection(
    model_path: str | os.PathLike,
    out: str | os.PathLike,
    target_layer: str | list[str] | None = None,
    *,
    layout: str = "yolov8",
    input_size: tuple[int, int] | None = None,
    mean=None,
    std=None,
    class_names: list[str] | None = None,
    fp16_scorer: bool = False,
    output: str | None = None,
    bgr: bool = False,
) -> ExportResult:
    """Make a detection bundle from an `.onnx` detector whose output `output` (default: the first) is the raw head
    output in `layout` ("yolov8" [N, 4+C, A] or "yolov5" [N, A, 5+C], boxes cx, cy, w, h in input pixels).

    mean/std default to 0 and 1 (RGB / 255, as YOLO models take it); class names and input size default to the
    file's Ultralytics metadata where it has them. `target_layer` is a tensor name, or several (a list: e.g. the
    neck's output levels, one bundle whose maps are combined); None picks the last feature map that is not a
    per-level prediction (see describe()). `bgr`: the model takes its channels in B, G, R order (mean/std then in
    that order too); the bundle takes RGB, its graphs reverse the channels (channel_order.py)."""
    arguments.path("model_path", model_path)
    targets = target_list(target_layer)
    layout = checked_layout(layout)
    check_bundle_destination(out, [model_path])  # before any work: never replace what fusioncam did not write
    source = load_onnx(model_path)
    model = reverse_input_channels(source.model, source.origin) if bgr else source.model
    detector = prepare_detector(model, source.origin, layout, input_size, output)
    if class_names is None and detector.metadata and isinstance(detector.metadata.get("names"), list):
        class_names = list(detector.metadata["names"])
    layers = ([resolve_target(detector, name) for name in targets] if targets is not None
              else [auto_detection_target(detector)])
    mean, std = YOLO_MEAN if mean is None else mean, YOLO_STD if std is None else std
    if bgr:
        mean, std = bundle_statistics(mean, std, given_mean=mean is not YOLO_MEAN, given_std=std is not YOLO_STD)
    result = write_detection_bundle(
        detector, layers, out, target_label=[layer.name for layer in layers], source=str(model_path),
        source_sha256=source.sha256, mean=mean, std=std, class_names=class_names,
        picked_automatically=target_layer is None, fp16_scorer=fp16_scorer)
    return with_bgr_note(result) if bgr else result


__all__ = ["DETECTION", "export_onnx_detection", "write_detection_bundle"]

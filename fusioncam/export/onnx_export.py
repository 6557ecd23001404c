"""`export_onnx` and `list_layers` for plain ONNX classifiers: no PyTorch needed."""

from __future__ import annotations

import os

from .. import arguments
from ..bundle import check_bundle_destination
from ..errors import LayerError
from .bundle_builder import IMAGENET_MEAN, IMAGENET_STD, ExportResult, write_classifier_bundle
from .classifier_graph import Classifier, prepare_classifier
from .layers import Layer, auto_target, candidate_layers, resolve_target
from .map_reach import MapReach
from .target_layout import LayoutRequest
from .onnx_loading import load_onnx
from .channel_order import bundle_statistics, reverse_input_channels, with_bgr_note


def load_classifier(model_path: str | os.PathLike, input_size: tuple[int, int] | None = None,
                    output: str | None = None, bgr: bool = False) -> tuple[Classifier, str]:
    """Load and prepare an ONNX classifier (class scores from graph output `output`, default the first; `bgr`: its
    input channels reversed in the graph, channel_order.py); return it with its source hash."""
    source = load_onnx(model_path)
    model = reverse_input_channels(source.model, source.origin) if bgr else source.model
    return prepare_classifier(model, source.origin, input_size, output), source.sha256


def export_onnx(
    model_path: str | os.PathLike,
    out: str | os.PathLike,
    target_layer: str | list[str] | None = None,
    *,
    input_size: tuple[int, int] | None = None,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    class_names: list[str] | None = None,
    fp16_scorer: bool = False,
    output: str | None = None,
    token_grid: tuple[int, int] | None = None,
    prefix_tokens: int | None = None,
    channels_last: bool | None = None,
    int8_scorer: bool = False,
    calibration=None,
    bgr: bool = False,
) -> ExportResult:
    """Make a bundle from an `.onnx` classifier; `target_layer` is a tensor name, None picks one (see describe()).

    `fp16_scorer` also writes a float16 scorer (scorer_fp16.onnx) for `Explainer(precision="fp16")`; `int8_scorer` an
    INT8 scorer (scorer_int8.onnx, ONNX Runtime's static quantization calibrated on `calibration`: image files or
    folders, default the sample photos) for `Explainer(precision="int8")` on the CPU. `output` names
    the graph output holding the class scores when the model has several (default: the first, and describe() says
    so). A target that is not [N,K,h,w] is rearranged into a map: tokens [N,T,C] (k prefix tokens dropped, an h x w
    grid) and channels-last [N,h,w,C] are detected; `token_grid=(h, w)`, `prefix_tokens=k` or `channels_last=True`
    decide for an explicit `target_layer` when detection cannot. Several tensor names (a list) give one bundle with
    every layer's activations and gradients from one explain pass (see export_torch). `bgr`: the model takes its
    channels in B, G, R order, mean/std given in that order; the bundle takes RGB (channel_order.py)."""
    arguments.path("model_path", model_path)
    names = None
    if isinstance(target_layer, (list, tuple)):
        names = arguments.string_list("target_layer", list(target_layer), allow_none=False)
        if not names:
            raise LayerError("target_layer is an empty list; give one tensor name, several, or None (automatic)")
        target_layer = names[0]
    else:
        arguments.text("target_layer", target_layer, allow_none=True)
    arguments.export_arguments(out, input_size, mean, std, class_names, fp16_scorer, input_size_optional=True)
    check_bundle_destination(out, [model_path])  # before any work: never replace what fusioncam did not write
    arguments.text("output", output, allow_none=True)
    request = LayoutRequest.checked(token_grid, prefix_tokens, channels_last)
    if target_layer is None and request.given():
        raise LayerError("token_grid, prefix_tokens and channels_last describe an explicit target_layer; "
                         "pass target_layer too (see `fusioncam layers MODEL`)")
    classifier, digest = load_classifier(model_path, input_size, output, bgr)
    if bgr:
        mean, std = bundle_statistics(mean, std, given_mean=mean is not IMAGENET_MEAN, given_std=std is not IMAGENET_STD)
    if names is not None and len(names) > 1:
        layer = [resolve_target(classifier, name, request) for name in names]
    elif target_layer is not None:
        layer = resolve_target(classifier, target_layer, request)
    else:
        layer = auto_target(classifier, MapReach(classifier))
    result = write_classifier_bundle(
        classifier, layer, out,
        target_label=[one.name for one in layer] if isinstance(layer, list) else layer.name,
        source=str(model_path), source_sha256=digest,
        mean=mean, std=std, class_names=class_names, picked_automatically=target_layer is None,
        fp16_scorer=fp16_scorer, notes=(classifier.output_note,), int8_scorer=int8_scorer, calibration=calibration,
    )
    return with_bgr_note(result) if bgr else result


def list_onnx_layers(model_path: str | os.PathLike, input_size: tuple[int, int] | None = None) -> list[Layer]:
    """Candidate target tensors of an ONNX classifier with their shapes, in graph order."""
    classifier, _ = load_classifier(model_path, input_size)
    return candidate_layers(classifier)

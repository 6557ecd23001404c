"""`export_torch`: a PyTorch classifier and a module path become a bundle (via ONNX, then the shared path)."""

from __future__ import annotations

import difflib
import hashlib
import io
import os
import warnings

import onnx

from .. import arguments
from ..errors import LayerError, ModelLoadError
from ..graph_names import INPUT, LOGITS
from ..bundle import check_bundle_destination
from .bundle_builder import IMAGENET_MEAN, IMAGENET_STD, ExportResult, write_classifier_bundle
from .classifier_graph import SEGMENTATION_HINT, prepare_classifier, tensor_shapes
from .layers import Layer, resolve_target
from .module_outputs import model_logits, output_note, pick_tensor
from .target_layout import LayoutRequest, gathered_layout
from .torch_targets import auto_torch_target, inference_copy, list_torch_layers  # noqa: F401  (list_torch_layers: API)

_inference_copy = inference_copy  # the name segmentation_export imports

FEATURES_OUTPUT = "fusioncam_target_features"


class PerPixelScores(ModelLoadError):
    """The model returns per-pixel class scores [N, C, H', W']: a segmentation model, not a classifier (export's
    task routing, task_routing.py, exports it as one when no task was given)."""
EXPORT_OPSET = 17


def module_by_path(model, path: str):
    """The submodule at a dotted path ("layer4", "features.29", "_blocks.15"), or a LayerError with close names."""
    modules = dict(model.named_modules())
    if path in modules and path != "":
        return modules[path]
    close = difflib.get_close_matches(path, [name for name in modules if name], n=5, cutoff=0.3)
    hint = f" Closest module paths: {', '.join(close)}." if close else ""
    raise LayerError(f"unknown target layer '{path}': the model has no submodule at that path.{hint} "
                     f"List them with fusioncam.list_layers(model).")


def state_sha256(model) -> str:
    """Fingerprint of a module: its class and every parameter and buffer, in order."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def features_wrapper(model, layer_path: str | list[str], scores, features):
    """A torch module returning (scores(model output), features(target module output, those scores)), the target's
    output captured by a forward hook; a target that does not run exactly once is a LayerError. Several layer paths
    (a list) give (scores, features of the first, features of the second, ...), `features(output, scores, path)`."""
    import torch

    paths = [layer_path] if isinstance(layer_path, str) else list(layer_path)
    targets = [module_by_path(model, path) for path in paths]

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.captured = [[] for _ in paths]
            for target, captured in zip(targets, self.captured):
                target.register_forward_hook(lambda _m, _i, out, captured=captured: captured.append(out))

        def forward(self, x):
            for captured in self.captured:
                captured.clear()
            head = scores(self.model(x))
            for path, captured in zip(paths, self.captured):
                if len(captured) != 1:
                    raise LayerError(f"target layer '{path}' runs {len(captured)} times in one forward; "
                                     f"pick a module that runs exactly once")
            if isinstance(layer_path, str):
                return head, features(self.captured[0][0], head)
            return (head, *(features(captured[0], head, path) for path, captured in zip(paths, self.captured)))

    return Wrapper().eval()


class _WithFeatures:
    """Builds a torch module returning (logits, target tensor) via a forward hook."""

    @staticmethod
    def wrap(model, layer_path: str | list[str], target_output=None, output=None):
        def features(captured, logits, layer_path=layer_path):
            feats = pick_tensor(captured, target_output, f"target layer '{layer_path}'")
            if feats.dim() not in (3, 4):
                raise LayerError(f"target layer '{layer_path}' outputs {tuple(feats.shape)}; a CAM target must "
                                 f"output a 4-D feature map [N,K,h,w], channels-last [N,h,w,C] or tokens [N,T,C]. "
                                 f"Pick one from fusioncam.list_layers(model).")
            if logits.dim() == 4:
                raise PerPixelScores(f"the model must return class scores [N, C]; got {tuple(logits.shape)}"
                                     + SEGMENTATION_HINT)
            if logits.dim() != 2:
                raise ModelLoadError(f"the model must return class scores [N, C]; got {tuple(logits.shape)}")
            return feats

        return features_wrapper(model, layer_path, lambda out: model_logits(out, output), features)


def features_output(index: int) -> str:
    """The exported graph's tensor of target layer `index`'s features (FEATURES_OUTPUT for the first)."""
    return FEATURES_OUTPUT if index == 0 else f"{FEATURES_OUTPUT}_{index}"


def _export_torchscript(wrapper, example, features: int = 1) -> onnx.ModelProto:
    """The TorchScript exporter: fast, dynamic batch via dynamic_axes (`features`: target tensors the wrapper returns)."""
    import torch

    names = [features_output(i) for i in range(features)]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, (example,), buffer, dynamo=False, opset_version=EXPORT_OPSET,
            input_names=[INPUT], output_names=[LOGITS, *names],
            dynamic_axes={INPUT: {0: "N"}, LOGITS: {0: "N"}, **{name: {0: "N"} for name in names}},
            do_constant_folding=True,
        )
    return onnx.load_model_from_string(buffer.getvalue())


def _export_dynamo(wrapper, example, features: int = 1) -> onnx.ModelProto:
    """The torch.export-based exporter, for models the TorchScript exporter rejects."""
    import contextlib

    import torch

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper, (example,), dynamo=True, input_names=[INPUT],
            output_names=[LOGITS, *(features_output(i) for i in range(features))],
            dynamic_shapes=({0: torch.export.Dim("N", min=1, max=65536)},), verbose=False,
        )
    return program.model_proto


def _torch_to_onnx(model, layer_path: str | list[str], input_size: tuple[int, int], target_output=None,
                   output=None) -> tuple[onnx.ModelProto, str]:
    """Export (logits, target features): TorchScript exporter first (fast), dynamo exporter when it refuses.

    Returns the graph and a note on which model output gave the logits ('' for a plain tensor)."""
    import torch

    wrapper = _WithFeatures.wrap(inference_copy(model), layer_path, target_output, output)
    example = torch.zeros(2, 3, *input_size)
    with torch.no_grad():
        wrapper(example)  # raises the LayerError/ModelLoadError above with a clear message before exporting
        note = output_note(wrapper.model(example), output)
    features = 1 if isinstance(layer_path, str) else len(layer_path)
    return export_features_wrapper(wrapper, example, features=features), note


def export_features_wrapper(wrapper, example, what: str = "model", features: int = 1) -> onnx.ModelProto:
    """Export a features_wrapper module: TorchScript exporter first (fast), dynamo exporter when it refuses; the
    returned graph keeps the target features (`features` tensors, features_output(i)) as inner tensors, not outputs."""
    try:
        exported = _export_torchscript(wrapper, example, features)
    except Exception as first:  # e.g. adaptive pooling to a non-divisor size: the dynamo exporter handles it
        try:
            exported = _export_dynamo(wrapper, example, features)
        except Exception as second:
            raise ModelLoadError(
                f"PyTorch could not export the {what} to ONNX: TorchScript exporter: {str(first).splitlines()[0]}; "
                f"dynamo exporter: {str(second).splitlines()[0]}"
            ) from None
    inner = {features_output(i) for i in range(features)}
    kept = [out for out in exported.graph.output if out.name not in inner]
    del exported.graph.output[:]
    exported.graph.output.extend(kept)
    return exported


def export_torch(
    model,
    target_layer: str | list[str] | None,
    out: str | os.PathLike,
    input_size: tuple[int, int] = (224, 224),
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    class_names: list[str] | None = None,
    fp16_scorer: bool = False,
    *,
    output: int | str | None = None,
    target_output: int | str | None = None,
    token_grid: tuple[int, int] | None = None,
    prefix_tokens: int | None = None,
    channels_last: bool | None = None,
    reshape=None,
    int8_scorer: bool = False,
    calibration=None,
) -> ExportResult:
    """Export a `torch.nn.Module` classifier with the module at `target_layer` as the CAM target (None: automatic,
    the last map whose positions reach the logits; describe() says which).

    `fp16_scorer` also writes a float16 scorer (scorer_fp16.onnx) for `Explainer(precision="fp16")`; `int8_scorer` an
    INT8 scorer (scorer_int8.onnx, calibrated on `calibration`'s images, default the sample photos) for
    `Explainer(precision="int8")` on the CPU (export/int8_scorer.py). The model may
    return a tensor, an object with `.logits` (Hugging Face) or several outputs (`output` names the class scores'
    index or key). The target module may return a tuple or an output object: its first tensor, or `target_output`.
    Tokens [N,T,C] and channels-last [N,h,w,C] become [N,C,h,w] maps (detected; `token_grid=(h, w)`,
    `prefix_tokens=k`, `channels_last=True` decide when detection cannot), or `reshape`, a function that rearranges
    the module's tensor into [N,K,h,w] (pytorch-grad-cam's reshape_transform).

    Several target layers (a list of module paths, e.g. ["layer3", "layer4"]) give one bundle whose explain graph
    returns every layer's activations and gradients from one forward and backward pass (export/several_layers_graph.py;
    the layout options and `reshape` apply to each layer, as pytorch-grad-cam's reshape_transform does) and a head
    graph per layer (head.onnx, head_1.onnx, ...) where the layer has one; the layers must lie along one path."""
    import torch

    if not isinstance(model, torch.nn.Module):
        raise ModelLoadError(f"export_torch needs a torch.nn.Module, got {type(model).__name__}")
    if isinstance(target_layer, (list, tuple)):
        paths = arguments.string_list("target_layer", list(target_layer), allow_none=False)
        if not paths:
            raise LayerError("target_layer is an empty list; give one module path, several, or None (automatic)")
        target_layer = paths[0] if len(paths) == 1 else paths
    if isinstance(target_layer, list):
        if target_output is not None:
            raise LayerError("target_output picks one output of one target module; with several target layers "
                             "export each layer that needs it as its own bundle")
    else:
        arguments.text("target_layer", target_layer, allow_none=True)
    arguments.callable_or_none("reshape", reshape)
    arguments.export_arguments(out, input_size, mean, std, class_names, fp16_scorer)
    check_bundle_destination(out)  # before any work: never replace what fusioncam did not write
    source = f"{type(model).__name__} (PyTorch)"
    size = tuple(input_size)
    request = LayoutRequest.checked(token_grid, prefix_tokens, channels_last)
    picked = target_layer is None
    if picked:
        if request.given() or reshape is not None:
            raise LayerError("token_grid, prefix_tokens, channels_last and reshape describe an explicit "
                             "target_layer; pass target_layer too (see fusioncam.list_layers(model))")
        target_layer = auto_torch_target(model, size, output)
    exported, output_used = _torch_to_onnx(model, target_layer, size, target_output, output)
    classifier = prepare_classifier(exported, source, size)
    paths = target_layer if isinstance(target_layer, list) else [target_layer]
    layers = [_target_map(classifier, features_output(i), path, reshape, request) for i, path in enumerate(paths)]
    return write_classifier_bundle(
        classifier, layers if len(layers) > 1 else layers[0], out,
        target_label=target_layer, source=source, source_sha256=state_sha256(model),
        mean=mean, std=std, class_names=class_names, fp16_scorer=fp16_scorer, picked_automatically=picked,
        notes=(output_used,), int8_scorer=int8_scorer, calibration=calibration,
    )


def _target_map(classifier, tensor: str, path: str, reshape, request: LayoutRequest) -> Layer:
    """The Layer of one exported target tensor: rearranged by `reshape` (pytorch-grad-cam's reshape_transform) when
    given, else resolved (layout detected, or as `request` says)."""
    if reshape is None:
        return resolve_target(classifier, tensor, request)
    shapes = tensor_shapes(classifier.model)
    layout = gathered_layout(reshape, shapes[tensor], f"target layer '{path}'")
    return Layer(tensor, layout.map_shape(shapes[tensor]), "reshape", layout, shapes[tensor])

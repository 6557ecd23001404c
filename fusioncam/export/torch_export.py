"""`export_torch`: a PyTorch classifier and a module path become a bundle (via ONNX, then the shared path)."""

from __future__ import annotations

import copy
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
from .classifier_graph import prepare_classifier
from .layers import Layer, resolve_target

FEATURES_OUTPUT = "fusioncam_target_features"
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


def _inference_copy(model):
    """Deep copy in eval mode with every in-place op turned off (in-place ReLU would overwrite the target)."""
    clone = copy.deepcopy(model).eval()
    for module in clone.modules():
        if hasattr(module, "inplace") and isinstance(module.inplace, bool):
            module.inplace = False
    return clone


class _WithFeatures:
    """Builds a torch module returning (logits, target module output) via a forward hook."""

    @staticmethod
    def wrap(model, layer_path: str):
        import torch

        target = module_by_path(model, layer_path)

        class Wrapper(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model
                self.captured = []
                target.register_forward_hook(lambda _m, _i, out: self.captured.append(out))

            def forward(self, x):
                self.captured.clear()
                logits = self.model(x)
                if len(self.captured) != 1:
                    raise LayerError(f"target layer '{layer_path}' runs {len(self.captured)} times in one forward; "
                                     f"pick a module that runs exactly once")
                feats = self.captured[0]
                if not isinstance(feats, torch.Tensor) or feats.dim() != 4:
                    what = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
                    raise LayerError(f"target layer '{layer_path}' outputs {what}; a CAM target must output a "
                                     f"4-D feature map [N,K,h,w]. Pick one from fusioncam.list_layers(model).")
                if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
                    raise ModelLoadError("the model must return class scores [N, C] as one tensor")
                return logits, feats

        return Wrapper().eval()


def _export_torchscript(wrapper, example) -> onnx.ModelProto:
    """The TorchScript exporter: fast, dynamic batch via dynamic_axes."""
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, (example,), buffer, dynamo=False, opset_version=EXPORT_OPSET,
            input_names=[INPUT], output_names=[LOGITS, FEATURES_OUTPUT],
            dynamic_axes={INPUT: {0: "N"}, LOGITS: {0: "N"}, FEATURES_OUTPUT: {0: "N"}},
            do_constant_folding=True,
        )
    return onnx.load_model_from_string(buffer.getvalue())


def _export_dynamo(wrapper, example) -> onnx.ModelProto:
    """The torch.export-based exporter, for models the TorchScript exporter rejects."""
    import contextlib

    import torch

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper, (example,), dynamo=True, input_names=[INPUT], output_names=[LOGITS, FEATURES_OUTPUT],
            dynamic_shapes=({0: torch.export.Dim("N", min=1, max=65536)},), verbose=False,
        )
    return program.model_proto


def _torch_to_onnx(model, layer_path: str, input_size: tuple[int, int]) -> onnx.ModelProto:
    """Export (logits, target features): TorchScript exporter first (fast), dynamo exporter when it refuses."""
    import torch

    wrapper = _WithFeatures.wrap(_inference_copy(model), layer_path)
    example = torch.zeros(2, 3, *input_size)
    with torch.no_grad():
        wrapper(example)  # raises the LayerError/ModelLoadError above with a clear message before exporting
    try:
        exported = _export_torchscript(wrapper, example)
    except Exception as first:  # e.g. adaptive pooling to a non-divisor size: the dynamo exporter handles it
        try:
            exported = _export_dynamo(wrapper, example)
        except Exception as second:
            raise ModelLoadError(
                f"PyTorch could not export the model to ONNX: TorchScript exporter: {str(first).splitlines()[0]}; "
                f"dynamo exporter: {str(second).splitlines()[0]}"
            ) from None
    kept = [out for out in exported.graph.output if out.name != FEATURES_OUTPUT]
    del exported.graph.output[:]
    exported.graph.output.extend(kept)
    return exported


def export_torch(
    model,
    target_layer: str,
    out: str | os.PathLike,
    input_size: tuple[int, int] = (224, 224),
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    class_names: list[str] | None = None,
    fp16_scorer: bool = False,
) -> ExportResult:
    """Export a `torch.nn.Module` classifier with the module at `target_layer` as the CAM target.

    `fp16_scorer` also writes a float16 scorer (scorer_fp16.onnx) for `Explainer(precision="fp16")`."""
    import torch

    if not isinstance(model, torch.nn.Module):
        raise ModelLoadError(f"export_torch needs a torch.nn.Module, got {type(model).__name__}")
    arguments.text("target_layer", target_layer)
    arguments.export_arguments(out, input_size, mean, std, class_names, fp16_scorer)
    check_bundle_destination(out)  # before any work: never replace what fusioncam did not write
    source = f"{type(model).__name__} (PyTorch)"
    exported = _torch_to_onnx(model, target_layer, tuple(input_size))
    classifier = prepare_classifier(exported, source, tuple(input_size))
    layer = resolve_target(classifier, FEATURES_OUTPUT)
    return write_classifier_bundle(
        classifier, layer, out,
        target_label=target_layer, source=source, source_sha256=state_sha256(model),
        mean=mean, std=std, class_names=class_names, fp16_scorer=fp16_scorer,
    )


def list_torch_layers(model, input_size: tuple[int, int] = (224, 224)) -> list[Layer]:
    """Module paths whose output is a 4-D feature map, with shapes, in the order they run."""
    import torch

    model = _inference_copy(model)
    found: list[Layer] = []
    handles = []
    for path, module in model.named_modules():
        if not path:
            continue

        def hook(_m, _i, out, path=path, module=module):
            if isinstance(out, torch.Tensor) and out.dim() == 4 and all(f.name != path for f in found):
                found.append(Layer(name=path, shape=("N", *out.shape[1:]), op_type=type(module).__name__))

        handles.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model(torch.zeros(1, 3, *input_size))
    for handle in handles:
        handle.remove()
    return found

"""export/: classifiers become bundles whose explain graph computes activations and gradients in-graph."""

from .bundle_builder import IMAGENET_MEAN, IMAGENET_STD, ExportResult
from .layers import Layer
from .onnx_export import export_onnx, list_onnx_layers


def export_torch(*args, **kwargs) -> ExportResult:
    """See fusioncam.export.torch_export.export_torch (imported lazily: torch is optional)."""
    from .torch_export import export_torch as _export_torch

    return _export_torch(*args, **kwargs)


def list_layers(model, input_size: tuple[int, int] | None = None) -> list[Layer]:
    """Candidate target layers with shapes, in graph order: tensor names for ONNX, module paths for PyTorch."""
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        return list_onnx_layers(model, input_size)
    from .torch_export import list_torch_layers

    return list_torch_layers(model, input_size or (224, 224))


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ExportResult", "Layer", "export_onnx", "export_torch", "list_layers"]

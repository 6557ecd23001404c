"""export/: models become bundles whose explain graph computes activations and gradients in-graph.

`export_torch` and `export_onnx` take a model of any task (task_routing.py finds it from the model's outputs, or
`task=` says it); `export_torch_segmentation` / `export_onnx_segmentation` are the same with task="segmentation"."""

import sys

from .. import arguments
from ..memory_budget import check_input_size_fits
from .bundle_builder import IMAGENET_MEAN, IMAGENET_STD, ExportResult
from .layers import Layer
from .onnx_export import list_onnx_layers
from .detection_export import export_onnx_detection
from .segmentation_export import export_onnx_segmentation, export_torch_segmentation
from .task_routing import export_onnx, export_torch
from ..runtime.derived_graphs import DerivedGraphBuilders, register_builders
from .fullgrad_graph import FULLGRAD_MAP, build_fullgrad
from .hessian_vector import HESSIAN_VECTOR, build_hessian_vector

# FullGrad's and ShapleyCAM's graphs are built on first use by the runtime, which imports nothing of the exporter
register_builders(DerivedGraphBuilders(build_fullgrad, FULLGRAD_MAP, build_hessian_vector, HESSIAN_VECTOR))


def list_layers(model, input_size: tuple[int, int] | None = None) -> list[Layer]:
    """Candidate target layers with shapes, in graph order: tensor names for ONNX, module paths for PyTorch."""
    size = arguments.size_pair("input_size", input_size, allow_none=True)
    if size is not None:
        check_input_size_fits(size)
    if isinstance(model, str) or hasattr(model, "__fspath__"):
        return list_onnx_layers(arguments.path("model", model), size)
    if not _is_torch_module(model):
        raise arguments.rejected("model", model, "an .onnx file path (str or pathlib.Path) or a torch.nn.Module")
    from .torch_export import list_torch_layers

    return list_torch_layers(model, size or (224, 224))


def _is_torch_module(model) -> bool:
    """True for a torch.nn.Module, without importing torch when nothing imported it (then it cannot be one)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ExportResult", "Layer", "export_onnx", "export_onnx_detection",
           "export_onnx_segmentation", "export_torch", "export_torch_detection", "export_torch_segmentation",
           "list_layers"]


def export_torch_detection(*args, **kwargs) -> ExportResult:
    """fusioncam.export.detection_torch.export_torch_detection (imported on use: it needs torch)."""
    from .detection_torch import export_torch_detection as export

    return export(*args, **kwargs)

"""fusioncam: Fusion-CAM explanations at deployment speed (ONNX graphs with in-graph gradients, ORT, CuPy)."""

from .errors import FusionCamError
from .export import (IMAGENET_MEAN, IMAGENET_STD, export_onnx, export_onnx_segmentation, export_torch,
                     export_torch_segmentation, list_layers)
from .runtime import Explainer, Explanation

__version__ = "0.1.0"

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "Explainer", "Explanation", "FusionCamError",
    "export_onnx", "export_onnx_segmentation", "export_torch", "export_torch_segmentation", "list_layers",
    "__version__",
    "FusionCAM", "overlay",
]
from .adapters.pytorch_grad_cam import FusionCAM  # noqa: E402
from .report.pictures import overlay  # noqa: E402


def __getattr__(name: str):
    """`fusioncam.serve(...)` (the serve extra) without importing KServe when fusioncam is imported."""
    if name == "serve":
        import importlib

        return importlib.import_module(f"{__name__}.serve")
    raise AttributeError(f"module 'fusioncam' has no attribute {name!r}")

"""runtime/: ONNX Runtime sessions for the explain graph and batched Score-CAM forwards, on CPU or CUDA."""

from .explainer import Explainer
from .explanation import Explanation

__all__ = ["Explainer", "Explanation"]

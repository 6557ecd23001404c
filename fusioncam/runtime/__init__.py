"""runtime/: ONNX Runtime sessions for the explain graph and batched Score-CAM forwards, on CPU or CUDA.

Explainer (the public entry point) stands on a Backend (backend.py: one device's sessions and buffers) and the
Scorer (scorer.py: the one batched scoring loop, shared with the metrics); an explanation is an Explanation whose
methods are reachable by name (MethodResult)."""

from .backend import Backend
from .explainer import Explainer
from .explanation import Explanation, MethodResult
from .scorer import Scorer

__all__ = ["Backend", "Explainer", "Explanation", "MethodResult", "Scorer"]

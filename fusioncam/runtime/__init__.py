"""runtime/: ONNX Runtime sessions for the explain graph and batched Score-CAM forwards, on CPU or CUDA.

Explainer (the public entry point) stands on a Backend (backend.py: one device's sessions and buffers, for every
task) and the Scorer (scorer.py: the one batched scoring loop, shared with the metrics); what is explained is the
bundle's Task (fusioncam/tasks/), which the runtime asks and never branches on. An explanation is an Explanation
whose methods are reachable by name (MethodResult)."""

from .backend import Backend
from .explainer import Explainer
from .explanation import Explanation, MethodResult
from .scorer import Scorer

__all__ = ["Backend", "Explainer", "Explanation", "MethodResult", "Scorer"]

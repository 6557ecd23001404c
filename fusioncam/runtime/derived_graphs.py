"""Graphs derived from a bundle's own on first use: FullGrad's and ShapleyCAM's, built in memory, never written.

FullGrad's graph is the scorer (`input -> logits`) differentiated back to the image in one pass, with every bias
layer's gradient kept (export/fullgrad_graph.py); ShapleyCAM's is the explain graph differentiated a second time
(export/hessian_vector.py). Both are built from the bundle's verified graphs when a method first asks (ResNet-18:
under 0.1 s), so every bundle offers them without a re-export and the explain pass of the other methods is not
slowed. Like the head graph they run on ONNX Runtime's CPU provider whatever the Explainer's device.

The runtime imports nothing of the exporter: fusioncam.export hands its two graph builders over when it is
imported (register_builders), which `import fusioncam` always does before the runtime is used.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..bundle import EXPLAIN_GRAPH, SCORER_GRAPH, Bundle
from ..errors import UnsupportedOpError
from ..graph_names import GRADIENTS, INPUT, TARGET

_ZERO = "zero"  # the Hessian-vector product is exactly 0 for this bundle (no float path from A to its gradient)


@dataclass(frozen=True)
class DerivedGraphBuilders:
    """How the derived graphs are made, and the names of their outputs (export/fullgrad_graph.py,
    export/hessian_vector.py)."""

    build_fullgrad: Callable  # (scorer ModelProto, num_classes, (H, W)) -> ModelProto
    fullgrad_map: str
    build_hessian_vector: Callable  # (explain ModelProto) -> ModelProto, or None where H A is exactly 0
    hessian_vector: str


_builders: list[DerivedGraphBuilders] = []


def register_builders(builders: DerivedGraphBuilders) -> None:
    """Called by fusioncam.export on import: the builders the derived graphs are made with."""
    _builders[:] = [builders]


def _registered() -> DerivedGraphBuilders:
    if not _builders:
        raise RuntimeError("fusioncam.export was not imported, so FullGrad's and ShapleyCAM's graphs cannot be built; "
                           "import fusioncam (which imports it) first")
    return _builders[0]


def _load(bundle: Bundle, name: str):
    """A bundle graph without its large weights (they stay in the weights file until the session is made)."""
    import onnx

    return onnx.load(str(bundle.path / name), load_external_data=False)


def _session(bundle: Bundle, model):
    """An ONNX Runtime CPU session of a derived graph, its weights read from the bundle's weights file."""
    import onnx
    import onnxruntime as ort

    from .cpu_backend import cpu_session_options

    onnx.external_data_helper.load_external_data_for_model(model, str(bundle.path))
    return ort.InferenceSession(model.SerializeToString(), sess_options=cpu_session_options(),
                                providers=["CPUExecutionProvider"])


class DerivedGraphs:
    """FullGrad's and ShapleyCAM's graphs of one bundle, each built and opened on first use."""

    def __init__(self, bundle: Bundle) -> None:
        self._bundle = bundle
        self._sessions: dict[str, object] = {}
        self._lock = threading.Lock()

    def _opened(self, which: str):
        with self._lock:
            if which not in self._sessions:
                self._sessions[which] = self._build(which)
            return self._sessions[which]

    def _build(self, which: str):
        manifest, builders = self._bundle.manifest, _registered()
        if which == "fullgrad":
            model = builders.build_fullgrad(_load(self._bundle, SCORER_GRAPH), manifest.num_classes,
                                            tuple(manifest.input_size))
            return _session(self._bundle, model)
        try:
            model = builders.build_hessian_vector(_load(self._bundle, EXPLAIN_GRAPH))
        except UnsupportedOpError as exc:
            raise UnsupportedOpError(f"shapleycam differentiates the explain graph's gradient a second time (its "
                                     f"Hessian-vector product), and an op of the gradient lacks a rule: {exc}") from None
        return _ZERO if model is None else _session(self._bundle, model)

    def fullgrad(self, images: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """float32 [N, H, W]: FullGrad's map of preprocessed images (host) for their classes (int64 [N])."""
        session = self._opened("fullgrad")
        return session.run([_registered().fullgrad_map], {INPUT: images, TARGET: classes})[0]

    def hessian_vector(self, images: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(G, H A) float32 [N, K, h, w] for the images and classes, or None where H A is exactly 0 for this bundle
        (then no pass runs)."""
        session = self._opened("shapleycam")
        if isinstance(session, str):
            return None
        grads, product = session.run([GRADIENTS, _registered().hessian_vector], {INPUT: images, TARGET: classes})
        return grads, product

    def close(self) -> None:
        """Drop the sessions (if opened)."""
        with self._lock:
            self._sessions.clear()

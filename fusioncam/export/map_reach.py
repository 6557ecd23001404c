"""Does changing a candidate map change the logits? The automatic target's test for transformer heads.

A ViT-style head reads only the class (and distillation) token, so the patch tokens of the last block's output never
reach the logits: their gradient is exactly zero and every CAM is blank. The test runs the classifier once, then
again with the candidate tensor's map positions (prefix tokens kept) replaced by perturbed values: positions that
do not reach the logits leave them bit for bit unchanged.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import ModelLoadError
from .classifier_graph import Classifier
from .layers import Layer
from .shape_resolution import MAX_RUNNABLE_BYTES
from .target_layout import TOKENS

PROBE = "fusioncam/probe"
CHANGE_FLOOR = 1e-6  # relative change of the logits that counts as reaching them


def _session(model: onnx.ModelProto):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


class MapReach:
    """Answers `reaches(layer)` for the candidates of one classifier, running its graph with ONNX Runtime."""

    def __init__(self, classifier: Classifier) -> None:
        self._classifier = classifier
        self._runnable_model: onnx.ModelProto | None = None  # built when a token map is first tested
        size = classifier.input_size
        self._image = np.random.default_rng(0).standard_normal((1, 3, *size)).astype(np.float32)

    @property
    def _model(self) -> onnx.ModelProto:
        """The classifier with its weights back in (ONNX Runtime needs them)."""
        if self._runnable_model is None:
            self._runnable_model = onnx.ModelProto()
            self._runnable_model.CopyFrom(self._classifier.model)
            self._classifier.weights.put_back(self._runnable_model)
        return self._runnable_model

    def _with_outputs(self, names: list[str]) -> onnx.ModelProto:
        model = onnx.ModelProto()
        model.CopyFrom(self._model)
        del model.graph.output[:]
        model.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in names)
        return model

    def __call__(self, layer: Layer) -> bool:
        """True when perturbing the layer's map positions changes the logits; a model ONNX Runtime cannot load or
        run is a ModelLoadError (fuzz/onnx_export_fuzz.py found its tracebacks here). Only token maps are tested (a
        head may read some tokens only); a spatial map feeds a pooling head, and a graph too large to run is trusted."""
        if layer.layout.kind != TOKENS or self._model.ByteSize() > MAX_RUNNABLE_BYTES:
            return True  # ONNX Runtime reads the graph from bytes: a larger one cannot be tested here
        try:
            return self._reaches(layer)
        except Exception as exc:
            if not type(exc).__module__.startswith("onnxruntime"):
                raise
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelLoadError(f"ONNX Runtime cannot run the model to test whether target '{layer.name}' reaches "
                                 f"its logits: {reason}") from None

    def _reaches(self, layer: Layer) -> bool:
        logits_name = self._classifier.logits_name
        logits, value = _session(self._with_outputs([logits_name, layer.name])).run(
            None, {self._classifier.input_name: self._image})
        probed = self._with_outputs([logits_name])
        for node in probed.graph.node:
            for index, name in enumerate(node.input):
                if name == layer.name:
                    node.input[index] = PROBE
        probed.graph.input.append(helper.make_tensor_value_info(PROBE, TensorProto.FLOAT, list(value.shape)))
        changed = value.copy()
        noise = np.random.default_rng(1).standard_normal(value.shape).astype(np.float32)
        scale = float(np.abs(value).max()) or 1.0
        if layer.layout.kind == TOKENS:
            changed[:, layer.layout.prefix_tokens:] += scale * noise[:, layer.layout.prefix_tokens:]
        else:
            changed += scale * noise
        moved = _session(probed).run(None, {self._classifier.input_name: self._image, PROBE: changed})[0]
        return float(np.abs(moved - logits).max()) > CHANGE_FLOOR * max(float(np.abs(logits).max()), 1e-12)

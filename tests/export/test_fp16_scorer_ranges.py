"""The float16 scorer of graphs with a float Range (YOLO's in-graph anchor grids): ONNX has no float16 Range, so the
Range computes in float32 and its result is cast to float16; an integer Range is left as it is."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from fusioncam import Explainer
from fusioncam.export.detection_export import export_onnx_detection
from fusioncam.export.float16 import float16_scorer
from tests.support.detection_models import TARGET_TENSOR, TinyYolo, export_tiny_yolo


def _grid_model() -> onnx.ModelProto:
    """logits = input[:, :, 0, :] + float Range(0, W, 0.5)[:W] * scale, and an int64 Range that indexes columns."""
    width = 6
    nodes = [
        helper.make_node("Shape", ["input"], ["shape"]),
        helper.make_node("Gather", ["shape", "three"], ["w_int"], axis=0),
        helper.make_node("Cast", ["w_int"], ["w_float"], to=TensorProto.FLOAT),
        helper.make_node("Range", ["zero_f", "w_float", "half"], ["grid"]),          # float: 0, 0.5, ..., W - 0.5
        helper.make_node("Range", ["zero_i", "w_int", "one_i"], ["columns"]),        # int64: 0 .. W-1
        helper.make_node("Gather", ["grid", "columns"], ["picked"], axis=0),
        helper.make_node("Mul", ["picked", "scale"], ["scaled"]),
        helper.make_node("Gather", ["input", "zero_i"], ["row"], axis=2),
        helper.make_node("ReduceMean", ["row", "axes"], ["mean"], keepdims=0),
        helper.make_node("Add", ["mean", "scaled"], ["logits"]),
    ]
    inits = [numpy_helper.from_array(np.array(v, dtype=d), n) for n, v, d in (
        ("three", 3, np.int64), ("zero_f", 0.0, np.float32), ("half", 0.5, np.float32), ("zero_i", 0, np.int64),
        ("one_i", 1, np.int64), ("scale", 1.25, np.float32), ("axes", [1], np.int64))]
    graph = helper.make_graph(nodes, "grid", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 4, width])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_float_range_runs_in_float32_and_int_range_is_untouched(tmp_path):
    model = _grid_model()
    onnx.checker.check_model(model)
    half = float16_scorer(model)
    ranges = [n for n in half.graph.node if n.op_type == "Range"]
    casts_after = [n for n in half.graph.node if n.op_type == "Cast" and n.input[0] == "grid/float32"]
    assert len(ranges) == 2 and len(casts_after) == 1 and casts_after[0].output[0] == "grid"
    assert not any(n.op_type == "Cast" and n.output[0] == "columns" for n in half.graph.node)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 6)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    got = ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.astype(np.float16)})[0]
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=2e-3, atol=2e-3)


def test_yolo_bundle_gets_a_float16_scorer_that_matches(tmp_path):
    export_tiny_yolo(TinyYolo().eval(), tmp_path / "y.onnx")
    export_onnx_detection(tmp_path / "y.onnx", tmp_path / "y.fcam", TARGET_TENSOR, layout="yolov8", fp16_scorer=True)
    images = np.random.default_rng(1).uniform(0, 1, (1, 3, 64, 64)).astype(np.float32)
    exact = Explainer(tmp_path / "y.fcam").explain(images, methods=("scorecam",))
    half = Explainer(tmp_path / "y.fcam", precision="fp16").explain(images, methods=("scorecam",))
    assert len(exact) == len(half) > 0
    for a, b in zip(exact.maps["scorecam"], half.maps["scorecam"]):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
        assert np.abs(a - b).max() < 5e-2

"""The float16 scorer: the converter keeps logits close to float32, and Explainer(precision="fp16") uses it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import fusioncam
from fusioncam.bundle import SCORER_GRAPH_FP16
from fusioncam.cli.main import build_parser
from fusioncam.errors import InputError
from fusioncam.export.float16 import float16_scorer
from fusioncam.hashing import file_sha256
from tests.support.torch_reference import sample_model

SIZE = (64, 64)
# Float16 keeps 11 significant bits (unit roundoff 4.9e-4); ResNet-18's ~20 layers of float16 rounding gave a
# largest logit error of 4.8e-4 of the largest logit here. 1e-2 leaves a 20x margin yet still catches a wrong
# conversion (a float32 constant read as float16 bits, a lost bias), which errs by whole units.
LOGIT_RELATIVE_ERROR = 1e-2
# Maps are in [0, 1]; measured largest difference fp16 vs fp32 on these images: about 3e-3 (Score-CAM).
MAP_ABS_ERROR = 2e-2


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fp16")
    model = sample_model("resnet18", seed=0)
    with_fp16 = fusioncam.export_torch(model, "layer4", folder / "fp16.fcam", input_size=SIZE, fp16_scorer=True).bundle
    without = fusioncam.export_torch(model, "layer4", folder / "fp32.fcam", input_size=SIZE).bundle
    return with_fp16, without


def random_images(n: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, *SIZE)).astype(np.float32)


def logits(path_or_bytes, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes),
                                   providers=["CPUExecutionProvider"])
    kind = session.get_inputs()[0].type
    return session.run(["logits"], {"input": images.astype(np.float16 if "float16" in kind else np.float32)})[0]


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - expected).max() / np.abs(expected).max())


@pytest.mark.slow
def test_bundle_lists_the_fp16_scorer_with_its_hash(bundles):
    with_fp16, without = bundles
    assert with_fp16.manifest.files[SCORER_GRAPH_FP16] == file_sha256(with_fp16.scorer_fp16_path)
    assert without.scorer_fp16_path is None and SCORER_GRAPH_FP16 not in without.manifest.files
    model = onnx.load(str(with_fp16.scorer_fp16_path))
    assert [v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)] == [TensorProto.FLOAT16] * 2


def test_fp16_scorer_logits_match_fp32(bundles):
    bundle = bundles[0]
    images = random_images(8)
    got = logits(bundle.scorer_fp16_path, images)
    assert got.dtype == np.float16
    assert relative_error(got, logits(bundle.scorer_path, images)) < LOGIT_RELATIVE_ERROR


def every_op_graph() -> onnx.ModelProto:
    """A small float32 classifier using each op the converter must handle, Resize (float32 scales) included."""
    rng = np.random.default_rng(0)

    def init(name, array):
        return numpy_helper.from_array(np.asarray(array), name)

    inits = [
        init("w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3), init("b", np.full(4, 0.1, np.float32)),
        init("gamma", np.full(4, 1.1, np.float32)), init("beta", np.full(4, 0.05, np.float32)),
        init("mean", np.full(4, 0.02, np.float32)), init("var", np.full(4, 0.9, np.float32)),
        init("lo", np.array(0.0, np.float32)), init("hi", np.array(6.0, np.float32)),
        init("scales", np.array([1, 1, 2, 2], np.float32)), init("shift", np.full((1, 8, 1, 1), 0.2, np.float32)),
        init("gemm_w", rng.standard_normal((8, 6)).astype(np.float32)), init("gemm_b", np.zeros(6, np.float32)),
        init("shape", np.array([-1, 6], np.int64)), init("mm_w", rng.standard_normal((6, 5)).astype(np.float32)),
    ]
    half = numpy_helper.from_array(np.array(0.5, np.float32), "half")
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["conv", "gamma", "beta", "mean", "var"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["relu"]),
        helper.make_node("Clip", ["relu", "lo", "hi"], ["clip"]),
        helper.make_node("MaxPool", ["clip"], ["maxpool"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Resize", ["maxpool", "", "scales"], ["resized"], mode="linear"),
        helper.make_node("AveragePool", ["resized"], ["avgpool"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Sigmoid", ["avgpool"], ["sigmoid"]),
        helper.make_node("HardSwish", ["avgpool"], ["hardswish"]),
        helper.make_node("Concat", ["sigmoid", "hardswish"], ["concat"], axis=1),
        helper.make_node("Add", ["concat", "shift"], ["added"]),
        helper.make_node("Constant", [], ["half"], value=half),
        helper.make_node("Mul", ["added", "half"], ["scaled"]),
        helper.make_node("GlobalAveragePool", ["scaled"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "gemm_w", "gemm_b"], ["gemm"]),
        helper.make_node("Reshape", ["gemm", "shape"], ["reshaped"]),
        helper.make_node("MatMul", ["reshaped", "mm_w"], ["logits"]),
    ]
    graph = helper.make_graph(nodes, "every_op", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_converter_handles_every_listed_op_and_keeps_resize_scales_float32():
    model = every_op_graph()
    onnx.checker.check_model(model)
    converted = float16_scorer(model)
    scales = next(t for t in converted.graph.initializer if t.name == "scales")
    assert scales.data_type == TensorProto.FLOAT
    assert all(t.data_type != TensorProto.FLOAT for t in converted.graph.initializer if t.name != "scales")
    images = random_images(4)[:, :, :8, :8]
    expected = logits(model.SerializeToString(), images)
    got = logits(converted.SerializeToString(), images)
    assert got.dtype == np.float16
    assert relative_error(got, expected) < LOGIT_RELATIVE_ERROR


@pytest.mark.slow
def test_explainer_fp16_maps_are_close_to_fp32(bundles):
    bundle = bundles[0]
    images = random_images(3)
    methods = ("fusion", "scorecam", "gradcam")
    exact = fusioncam.Explainer(bundle, device="cpu", batch_size=64).explain(images, methods=methods)
    half = fusioncam.Explainer(bundle, device="cpu", batch_size=64, precision="fp16").explain(images, methods=methods)
    np.testing.assert_array_equal(half.classes, exact.classes)
    np.testing.assert_array_equal(half.gradcam, exact.gradcam)  # the explain graph stays float32
    for key in ("fusion", "scorecam", "combined"):
        difference = float(np.abs(getattr(half, key) - getattr(exact, key)).max())
        assert difference < MAP_ABS_ERROR, (key, difference)
        assert getattr(half, key).dtype == np.float32


def test_fp16_scorer_runs_on_a_float16_buffer(bundles):
    explainer = fusioncam.Explainer(bundles[0], device="cpu", batch_size=4, precision="fp16")
    assert explainer.backend.input_buffer().dtype == np.float16
    explainer.backend.input_buffer()[:] = 0
    got = explainer.backend.score_rows(2)
    assert got.dtype == np.float32
    assert got.shape == (2, 1000)
    # The same float16 graph in a session of its own, on the same all-zeros rows: the backend adds only the float32
    # cast, and float16 -> float32 is exact, so the values must agree bit for bit.
    expected = logits(bundles[0].scorer_fp16_path, np.zeros((2, 3, *SIZE), dtype=np.float16))
    assert expected.dtype == np.float16
    np.testing.assert_array_equal(got, expected.astype(np.float32))
    # And they are the float32 scorer's logits of z0 within float16 rounding.
    float32 = logits(bundles[0].scorer_path, np.zeros((2, 3, *SIZE), dtype=np.float32))
    assert relative_error(got, float32) < LOGIT_RELATIVE_ERROR


def test_fp16_without_the_fp16_scorer_is_a_clear_error(bundles):
    with pytest.raises(InputError, match="re-export it with fp16_scorer=True .*--fp16-scorer"):
        fusioncam.Explainer(bundles[1], device="cpu", precision="fp16")


def test_cli_export_takes_fp16_scorer():
    args = build_parser().parse_args(["export", "model.onnx", "--out", "b.fcam", "--fp16-scorer"])
    assert args.fp16_scorer is True
    assert build_parser().parse_args(["export", "model.onnx", "--out", "b.fcam"]).fp16_scorer is False

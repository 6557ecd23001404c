"""One fast test per quantization gradient rule, and the float32 backward of float16 nodes.

Each tiny graph x -> (quantized op) -> head is differentiated by fusioncam and run by ONNX Runtime; the reference is
torch autograd on the float64 fake-quantized twin (tests/support/quantized_reference.py: straight-through, zero where
a value saturates), or float32 autograd for the float16 graph.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from fusioncam.errors import UnsupportedOpError
from fusioncam.export.autodiff import differentiate
from tests.support.onnx_graphs import assert_close
from tests.support.quantized_reference import FakeQuantModel

CLASSES = 4
MS = "com.microsoft"


def _model(nodes, x_shape, inits: dict, feature: str, feature_size: int, elem=TensorProto.FLOAT,
           shapes: dict | None = None) -> onnx.ModelProto:
    """x [N, *x_shape] -> Identity (x0, the tensor differentiated) -> nodes -> Flatten(feature) @ head -> logits.

    `shapes` gives (element type, dims) of com.microsoft ops' outputs, which ONNX's shape inference does not know
    (an export measures them by running the graph)."""
    rng = np.random.default_rng(7)
    inits = dict(inits, head=rng.standard_normal((feature_size, CLASSES)).astype(
        np.float16 if elem == TensorProto.FLOAT16 else np.float32))
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["x0"], name="x0"), *nodes,
         helper.make_node("Flatten", [feature], ["flat"], axis=1, name="flatten"),
         helper.make_node("MatMul", ["flat", "head"], ["logits"], name="head")],
        "rule", [helper.make_tensor_value_info("x", elem, ["N", *x_shape])],
        [helper.make_tensor_value_info("logits", elem, ["N", CLASSES])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    graph.value_info.extend(helper.make_tensor_value_info(name, e, dims) for name, (e, dims) in (shapes or {}).items())
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    model.ir_version = 9
    return model


def _ort_gradient(model: onnx.ModelProto, x: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """fusioncam's d(logit of class)/d(x0), run by ONNX Runtime."""
    model.graph.input.append(helper.make_tensor_value_info("seed", TensorProto.FLOAT, ["N", CLASSES]))
    grad_model = differentiate(model, wrt="x0", of="logits", seed="seed", grad_name="grad_out")
    grad_model.graph.output.append(helper.make_empty_tensor_value_info("grad_out"))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(grad_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    seed = np.eye(CLASSES, dtype=np.float32)[classes]
    return session.run(["grad_out"], {"x": x, "seed": seed})[0]


def _check(model: onnx.ModelProto, x: np.ndarray) -> None:
    classes = np.array([1, 3])[:len(x)]
    reference = FakeQuantModel(model)
    _, _, want = reference.gradient(x.astype(np.float64), {}, "x0", classes)
    got = _ort_gradient(model, x, classes)
    assert_close(got.astype(np.float64), want, tolerance=1e-4)


def _q(name, x, out, zp="zp_x"):
    return helper.make_node("QuantizeLinear", [x, name, zp], [out], name=out)


def _dq(name, q, out, zp="zp_x"):
    return helper.make_node("DequantizeLinear", [q, name, zp], [out], name=out)


X = np.random.default_rng(1).uniform(-3, 3, (2, 3, 5, 5)).astype(np.float32)  # some values saturate below


@pytest.mark.parametrize("zero_point", [np.uint8(128), np.int8(-20)], ids=["uint8", "int8"])
def test_quantize_dequantize_straight_through(zero_point):
    """Q then DQ: the gradient passes where x lies in the range, 0 where it saturates (x in [-3, 3] overflows it)."""
    nodes = [_q("s_x", "x0", "q"), _dq("s_x", "q", "y")]
    inits = {"s_x": np.float32(0.015), "zp_x": zero_point}
    model = _model(nodes, [3, 5, 5], inits, "y", 75)
    _check(model, X)
    grad = _ort_gradient(_model(nodes, [3, 5, 5], inits, "y", 75), X, np.array([1, 3]))
    assert (grad == 0).any() and (grad != 0).any()  # both sides of the range are exercised


def test_per_axis_quantization():
    nodes = [helper.make_node("QuantizeLinear", ["x0", "s", "zp"], ["q"], axis=1, name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], axis=1, name="y")]
    inits = {"s": np.array([0.01, 0.02, 0.03], np.float32), "zp": np.array([0, 100, 200], np.uint8)}
    _check(_model(nodes, [3, 5, 5], inits, "y", 75), X)


def _qconv_inits(rng, out_channels=4, group=1):
    w = rng.integers(-127, 128, (out_channels, 3 // group, 3, 3)).astype(np.int8)
    return {"s_x": np.float32(0.03), "zp_x": np.uint8(120), "w": w,
            "s_w": rng.uniform(0.002, 0.01, out_channels).astype(np.float32), "zp_w": np.zeros(out_channels, np.int8),
            "s_y": np.float32(0.05), "zp_y": np.uint8(30), "b": rng.integers(-500, 500, out_channels).astype(np.int32)}


def test_qlinear_conv():
    inits = _qconv_inits(np.random.default_rng(2))
    nodes = [_q("s_x", "x0", "q"),
             helper.make_node("QLinearConv", ["q", "s_x", "zp_x", "w", "s_w", "zp_w", "s_y", "zp_y", "b"], ["qy"],
                              pads=[1, 1, 1, 1], strides=[2, 2], name="qconv"),
             _dq("s_y", "qy", "y", "zp_y")]
    _check(_model(nodes, [3, 5, 5], inits, "y", 4 * 9), X)


def test_qlinear_add_mul_and_global_average_pool():
    inits = {"s_x": np.float32(0.03), "zp_x": np.uint8(100), "s_b": np.float32(0.02), "zp_b": np.uint8(90),
             "s_y": np.float32(0.04), "zp_y": np.uint8(60), "s_m": np.float32(0.05), "zp_m": np.uint8(128),
             "s_g": np.float32(0.05), "zp_g": np.uint8(128)}
    nodes = [_q("s_x", "x0", "qa"),
             helper.make_node("Relu", ["x0"], ["r"], name="relu"), _q("s_b", "r", "qb", "zp_b"),
             helper.make_node("QLinearAdd", ["qa", "s_x", "zp_x", "qb", "s_b", "zp_b", "s_y", "zp_y"], ["qs"],
                              domain=MS, name="qadd"),
             helper.make_node("QLinearMul", ["qs", "s_y", "zp_y", "qa", "s_x", "zp_x", "s_m", "zp_m"], ["qm"],
                              domain=MS, name="qmul"),
             helper.make_node("QLinearGlobalAveragePool", ["qm", "s_m", "zp_m", "s_g", "zp_g"], ["qg"], domain=MS,
                              name="qgap"),
             _dq("s_g", "qg", "y", "zp_g")]
    u8 = TensorProto.UINT8
    shapes = {"qs": (u8, ["N", 3, 5, 5]), "qm": (u8, ["N", 3, 5, 5]), "qg": (u8, ["N", 3, 1, 1]),
              "y": (TensorProto.FLOAT, ["N", 3, 1, 1])}
    _check(_model(nodes, [3, 5, 5], inits, "y", 3, shapes=shapes), X)


def test_qlinear_matmul_and_qgemm():
    rng = np.random.default_rng(4)
    inits = {"s_x": np.float32(0.03), "zp_x": np.uint8(128), "w": rng.integers(0, 255, (5, 6)).astype(np.uint8),
             "s_w": np.float32(0.01), "zp_w": np.uint8(128), "s_y": np.float32(0.08), "zp_y": np.uint8(128),
             "g": rng.integers(-127, 128, (6, 7)).astype(np.int8), "s_g": np.float32(0.02), "zp_g": np.int8(0),
             "c": rng.integers(-300, 300, 7).astype(np.int32)}
    nodes = [_q("s_x", "x0", "q"),
             helper.make_node("QLinearMatMul", ["q", "s_x", "zp_x", "w", "s_w", "zp_w", "s_y", "zp_y"], ["qy"],
                              name="qmatmul"),
             helper.make_node("QGemm", ["qy", "s_y", "zp_y", "g", "s_g", "zp_g", "c"], ["y"], domain=MS,
                              name="qgemm")]
    x = np.random.default_rng(8).uniform(-4, 4, (2, 5)).astype(np.float32)
    _check(_model(nodes, [5], inits, "y", 7, shapes={"y": (TensorProto.FLOAT, ["N", 7])}), x)


def test_dynamic_quantization_conv_integer_and_matmul_integer():
    rng = np.random.default_rng(5)
    inits = {"w": rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8), "zp_w": np.zeros(1, np.int8),
             "m": rng.integers(0, 255, (5, 3)).astype(np.uint8), "zp_m": np.uint8(128),
             "scale_w": np.float32(0.01)}
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x0"], ["q", "s", "zp"], name="dql"),
             helper.make_node("ConvInteger", ["q", "w", "zp", "zp_w"], ["acc"], pads=[1, 1, 1, 1], name="convint"),
             helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Mul", ["s", "scale_w"], ["scale"], name="scale"),
             helper.make_node("Mul", ["accf", "scale"], ["conv"], name="rescale"),
             helper.make_node("DynamicQuantizeLinear", ["conv"], ["q2", "s2", "zp2"], name="dql2"),
             helper.make_node("MatMulInteger", ["q2", "m", "zp2", "zp_m"], ["acc2"], name="mmint"),
             helper.make_node("Cast", ["acc2"], ["y"], to=TensorProto.FLOAT, name="cast2")]
    _check(_model(nodes, [3, 5, 5], inits, "y", 4 * 5 * 3), X[:1])  # one image: the range is measured per tensor


@pytest.mark.parametrize("op", ["QLinearSigmoid", "QLinearLeakyRelu"])
def test_qlinear_unary(op):
    inits = {"s_x": np.float32(0.03), "zp_x": np.uint8(128), "s_y": np.float32(1 / 128), "zp_y": np.uint8(100)}
    nodes = [_q("s_x", "x0", "q"),
             helper.make_node(op, ["q", "s_x", "zp_x", "s_y", "zp_y"], ["qy"], domain=MS, name="unary"),
             _dq("s_y", "qy", "y", "zp_y")]
    _check(_model(nodes, [3, 5, 5], inits, "y", 75, shapes={"qy": (TensorProto.UINT8, ["N", 3, 5, 5])}), X)


def test_unsupported_quantized_op_is_named():
    inits = {"s_x": np.float32(0.03), "zp_x": np.uint8(128), "s_y": np.float32(1 / 256), "zp_y": np.uint8(0)}
    nodes = [_q("s_x", "x0", "q"),
             helper.make_node("QLinearSoftmax", ["q", "s_x", "zp_x", "s_y", "zp_y"], ["qy"], domain=MS, axis=1,
                              opset=13, name="my_softmax"),
             _dq("s_y", "qy", "y", "zp_y")]
    model = _model(nodes, [3, 5, 5], inits, "y", 75, shapes={"qy": (TensorProto.UINT8, ["N", 3, 5, 5])})
    model.graph.input.append(helper.make_tensor_value_info("seed", TensorProto.FLOAT, ["N", CLASSES]))
    with pytest.raises(UnsupportedOpError, match="'QLinearSoftmax' \\(node 'my_softmax'"):
        differentiate(model, wrt="x0", of="logits", seed="seed", grad_name="grad_out")


def test_float16_nodes_get_float32_gradients():
    """Conv -> Relu -> MaxPool in float16: the gradient is float32 and equals float32 autograd on the float16 values."""
    rng = np.random.default_rng(6)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float16)
    nodes = [helper.make_node("Conv", ["x0", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[2, 2], strides=[1, 1], name="pool")]
    model = _model(nodes, [3, 5, 5], {"w": w}, "y", 4 * 16, elem=TensorProto.FLOAT16)
    head = numpy_helper.to_array(model.graph.initializer[-1])
    x = X.astype(np.float16)
    got = _ort_gradient(model, x, np.array([1, 3]))
    assert got.dtype == np.float32
    xt = torch.from_numpy(x.astype(np.float32)).requires_grad_(True)
    y = torch.nn.functional.max_pool2d(torch.relu(torch.nn.functional.conv2d(
        xt, torch.from_numpy(w.astype(np.float32)), padding=1)), 2, 1)
    logits = y.flatten(1) @ torch.from_numpy(head.astype(np.float32))
    (want,) = torch.autograd.grad(logits[[0, 1], [1, 3]].sum(), xt)
    assert_close(got, want.numpy(), tolerance=1e-2)  # the forward's float16 rounding (relu and max-pool choices agree)

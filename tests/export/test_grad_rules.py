"""Every gradient rule against torch autograd (or an exact ORT Jacobian), for batch sizes 1 and 3."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import helper

from tests.support.onnx_graphs import (CLASSES, assert_close, check_against_torch, gradient_session, head_nodes,
                         linear_jacobian_gradient, make_model)

node = helper.make_node
RNG = np.random.default_rng(1234)


def randn(*shape: int) -> np.ndarray:
    """Standard-normal float32 test data."""
    return RNG.standard_normal(shape).astype(np.float32)


def T(a: np.ndarray) -> torch.Tensor:
    """A numpy constant as a torch tensor."""
    return torch.from_numpy(np.asarray(a))


# ----- Conv ---------------------------------------------------------------------------------------

CONV_CASES = {
    # name: (x shape, w shape, onnx attrs, torch explicit pads (left, right, top, bottom), stride, dilation, group)
    "strided_asym_pads": ((3, 2, 7, 7), (4, 2, 3, 3), dict(strides=[2, 2], pads=[1, 0, 1, 1]), (0, 1, 1, 1), 2, 1, 1),
    "dilated_remainder": ((3, 2, 10, 9), (3, 2, 3, 3), dict(strides=[2, 2], dilations=[2, 2], pads=[1, 1, 1, 1]),
                          (1, 1, 1, 1), 2, 2, 1),
    "grouped_stride3": ((3, 4, 8, 8), (6, 2, 3, 3), dict(strides=[3, 3], group=2), (0, 0, 0, 0), 3, 1, 2),
    "depthwise": ((3, 3, 6, 6), (3, 1, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1], group=3), (1, 1, 1, 1), 2, 1, 3),
    "same_upper": ((3, 2, 8, 8), (3, 2, 3, 3), dict(strides=[2, 2], auto_pad="SAME_UPPER"), (0, 1, 0, 1), 2, 1, 1),
    "same_lower": ((3, 2, 8, 8), (3, 2, 3, 3), dict(strides=[2, 2], auto_pad="SAME_LOWER"), (1, 0, 1, 0), 2, 1, 1),
    "same_upper_even_kernel": ((3, 2, 7, 8), (3, 2, 4, 2), dict(strides=[1, 3], auto_pad="SAME_UPPER"),
                               (0, 0, 1, 2), (1, 3), 1, 1),
    "same_lower_even_kernel": ((3, 2, 7, 8), (3, 2, 4, 2), dict(strides=[1, 3], auto_pad="SAME_LOWER"),
                               (0, 0, 2, 1), (1, 3), 1, 1),
    "valid_rect_kernel": ((3, 2, 9, 8), (3, 2, 2, 3), dict(strides=[2, 3], auto_pad="VALID"), (0, 0, 0, 0),
                          (2, 3), 1, 1),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv(case: str) -> None:
    """Sizes where (in + pads - dilated kernel) % stride != 0, groups, auto_pad: torch with explicit F.pad."""
    x_shape, w_shape, attrs, torch_pads, stride, dilation, group = CONV_CASES[case]
    w, b = randn(*w_shape), randn(w_shape[0])
    nodes = [node("Conv", ["x", "w", "b"], ["y"], **attrs)]

    def torch_fn(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, torch_pads), T(w), T(b), stride=stride, dilation=dilation, groups=group)
    check_against_torch(nodes, randn(*x_shape), torch_fn, {"w": w, "b": b})


def test_conv_spatial_sizes_unknown_at_export() -> None:
    """Spatial dims hidden from shape inference (reshape to N//N-scaled sizes): the crop is built at run time."""
    w = randn(3, 2, 3, 3)
    nodes = [node("Shape", ["x"], ["xs"]), node("Slice", ["xs", "zero", "one"], ["n"]),
             node("Div", ["n", "n"], ["unit"]), node("Mul", ["chw", "unit"], ["chw_rt"]),
             node("Concat", ["n", "chw_rt"], ["shape"], axis=0), node("Reshape", ["x", "shape"], ["img"]),
             node("Conv", ["img", "w"], ["c"], strides=[2, 2], pads=[0, 1, 1, 0]), node("Flatten", ["c"], ["y"])]
    inits = {"w": w, "zero": np.array([0], np.int64), "one": np.array([1], np.int64),
             "chw": np.array([2, 8, 7], np.int64)}
    fn = lambda t: F.conv2d(F.pad(t.reshape(-1, 2, 8, 7), (1, 0, 0, 1)), T(w), stride=2).flatten(1)  # noqa: E731
    check_against_torch(nodes, randn(3, 2 * 8 * 7), fn, inits)


def test_conv_1d() -> None:
    w = randn(3, 2, 3)
    nodes = [node("Conv", ["x", "w"], ["y"], strides=[2], pads=[1, 1])]
    check_against_torch(nodes, randn(3, 2, 10), lambda t: F.conv1d(t, T(w), stride=2, padding=1), {"w": w})


# ----- pooling ------------------------------------------------------------------------------------

def _tied(*shape: int) -> np.ndarray:
    """Integer-valued data with many ties inside every pooling window."""
    return RNG.integers(0, 3, size=shape).astype(np.float32)


@pytest.mark.parametrize("attrs, fn", [
    (dict(kernel_shape=[3, 3], strides=[1, 1]), lambda t: F.max_pool2d(t, 3, 1)),
    (dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
     lambda t: F.max_pool2d(t, 3, 2, 1, ceil_mode=True)),
    (dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1), lambda t: F.max_pool2d(t, 2, 2, ceil_mode=True)),
    (dict(kernel_shape=[2, 3], strides=[1, 2], dilations=[2, 1], pads=[1, 1, 1, 1]),
     lambda t: F.max_pool2d(t, (2, 3), (1, 2), 1, dilation=(2, 1))),
    (dict(kernel_shape=[3, 3], strides=[2, 2], storage_order=1), lambda t: F.max_pool2d(t, 3, 2)),
], ids=["overlap_ties", "ceil_pad", "ceil_no_pad", "dilated", "storage_order_1"])
def test_max_pool_ties(attrs: dict, fn) -> None:
    check_against_torch([node("MaxPool", ["x"], ["y"], **attrs)], _tied(3, 2, 7, 6), fn)


def test_max_pool_all_equal_input() -> None:
    """Every window is one big tie: the first element of each window wins, in ORT and in torch."""
    x = np.ones((3, 2, 6, 6), np.float32)
    check_against_torch([node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[1, 1])], x,
                        lambda t: F.max_pool2d(t, 3, 1))


def test_max_pool_existing_indices_output() -> None:
    """A MaxPool that already outputs Indices is differentiated through that output."""
    nodes = [node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2], strides=[1, 1])]
    check_against_torch(nodes, _tied(3, 2, 5, 5), lambda t: F.max_pool2d(t, 2, 1))


def test_ort_max_pool_index_convention() -> None:
    """ORT's Indices are flat row-major offsets over the whole N*C*H*W input (the rule relies on it)."""
    x = RNG.permutation(2 * 3 * 4 * 5).astype(np.float32).reshape(2, 3, 4, 5)
    graph = helper.make_graph([node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2], pads=[1, 1, 1, 1])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3, 4, 5])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("i", onnx.TensorProto.INT64, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    y, i = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_array_equal(x.reshape(-1)[i], y)
    assert i.max() >= x[0].size  # offsets include the batch index, not just C*H*W


@pytest.mark.parametrize("include_pad", [0, 1])
@pytest.mark.parametrize("size, kernel, stride, pad, ceil", [
    (7, 3, 2, 1, 0), (8, 3, 2, 1, 1), (7, 2, 2, 0, 1), (6, 3, 1, 1, 0), (9, 4, 3, 2, 1)])
def test_average_pool(include_pad: int, size: int, kernel: int, stride: int, pad: int, ceil: int) -> None:
    nodes = [node("AveragePool", ["x"], ["y"], kernel_shape=[kernel, kernel], strides=[stride, stride],
                  pads=[pad] * 4, ceil_mode=ceil, count_include_pad=include_pad)]

    def torch_fn(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, kernel, stride, pad, ceil_mode=bool(ceil), count_include_pad=bool(include_pad))
    check_against_torch(nodes, randn(3, 2, size, size), torch_fn)


@pytest.mark.parametrize("attrs", [
    dict(kernel_shape=[3, 2], strides=[2, 1], pads=[0, 1, 2, 0], count_include_pad=1),
    dict(kernel_shape=[3, 2], strides=[2, 1], pads=[0, 1, 2, 0], count_include_pad=0, ceil_mode=1),
    dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_LOWER", count_include_pad=1),
    dict(kernel_shape=[2, 2], strides=[1, 2], dilations=[2, 2], pads=[1, 1, 1, 1], count_include_pad=0),
    dict(kernel_shape=[2, 2], strides=[1, 2], dilations=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
], ids=["asym_include", "asym_exclude_ceil", "same_upper", "same_lower", "dilated_exclude", "dilated_include"])
def test_average_pool_against_ort_jacobian(attrs: dict) -> None:
    """Asymmetric pads, auto_pad and dilations (opset 19) have no torch twin: compare with ORT's own Jacobian."""
    x = randn(2, 2, 6, 7)
    probe = make_model([node("AveragePool", ["x"], ["y"], **attrs)], x.shape[1:], opset=19, outputs=["y"],
                       output_shape=None)
    (pooled,) = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["y"], {"x": x, "seed": np.zeros((2, CLASSES), np.float32)})
    size = pooled[0].size
    head_w = randn(size, CLASSES)
    model = make_model([node("AveragePool", ["x"], ["y"], **attrs), *head_nodes("y")], x.shape[1:], opset=19)
    # ONNX shape inference over-counts a ceil-mode window that would start in the end padding (ORT does
    # not), so the head weight is fed as an input of unknown size rather than a mismatching initializer.
    model.graph.input.append(helper.make_tensor_value_info("head_w", onnx.TensorProto.FLOAT, [None, CLASSES]))
    seed = randn(2, CLASSES)
    session = gradient_session(model, full_check="ceil_mode" not in attrs)
    (grad,) = session.run(["grad_out"], {"x": x, "seed": seed, "head_w": head_w})
    assert_close(grad, linear_jacobian_gradient(model, x, seed, {"head_w": head_w}))


@pytest.mark.parametrize("include_pad", [0, 1])
def test_average_pool_window_larger_than_map(include_pad: int) -> None:
    """A ceil-mode window far larger than the map (Hugging Face EfficientNet pools 2x2 with a 2560 kernel): torch's
    gradient, from a backward kernel of only the taps that reach the input (not a [C, 1, 1000, 1000] ones kernel)."""
    from fusioncam.export.autodiff import differentiate

    x, kernel = randn(3, 2, 3, 2), 1000
    nodes = [node("AveragePool", ["x"], ["y"], kernel_shape=[kernel, kernel], strides=[kernel, kernel], ceil_mode=1,
                  count_include_pad=include_pad)]
    check_against_torch(nodes, x, lambda t: F.avg_pool2d(t, kernel, ceil_mode=True,
                                                         count_include_pad=bool(include_pad)))
    model = make_model([*nodes, *head_nodes("y")], x.shape[1:], {"head_w": randn(2, CLASSES)})
    grad_model = differentiate(model, wrt="x", of="logits", seed="seed", grad_name="grad_out")
    assert max(int(np.prod(init.dims)) for init in grad_model.graph.initializer) <= 2 * 3 * 2


def test_global_average_pool() -> None:
    check_against_torch([node("GlobalAveragePool", ["x"], ["y"])], randn(3, 4, 5, 6),
                        lambda t: t.mean(dim=(2, 3), keepdim=True))


# ----- normalization ------------------------------------------------------------------------------

def test_batch_normalization() -> None:
    scale, bias, mean, var = randn(4), randn(4), randn(4), np.abs(randn(4)) + 0.1
    nodes = [node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3)]
    fn = lambda t: F.batch_norm(t, T(mean), T(var), T(scale), T(bias), training=False, eps=1e-3)  # noqa: E731
    check_against_torch(nodes, randn(3, 4, 5, 5), fn, {"s": scale, "b": bias, "m": mean, "v": var})


def test_batch_normalization_run_time_statistics() -> None:
    """Scale and variance that are not initializers (behind Identity): the factor is computed in the graph."""
    scale, bias, mean, var = randn(3), randn(3), randn(3), np.abs(randn(3)) + 0.1
    nodes = [node("Identity", ["s0"], ["s"]), node("Identity", ["v0"], ["v"]),
             node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])]
    fn = lambda t: F.batch_norm(t, T(mean), T(var), T(scale), T(bias), training=False)  # noqa: E731
    check_against_torch(nodes, randn(3, 3, 4), fn, {"s0": scale, "b": bias, "m": mean, "v0": var})


@pytest.mark.parametrize("op, attrs, inputs, inits, why", [
    ("BatchNormalization", {"training_mode": 1}, ["x", "c", "c", "c", "c"], {"c": np.ones(2, np.float32)},
     "training_mode"),
    ("Dropout", {}, ["x", "", "train"], {"train": np.array(True)}, "training_mode"),
    ("Conv", {"auto_pad": "SAME_UPPER"}, ["x", "w"], {"w": np.ones((2, 2, 1), np.float32)}, "not static"),
])
def test_rules_refuse_what_they_cannot_do_exactly(op: str, attrs: dict, inputs: list, inits: dict, why: str) -> None:
    """A rule meeting a case it cannot differentiate exactly raises UnsupportedOpError naming the node."""
    from fusioncam.errors import UnsupportedOpError
    from fusioncam.export.autodiff import differentiate

    # A symbolic length: SAME pads of the Conv cannot be computed at export time. `of` is the node's
    # own output (seeded with x, same shape), so the refusing rule is the first one the walk meets.
    model = make_model([node(op, inputs, ["y"], name="refusing", **attrs)], [2, "W"], inits, outputs=["y"],
                       output_shape=None)
    with pytest.raises(UnsupportedOpError, match=f"'refusing'.*{why}"):
        differentiate(model, wrt="x", of="y", seed="x", grad_name="g")


@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("axis", [-1, 1])
def test_layer_normalization(opset: int, axis: int) -> None:
    x = randn(3, 4, 6)
    norm_shape = x.shape[axis % 3:]
    scale, bias = randn(*norm_shape), randn(*norm_shape)
    nodes = [node("LayerNormalization", ["x", "s", "b"], ["y"], axis=axis, epsilon=1e-4)]
    fn = lambda t: F.layer_norm(t, norm_shape, T(scale), T(bias), eps=1e-4)  # noqa: E731
    check_against_torch(nodes, x, fn, {"s": scale, "b": bias}, opset=opset)


@pytest.mark.parametrize("axis", [1, -1])
def test_softmax(axis: int) -> None:
    check_against_torch([node("Softmax", ["x"], ["y"], axis=axis)], randn(3, 5, 4), lambda t: F.softmax(t, axis))


def test_log_softmax() -> None:
    check_against_torch([node("LogSoftmax", ["x"], ["y"], axis=1)], randn(3, 5, 4), lambda t: F.log_softmax(t, 1))


# ----- activations --------------------------------------------------------------------------------

def _with_kinks(*values: float) -> np.ndarray:
    """Random data of shape [3, 2, 4, 4] with the given kink values planted in every image."""
    x = randn(3, 2, 4, 4) * 4
    x.reshape(3, -1)[:, :len(values)] = values
    return x


def test_relu_at_zero() -> None:
    check_against_torch([node("Relu", ["x"], ["y"])], _with_kinks(0.0, 0.0, -0.0), F.relu)


@pytest.mark.parametrize("bounds, fn", [
    ((0.0, 6.0), F.relu6),
    ((-1.0, 2.0), lambda t: torch.clamp(t, -1.0, 2.0)),
    ((-1.0, None), lambda t: torch.clamp(t, min=-1.0)),
    ((None, 2.0), lambda t: torch.clamp(t, max=2.0)),
], ids=["relu6", "clamp", "min_only", "max_only"])
def test_clip_at_bounds(bounds: tuple, fn) -> None:
    low, high = bounds
    inits, inputs = {}, ["x", "", ""]
    if low is not None:
        inits["lo"], inputs[1] = np.array(low, np.float32), "lo"
    if high is not None:
        inits["hi"], inputs[2] = np.array(high, np.float32), "hi"
    kinks = [v for v in (low, high, 0.0, 6.0) if v is not None]
    check_against_torch([node("Clip", inputs, ["y"])], _with_kinks(*kinks), fn, inits)


def test_leaky_relu() -> None:
    check_against_torch([node("LeakyRelu", ["x"], ["y"], alpha=0.2)], _with_kinks(0.0), lambda t: F.leaky_relu(t, 0.2))


def test_hard_sigmoid_torch_kinks() -> None:
    nodes = [node("HardSigmoid", ["x"], ["y"], alpha=1.0 / 6.0, beta=0.5)]
    check_against_torch(nodes, _with_kinks(-3.0, 3.0, 0.0), F.hardsigmoid)


def test_hard_sigmoid_default_attrs() -> None:
    check_against_torch([node("HardSigmoid", ["x"], ["y"])], _with_kinks(-2.5, 2.5),
                        lambda t: torch.clamp(0.2 * t + 0.5, 0.0, 1.0))


def test_hard_swish_torch_kinks() -> None:
    check_against_torch([node("HardSwish", ["x"], ["y"])], _with_kinks(-3.0, 3.0, 0.0), F.hardswish)


@pytest.mark.parametrize("op, fn", [("Sigmoid", torch.sigmoid), ("Tanh", torch.tanh), ("Erf", torch.erf)])
def test_smooth_activation(op: str, fn) -> None:
    check_against_torch([node(op, ["x"], ["y"])], randn(3, 2, 4, 4), fn)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(approximate: str) -> None:
    check_against_torch([node("Gelu", ["x"], ["y"], approximate=approximate)], randn(3, 2, 4, 4) * 2,
                        lambda t: F.gelu(t, approximate=approximate), opset=20)


def test_erf_gelu_closed_form_float64_finite_differences() -> None:
    """The Erf/Gelu closed forms themselves, against float64 central differences."""
    x = np.linspace(-4, 4, 41)
    h = 1e-6
    for approximate in ("none", "tanh"):
        f = lambda v: F.gelu(torch.from_numpy(v), approximate=approximate).numpy()  # noqa: E731
        numeric = (f(x + h) - f(x - h)) / (2 * h)
        xt = torch.from_numpy(x).requires_grad_(True)
        (autograd,) = torch.autograd.grad(F.gelu(xt, approximate=approximate).sum(), xt)
        np.testing.assert_allclose(autograd.numpy(), numeric, atol=1e-7)
    numeric = np.array([(math.erf(v + h) - math.erf(v - h)) / (2 * h) for v in x])
    np.testing.assert_allclose(2 / math.sqrt(math.pi) * np.exp(-x * x), numeric, atol=1e-7)


# ----- elementwise arithmetic ---------------------------------------------------------------------

@pytest.mark.parametrize("op, fn", [
    ("Add", torch.add), ("Sub", torch.sub), ("Mul", torch.mul), ("Div", torch.div)])
@pytest.mark.parametrize("const_shape", [(5,), (4, 1), (1, 3, 1, 1), (1, 4, 5)])
@pytest.mark.parametrize("x_first", [True, False])
def test_binary_broadcast_constant(op: str, fn, const_shape: tuple, x_first: bool) -> None:
    c = randn(*const_shape) + (3.0 if op == "Div" else 0.0)
    inputs = ["x", "c"] if x_first else ["c", "x"]
    x = randn(3, 3, 4, 5) + (4.0 if op == "Div" and not x_first else 0.0)
    torch_fn = (lambda t: fn(t, T(c))) if x_first else (lambda t: fn(T(c), t))
    check_against_torch([node(op, inputs, ["y"])], x, torch_fn, {"c": c})


@pytest.mark.parametrize("op, fn", [
    ("Add", torch.add), ("Sub", torch.sub), ("Mul", torch.mul), ("Div", torch.div)])
def test_binary_both_operands_on_path_broadcast(op: str, fn) -> None:
    """x (full) op mean(x) over H, W (broadcast, itself on the path), both orders accumulate into x."""
    nodes = [node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=1),
             node("Add", ["m", "three"], ["m3"]),
             node(op, ["x", "m3"], ["a"]), node(op, ["m3", "x"], ["b"]), node("Concat", ["a", "b"], ["y"], axis=1)]

    def torch_fn(t: torch.Tensor) -> torch.Tensor:
        m3 = t.mean(dim=(2, 3), keepdim=True) + 3.0
        return torch.cat([fn(t, m3), fn(m3, t)], dim=1)
    x = randn(3, 2, 4, 5) + (5.0 if op == "Div" else 0.0)
    check_against_torch(nodes, x, torch_fn, {"three": np.array(3.0, np.float32)})


def test_mul_x_times_x() -> None:
    check_against_torch([node("Mul", ["x", "x"], ["y"])], randn(3, 2, 3, 3), lambda t: t * t)


def test_div_rational() -> None:
    """x / (x*x + 1): both operands on the path, same shape."""
    nodes = [node("Mul", ["x", "x"], ["xx"]), node("Add", ["xx", "one"], ["d"]), node("Div", ["x", "d"], ["y"])]
    check_against_torch(nodes, randn(3, 2, 3, 3), lambda t: t / (t * t + 1), {"one": np.array(1.0, np.float32)})


def test_sum_variadic_broadcast() -> None:
    c = randn(1, 4, 1)
    nodes = [node("Relu", ["x"], ["r"]), node("Sum", ["x", "r", "c"], ["y"])]
    check_against_torch(nodes, randn(3, 2, 4, 5), lambda t: t + F.relu(t) + T(c), {"c": c})


@pytest.mark.parametrize("op, fn, shift", [
    ("Neg", torch.neg, 0.0), ("Sqrt", torch.sqrt, 5.0), ("Exp", torch.exp, 0.0), ("Log", torch.log, 5.0),
    ("Reciprocal", torch.reciprocal, 5.0), ("Abs", torch.abs, 0.0)])
def test_unary_math(op: str, fn, shift: float) -> None:
    x = randn(3, 2, 3, 3) + shift
    if op == "Abs":
        x.reshape(3, -1)[:, :2] = 0.0
    check_against_torch([node(op, ["x"], ["y"])], x, fn)


@pytest.mark.parametrize("exponent", [2.0, 3.0, 0.5, 0.0, 1.0, -1.5])
def test_pow_constant_exponent(exponent: float) -> None:
    """x^p * x, so that p = 0 (zero gradient through Pow, like torch) still has a non-zero reference."""
    x = np.abs(randn(3, 2, 3, 3)) + 0.5
    check_against_torch([node("Pow", ["x", "p"], ["xp"]), node("Mul", ["xp", "x"], ["y"])], x,
                        lambda t: torch.pow(t, exponent) * t, {"p": np.array(exponent, np.float32)})


def test_pow_tensor_exponent_broadcasts_x() -> None:
    p = np.array([[1.0], [2.0], [0.0], [3.0]], np.float32)
    x = np.abs(randn(3, 1, 5)) + 0.5
    check_against_torch([node("Pow", ["x", "p"], ["y"])], x, lambda t: torch.pow(t, T(p)), {"p": p})


# ----- reductions ---------------------------------------------------------------------------------

@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_mean_opset17_attribute_axes(keepdims: int) -> None:
    nodes = [node("ReduceMean", ["x"], ["y"], axes=[1, -1], keepdims=keepdims)]
    check_against_torch(nodes, randn(3, 3, 4, 5), lambda t: t.mean(dim=(1, 3), keepdim=bool(keepdims)), opset=17)


@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_mean_opset18_input_axes(keepdims: int) -> None:
    nodes = [node("ReduceMean", ["x", "axes"], ["y"], keepdims=keepdims)]
    check_against_torch(nodes, randn(3, 3, 4, 5), lambda t: t.mean(dim=(2, 3), keepdim=bool(keepdims)),
                        {"axes": np.array([2, 3], np.int64)}, opset=18)


@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_sum(keepdims: int) -> None:
    nodes = [node("ReduceSum", ["x", "axes"], ["y"], keepdims=keepdims)]
    check_against_torch(nodes, randn(3, 3, 4, 5), lambda t: t.sum(dim=(1, 2), keepdim=bool(keepdims)),
                        {"axes": np.array([1, -2], np.int64)})


def test_reduce_mean_over_batch_axis() -> None:
    """Averaging over the symbolic batch axis: the divisor is computed at run time."""
    nodes = [node("ReduceMean", ["x"], ["m"], axes=[0], keepdims=1), node("Mul", ["x", "m"], ["y"])]
    check_against_torch(nodes, randn(3, 2, 4), lambda t: t * t.mean(dim=0, keepdim=True))


# ----- shape ops ----------------------------------------------------------------------------------

def test_flatten_axis2_and_identity() -> None:
    nodes = [node("Flatten", ["x"], ["f"], axis=2), node("Identity", ["f"], ["y"])]
    check_against_torch(nodes, randn(3, 1, 3, 4), lambda t: t.reshape(t.shape[0], 12))


def test_reshape_squeeze_unsqueeze() -> None:
    nodes = [node("Reshape", ["x", "shape"], ["r"]), node("Unsqueeze", ["r", "ax"], ["u"]),
             node("Squeeze", ["u", "ax"], ["s"]), node("Relu", ["s"], ["y"])]
    check_against_torch(nodes, randn(3, 2, 3, 4), lambda t: F.relu(t.reshape(t.shape[0], 6, 4)),
                        {"shape": np.array([0, 6, 4], np.int64), "ax": np.array([2], np.int64)})


def test_expand() -> None:
    nodes = [node("Expand", ["x", "shape"], ["y"])]
    check_against_torch(nodes, randn(3, 3, 1, 4), lambda t: t.expand(-1, 3, 5, 4) * 1.0,
                        {"shape": np.array([3, 5, 4], np.int64)})


def test_transpose() -> None:
    nodes = [node("Transpose", ["x"], ["y"], perm=[0, 3, 1, 2])]
    check_against_torch(nodes, randn(3, 2, 3, 4), lambda t: t.permute(0, 3, 1, 2))


def test_concat_with_constant_and_self() -> None:
    """Inputs: x twice, relu(x), and a constant expanded to the run-time batch (built by shape arithmetic)."""
    c = randn(1, 2, 3)
    nodes = [node("Relu", ["x"], ["r"]), node("Shape", ["x"], ["xs"]), node("Slice", ["xs", "zero", "one"], ["n"]),
             node("Concat", ["n", "rest"], ["cshape"], axis=0), node("Expand", ["c", "cshape"], ["ce"]),
             node("Concat", ["x", "ce", "r", "x"], ["y"], axis=1)]

    def torch_fn(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, T(c).expand(t.shape[0], 2, 3), F.relu(t), t], dim=1)
    inits = {"c": c, "zero": np.array([0], np.int64), "one": np.array([1], np.int64),
             "rest": np.array([2, 3], np.int64)}
    check_against_torch(nodes, randn(3, 4, 3), torch_fn, inits)


def test_concat_on_batch_axis() -> None:
    """A concat along the symbolic axis needs run-time offsets."""
    nodes = [node("Relu", ["x"], ["r"]), node("Concat", ["x", "r"], ["cat"], axis=0),
             node("Slice", ["cat", "st", "en", "ax"], ["s"]), node("Mul", ["s", "x"], ["y"])]

    def torch_fn(t: torch.Tensor) -> torch.Tensor:
        cat = torch.cat([t, F.relu(t)], 0)
        return cat[1:1 + t.shape[0]] * t
    inits = {"st": np.array([1], np.int64), "en": np.array([4], np.int64), "ax": np.array([0], np.int64)}
    check_against_torch(nodes, randn(3, 4), torch_fn, inits, batches=(3,))


@pytest.mark.parametrize("opset", [17, 18])
def test_split_with_unused_output(opset: int) -> None:
    split_attrs = {"num_outputs": 3} if opset >= 18 else {}
    inputs = ["x"] if opset >= 18 else ["x", "sizes"]
    nodes = [node("Split", inputs, ["a", "b", "c"], axis=1, **split_attrs), node("Mul", ["a", "c"], ["y"])]

    def torch_fn(t: torch.Tensor) -> torch.Tensor:
        a, _, c = torch.split(t, 2, dim=1)
        return a * c
    check_against_torch(nodes, randn(3, 6, 4), torch_fn, {"sizes": np.array([2, 2, 2], np.int64)}, opset=opset)


@pytest.mark.parametrize("starts, ends, axes, steps, fn", [
    ([1, 0], [3, -1], [1, 3], [1, 1], lambda t: t[:, 1:3, :, 0:-1]),
    ([-2], [100], [2], None, lambda t: t[:, :, -2:]),
    ([0, 3], [4, 0], [1, 3], [2, -1], lambda t: t.flip(3)[:, 0:4:2, :, 1:4]),
    ([-1], [-(2**62)], [0], [-1], lambda t: t.flip(0)),
    ([0], [1000], [0], None, lambda t: t[0:1000]),
], ids=["unit_steps", "negative_start", "step2_and_negative", "batch_axis_reversed", "batch_axis_unit"])
def test_slice(starts, ends, axes, steps, fn) -> None:
    inputs = ["x", "st", "en", "ax"] + (["sp"] if steps else [])
    inits = {"st": np.array(starts, np.int64), "en": np.array(ends, np.int64), "ax": np.array(axes, np.int64)}
    if steps:
        inits["sp"] = np.array(steps, np.int64)
    check_against_torch([node("Slice", inputs, ["y"])], randn(3, 4, 3, 5), fn, inits)


@pytest.mark.parametrize("opset", [17, 18])
def test_pad_constant_positive_and_negative(opset: int) -> None:
    pads = np.array([0, 1, -1, 2, 0, 2, 1, -2], np.int64)
    nodes = [node("Pad", ["x", "pads", "val"], ["y"], mode="constant")]
    fn = lambda t: F.pad(t, (2, -2, -1, 1, 1, 2), value=0.5)  # noqa: E731
    check_against_torch(nodes, randn(3, 2, 5, 6), fn, {"pads": pads, "val": np.array(0.5, np.float32)}, opset=opset)


@pytest.mark.parametrize("opset", [17, 18])
def test_pad_pads_known_only_at_run_time(opset: int) -> None:
    """pads = const * (N // N): the same numbers, but not a constant at export time."""
    axes_inputs = ["axes"] if opset >= 18 else []
    nodes = [node("Shape", ["x"], ["xs"]), node("Slice", ["xs", "zero", "one"], ["n"]),
             node("Div", ["n", "n"], ["unit"]), node("Mul", ["pads_const", "unit"], ["pads"]),
             node("Pad", ["x", "pads", "", *axes_inputs], ["y"])]
    pads = np.array([1, -1, 2, 1] if opset >= 18 else [0, 0, 1, -1, 0, 0, 2, 1], np.int64)
    inits = {"zero": np.array([0], np.int64), "one": np.array([1], np.int64), "pads_const": pads,
             "axes": np.array([2, 3], np.int64)}
    check_against_torch(nodes, randn(3, 2, 4, 5), lambda t: F.pad(t, (-1, 1, 1, 2)), inits, opset=opset)


def test_pad_opset18_axes_input() -> None:
    nodes = [node("Pad", ["x", "pads", "", "axes"], ["y"])]
    inits = {"pads": np.array([1, 2, 3, 0], np.int64), "axes": np.array([-1, 2], np.int64)}
    check_against_torch(nodes, randn(3, 2, 4, 5), lambda t: F.pad(t, (1, 3, 2, 0)), inits, opset=18)


@pytest.mark.parametrize("mode, torch_mode", [("reflect", "reflect"), ("edge", "replicate"), ("wrap", "circular")])
def test_pad_reflect_edge_wrap(mode: str, torch_mode: str) -> None:
    """Non-constant modes copy input elements, some several times: gradients accumulate (scatter-add)."""
    nodes = [node("Pad", ["x", "pads"], ["y"], mode=mode)]
    pads = np.array([0, 0, 2, 1, 0, 0, 1, 2], np.int64)
    check_against_torch(nodes, randn(3, 2, 4, 5), lambda t: F.pad(t, (1, 2, 2, 1), mode=torch_mode), {"pads": pads},
                        opset=19)


def test_gather_repeated_indices() -> None:
    idx = np.array([[0, 2], [2, 2]], np.int64)
    nodes = [node("Gather", ["x", "idx"], ["y"], axis=1)]
    check_against_torch(nodes, randn(3, 4, 3), lambda t: t[:, T(idx)], {"idx": idx})


def test_gather_elements_and_gather_nd() -> None:
    """GatherElements along axis 2 and GatherND with batch_dims=1, both with repeated picks."""
    idx_el = np.array([[0, 0, 2], [1, 1, 1]], np.int64)  # per channel, along the last axis
    idx_nd = np.array([[1, 2], [1, 2], [0, 0]], np.int64)    # picks x[n, 1, 2] twice and x[n, 0, 0]
    nodes = [node("Shape", ["x"], ["xs"]), node("Slice", ["xs", "zero", "one"], ["n"]),
             node("Concat", ["n", "el_rest"], ["el_shape"], axis=0), node("Expand", ["idx_el", "el_shape"], ["idx_el_n"]),
             node("GatherElements", ["x", "idx_el_n"], ["ge"], axis=2),
             node("Concat", ["n", "nd_rest"], ["nd_shape"], axis=0), node("Expand", ["idx_nd", "nd_shape"], ["idx_nd_n"]),
             node("GatherND", ["x", "idx_nd_n"], ["gn"], batch_dims=1),
             node("Flatten", ["ge"], ["ge_f"]), node("Concat", ["ge_f", "gn"], ["y"], axis=1)]

    def torch_fn(t: torch.Tensor) -> torch.Tensor:
        ge = torch.gather(t, 2, T(idx_el).reshape(1, 2, 3).expand(t.shape[0], 2, 3))
        gn = t[:, T(idx_nd)[:, 0], T(idx_nd)[:, 1]]
        return torch.cat([ge.flatten(1), gn], dim=1)
    inits = {"idx_el": idx_el.reshape(1, 2, 3), "el_rest": np.array([2, 3], np.int64), "idx_nd": idx_nd[None],
             "zero": np.array([0], np.int64), "one": np.array([1], np.int64), "nd_rest": np.array([3, 2], np.int64)}
    check_against_torch(nodes, randn(3, 2, 3), torch_fn, inits)


def test_tile() -> None:
    nodes = [node("Tile", ["x", "reps"], ["y"])]
    check_against_torch(nodes, randn(3, 2, 3), lambda t: t.repeat(1, 2, 3), {"reps": np.array([1, 2, 3], np.int64)})


def test_where_both_branches_broadcast() -> None:
    """Where(x > 0, x, mean(x) over the last axis): both value inputs on the path, one broadcast."""
    nodes = [node("Greater", ["x", "zero_f"], ["pos"]), node("ReduceMean", ["x"], ["m"], axes=[2], keepdims=1),
             node("Where", ["pos", "x", "m"], ["y"])]
    fn = lambda t: torch.where(t > 0, t, t.mean(dim=2, keepdim=True))  # noqa: E731
    check_against_torch(nodes, randn(3, 2, 5), fn, {"zero_f": np.array(0.0, np.float32)})


def test_dropout_inference_and_cast() -> None:
    nodes = [node("Dropout", ["x", "ratio"], ["d"]), node("Cast", ["d"], ["dd"], to=onnx.TensorProto.DOUBLE),
             node("Cast", ["dd"], ["y"], to=onnx.TensorProto.FLOAT)]
    check_against_torch(nodes, randn(3, 2, 3), lambda t: t.double().float(), {"ratio": np.array(0.5, np.float32)})


# ----- Gemm / MatMul ------------------------------------------------------------------------------

@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_all_inputs_on_path(trans_a: int, trans_b: int) -> None:
    """A = x (or x^T), B = outer(sum_n x, c) (or ^T), C = x[:, :4]: all three on the path."""
    c = randn(1, 4)
    nodes = [node("Transpose", ["x"], ["a"], perm=[1, 0]) if trans_a else node("Identity", ["x"], ["a"]),
             node("ReduceSum", ["x", "ax0"], ["colsum"], keepdims=1),
             node("Transpose", ["colsum"], ["colsum_t"], perm=[1, 0]),
             node("MatMul", ["colsum_t", "c"], ["b0"]),
             node("Transpose", ["b0"], ["b"], perm=[1, 0]) if trans_b else node("Identity", ["b0"], ["b"]),
             node("Slice", ["x", "zero", "four", "one"], ["cc"]),
             node("Gemm", ["a", "b", "cc"], ["y"], alpha=0.7, beta=1.3, transA=trans_a, transB=trans_b)]
    inits = {"c": c, "ax0": np.array([0], np.int64), "zero": np.array([0], np.int64),
             "four": np.array([4], np.int64), "one": np.array([1], np.int64)}

    def torch_fn(t: torch.Tensor) -> torch.Tensor:
        b = t.sum(0, keepdim=True).T @ T(c)
        return 0.7 * t @ b + 1.3 * t[:, :4]
    check_against_torch(nodes, randn(3, 6), torch_fn, inits)


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_constant_weight_broadcast_bias(trans_a: int, trans_b: int) -> None:
    w, bias = randn(5, 6) if trans_b else randn(6, 5), randn(5)
    a_node = node("Transpose", ["x"], ["a"], perm=[1, 0]) if trans_a else node("Identity", ["x"], ["a"])
    nodes = [a_node, node("Gemm", ["a", "w", "bias"], ["y"], alpha=1.5, beta=0.5, transA=trans_a, transB=trans_b)]
    fn = lambda t: 1.5 * t @ (T(w).T if trans_b else T(w)) + 0.5 * T(bias)  # noqa: E731
    check_against_torch(nodes, randn(3, 6), fn, {"w": w, "bias": bias})


def test_matmul_batched_broadcast_constant() -> None:
    w = randn(2, 4, 5)
    check_against_torch([node("MatMul", ["x", "w"], ["y"])], randn(3, 2, 3, 4), lambda t: t @ T(w), {"w": w})


def test_matmul_constant_on_left() -> None:
    w = randn(5, 3)
    check_against_torch([node("MatMul", ["w", "x"], ["y"])], randn(3, 2, 3, 4), lambda t: T(w) @ t, {"w": w})


def test_matmul_both_on_path_attention_like() -> None:
    nodes = [node("Transpose", ["x"], ["xt"], perm=[0, 1, 3, 2]), node("MatMul", ["x", "xt"], ["s"]),
             node("Softmax", ["s"], ["p"], axis=-1), node("MatMul", ["p", "x"], ["y"])]

    def torch_fn(t: torch.Tensor) -> torch.Tensor:
        return F.softmax(t @ t.transpose(2, 3), -1) @ t
    check_against_torch(nodes, randn(3, 2, 4, 3) * 0.5, torch_fn)


def test_matmul_one_dimensional_operands() -> None:
    v, u = randn(4), randn(2)
    nodes = [node("MatMul", ["x", "v"], ["xv"]), node("MatMul", ["u", "xv"], ["uxv"]),
             node("Unsqueeze", ["uxv", "ax"], ["y"])]
    check_against_torch(nodes, randn(3, 2, 3, 4), lambda t: (T(u) @ (t @ T(v))).unsqueeze(1),
                        {"v": v, "u": u, "ax": np.array([1], np.int64)})

"""Gradients through INT8 quantization, as quantization-aware training takes them (straight-through estimator).

A quantized (integer) tensor `q` carries the gradient with respect to its integer value, dL/dq, in float32. Then:

- `DequantizeLinear` y = (q - zp) * s: dL/dq = dL/dy * s.
- `QuantizeLinear` q = saturate(round(x / s) + zp): rounding passes the gradient straight through, saturation does
  not: dL/dx = dL/dq / s where x lies inside the representable range [(qmin - zp) * s, (qmax - zp) * s], 0 outside.
- QOperator ops (`QLinearConv`, `QLinearMatMul`, `QGemm`, `QLinearAdd`, `QLinearMul`, `QLinearGlobalAveragePool`,
  `ConvInteger`, `MatMulInteger`, `DynamicQuantizeLinear`) are differentiated through their dequantized float
  equivalents: the backward graph recomputes the op in float32 on the dequantized inputs (for the range mask of its
  requantized output) and applies the float op's rule; the forward values stay the integer graph's.
- `DynamicQuantizeLinear`'s scale and zero point are computed from its input; like fake quantization in training
  they are treated as constants (no gradient flows through the range the op measured).

`QUANTIZED_OUTPUTS` and `INTEGER_PASSTHROUGH` tell the differentiator which integer tensors carry quantized values
(so they lie on the differentiable path although they are not float).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from fusioncam.errors import UnsupportedOpError
from fusioncam.export.grad_context import GradContext, attribute, node_input, node_label
from fusioncam.export.grad_rules.registry import RULES, grad_rule

# op type -> output positions holding quantized values (differentiable although their element type is an integer)
QUANTIZED_OUTPUTS = {
    "QuantizeLinear": (0,), "DynamicQuantizeLinear": (0,), "QLinearConv": (0,), "QLinearMatMul": (0,),
    "QGemm": (0,), "QLinearAdd": (0,), "QLinearMul": (0,), "QLinearGlobalAveragePool": (0,),
    "ConvInteger": (0,), "MatMulInteger": (0,), "QLinearSigmoid": (0,), "QLinearLeakyRelu": (0,),
}
# outputs that depend on the input but carry no gradient (the measured range of DynamicQuantizeLinear)
CONSTANT_OUTPUTS = {"DynamicQuantizeLinear": (1, 2)}
# nodes named under this prefix measure a quantization range (dynamic_quantization.py): constants for the gradient
MEASURED_RANGE = "measured_range/"
# data-movement ops that QOperator graphs run on integer tensors (output 0 carries input 0's quantized values)
INTEGER_PASSTHROUGH = ("MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Slice",
                       "Resize")  # Resize of integers: its rounding passes the gradient straight through
QUANTIZATION_OPS = ("QuantizeLinear", "DequantizeLinear", *QUANTIZED_OUTPUTS)

_RANGES = {TensorProto.UINT8: (0, 255), TensorProto.INT8: (-128, 127), TensorProto.UINT16: (0, 65535),
           TensorProto.INT16: (-32768, 32767), TensorProto.INT32: (-(2 ** 31), 2 ** 31 - 1)}


def carries_quantized_values(node: onnx.NodeProto, index: int, input_reached: bool) -> bool:
    """True when output `index` of `node` holds quantized values the gradient flows through (integer typed). Every
    QLinear* op's output counts, so one without a rule is named by the differentiator's 'no gradient rule' error."""
    if index in QUANTIZED_OUTPUTS.get(node.op_type, ()) or (index == 0 and node.op_type.startswith("QLinear")):
        return True
    return node.op_type in INTEGER_PASSTHROUGH and index == 0 and input_reached


def _integer_range(ctx: GradContext, node: onnx.NodeProto, zero_point: str, default: int) -> tuple[int, int]:
    """(qmin, qmax) of the quantized type: the zero point's element type (`default` when it is absent)."""
    elem = ctx.elem_type(zero_point) if zero_point else default
    value = ctx.constant_value(zero_point) if zero_point else None
    if elem is None and value is not None:
        elem = helper.np_dtype_to_tensor_dtype(value.dtype)
    if elem not in _RANGES:
        name = TensorProto.DataType.Name(elem) if elem else "unknown"
        raise UnsupportedOpError(f"node {node_label(node)} ({node.op_type}): quantized type {name} is not supported; "
                                 "fusioncam differentiates 8-bit and 16-bit integer quantization")
    return _RANGES[elem]


def _broadcast(ctx: GradContext, node: onnx.NodeProto, value: str, rank: int, axis: int) -> str:
    """A per-tensor (0-d or [1]) scale/zero point as it is, a per-axis one reshaped to broadcast along `axis`."""
    dims = ctx.maybe_shape(value)
    if dims is None:
        constant = ctx.constant_value(value)
        dims = list(constant.shape) if constant is not None else None
    if dims is None:
        raise UnsupportedOpError(f"node {node_label(node)} ({node.op_type}): the shape of {value!r} is unknown")
    if len(dims) == 0 or (len(dims) == 1 and dims[0] == 1):
        return value
    if len(dims) != 1:
        raise UnsupportedOpError(f"node {node_label(node)} ({node.op_type}): blocked quantization (scale "
                                 f"{value!r} of rank {len(dims)}) is not supported; use per-tensor or per-axis scales")
    shape = [1] * rank
    shape[axis % rank] = -1
    return ctx.node("Reshape", [value, ctx.ints(shape)], hint="per_axis")


def _as_float(ctx: GradContext, name: str) -> str:
    """`name` cast to float32 (zero points are integers)."""
    return ctx.node("Cast", [name], {"to": TensorProto.FLOAT})


def straight_through(ctx: GradContext, node: onnx.NodeProto, x: str, dq: str, scale: str, zero_point: str,
                     rank: int, axis: int = 1) -> str:
    """dL/dx of q = quantize(x, scale, zero_point) given dL/dq: dq / scale inside the representable range, else 0."""
    qmin, qmax = _integer_range(ctx, node, zero_point, TensorProto.UINT8)
    s = _broadcast(ctx, node, scale, rank, axis)
    zp = _as_float(ctx, _broadcast(ctx, node, zero_point, rank, axis)) if zero_point else ctx.const(
        np.float32(0), hint="zero")
    low = ctx.node("Mul", [ctx.node("Sub", [ctx.const(np.float32(qmin), hint="qmin"), zp]), s], hint="q_low")
    high = ctx.node("Mul", [ctx.node("Sub", [ctx.const(np.float32(qmax), hint="qmax"), zp]), s], hint="q_high")
    inside = ctx.node("And", [ctx.node("GreaterOrEqual", [x, low]), ctx.node("LessOrEqual", [x, high])])
    passed = ctx.node("Div", [dq, s])
    return ctx.node("Where", [inside, passed, ctx.const(np.float32(0), hint="zero")], hint="ste")


def _dequantized_value(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int) -> np.ndarray:
    """(q - zero_point) * scale in float32, per-axis scales and zero points broadcast along `axis`."""
    shape = [1] * q.ndim
    if scale.size > 1 or zero_point.size > 1:
        shape[axis % q.ndim] = -1
    value = q.astype(np.float64) - zero_point.astype(np.float64).reshape(shape if zero_point.size > 1 else ())
    return (value * scale.astype(np.float64).reshape(shape if scale.size > 1 else ())).astype(np.float32)


def dequantized(ctx: GradContext, node: onnx.NodeProto, q: str, scale: str, zero_point: str, like: str,
                axis: int = 1) -> str:
    """The float32 value of integer tensor `q` (a constant when `q` is one), with `like`'s shape recorded."""
    q_value, s_value = ctx.constant_value(q), ctx.constant_value(scale)
    zp_value = ctx.constant_value(zero_point) if zero_point else np.zeros((), np.int32)
    if q_value is not None and s_value is not None and zp_value is not None:
        value = _dequantized_value(q_value, s_value, zp_value, axis)
        return _typed_float(ctx, ctx.const(value, hint="dequantized"), list(value.shape))
    inputs = [q, scale] + ([zero_point] if zero_point else [])
    out = ctx.node("DequantizeLinear", inputs, {"axis": axis} if ctx.maybe_shape(scale) not in ([], [1]) else None,
                   hint="dequantized")
    return _typed_float(ctx, out, ctx.shape(like, node))


def _typed_float(ctx: GradContext, name: str, dims: list) -> str:
    """Record `name` as a float32 tensor of `dims` for the rules that look it up; return it."""
    ctx.set_shape(name, dims, elem=TensorProto.FLOAT)
    return name


def _float_twin(ctx: GradContext, node: onnx.NodeProto, op: str, inputs: list[str], output_like: str,
                attrs: dict | None = None) -> tuple[onnx.NodeProto, str]:
    """A float32 node `op(inputs)` appended to the backward graph (the quantized op's float equivalent) and its output,
    with the quantized output's shape recorded for the float op's own rule."""
    out = ctx.fresh(f"float_{op}")
    twin = helper.make_node(op, inputs, [out], name=ctx.fresh(f"node_float_{op}"), **(attrs or {}))
    ctx.nodes.append(twin)
    return twin, _typed_float(ctx, out, ctx.shape(output_like, node))


def _float_rule(ctx: GradContext, twin: onnx.NodeProto, dy: str, needs: frozenset) -> dict:
    """The float op's own gradient rule applied to the twin node."""
    return RULES[twin.op_type].fn(ctx, twin, [dy], needs)


@grad_rule("DequantizeLinear")
def dequantize_linear(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """y = (q - zp) * s: dL/dq = dL/dy * s (per-axis scales broadcast along `axis`)."""
    rank = len(ctx.shape(node.output[0], node))
    scale = _broadcast(ctx, node, node.input[1], rank, attribute(node, "axis", 1))
    return {0: ctx.node("Mul", [dys[0], scale], hint="dequantize_grad")}


@grad_rule("QuantizeLinear")
def quantize_linear(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """Straight-through: dL/dx = dL/dq / s inside the representable range, 0 where the value saturates.

    When x comes from a Conv/Gemm/MatMul on dequantized tensors (a QDQ node unit that ONNX Runtime runs as one integer
    op), the range test reads a float32 recomputation of x (`_recomputed`) rather than x itself: a backward node
    reading x would keep ONNX Runtime from fusing the unit, and the forward would no longer be the integer graph's."""
    x = node.input[0]
    rank = len(ctx.shape(x, node))
    return {0: straight_through(ctx, node, _recomputed(ctx, x), dys[0], node.input[1], node_input(node, 2), rank,
                                attribute(node, "axis", 1))}


RECOMPUTED_OPS = ("Conv", "Gemm", "MatMul")


def _recomputed(ctx: GradContext, x: str) -> str:
    """x recomputed by a copy of its producer whose dequantized inputs are rebuilt apart from the forward's nodes
    (constants folded, activations by Cast-Sub-Mul), so ONNX Runtime neither merges the copy with the forward op nor
    sees the forward op's float output read; x itself when its producer is not a QDQ unit's op."""
    producer = ctx.producers.get(x)
    if producer is None or producer.op_type not in RECOMPUTED_OPS:
        return x
    inputs = []
    for name in producer.input:
        source = ctx.producers.get(name)
        if not name or source is None or source.op_type != "DequantizeLinear":
            inputs.append(name)
            continue
        folded = dequantized_constant(ctx, source)
        inputs.append(folded if folded is not None else _dequantized_apart(ctx, source))
    if inputs == list(producer.input):
        return x
    attrs = {a.name: helper.get_attribute_value(a) for a in producer.attribute}
    out = ctx.fresh(f"recomputed_{producer.op_type}")
    ctx.nodes.append(helper.make_node(producer.op_type, inputs, [out], name=ctx.fresh("node_recomputed"), **attrs))
    return _typed_float(ctx, out, ctx.shape(x, producer))


def dequantized_constant(ctx: GradContext, dq: onnx.NodeProto) -> str | None:
    """A DequantizeLinear of constants as a float32 constant (None when its inputs are not constants)."""
    q, s = ctx.constant_value(dq.input[0]), ctx.constant_value(dq.input[1])
    zp_name = node_input(dq, 2)
    zp = ctx.constant_value(zp_name) if zp_name else np.zeros((), np.int32)
    if q is None or s is None or zp is None:
        return None
    value = _dequantized_value(q, s, zp, attribute(dq, "axis", 1))
    return _typed_float(ctx, ctx.const(value, hint="dequantized"), list(value.shape))


def _dequantized_apart(ctx: GradContext, dq: onnx.NodeProto) -> str:
    """(q - zp) * s by Cast, Sub and Mul: the DequantizeLinear's value computed by nodes ONNX Runtime keeps apart."""
    q = dq.input[0]
    rank = len(ctx.shape(q, dq))
    value = _as_float(ctx, q)
    if node_input(dq, 2):
        value = ctx.node("Sub", [value, _as_float(ctx, _broadcast(ctx, dq, dq.input[2], rank,
                                                                   attribute(dq, "axis", 1)))])
    value = ctx.node("Mul", [value, _broadcast(ctx, dq, dq.input[1], rank, attribute(dq, "axis", 1))])
    return _typed_float(ctx, value, ctx.shape(q, dq))


@grad_rule("DynamicQuantizeLinear", outputs=(0,))
def dynamic_quantize_linear(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """Straight-through with the measured (constant) scale and zero point: dL/dx = dL/dq / scale inside the range."""
    x = node.input[0]
    rank = len(ctx.shape(x, node))
    return {0: straight_through(ctx, node, x, dys[0], node.output[1], node.output[2], rank)}


def _conv_like(ctx: GradContext, node: onnx.NodeProto, x_f: str, w_f: str, dy_f: str) -> str:
    """dL/dx_f of Conv(x_f, w_f) with the quantized node's attributes (the Conv rule on a copy that is not run)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    twin = helper.make_node("Conv", [x_f, w_f], [ctx.fresh("unused")], name=ctx.fresh("node_twin"), **attrs)
    return _float_rule(ctx, twin, dy_f, frozenset({0}))[0]


@grad_rule("QLinearConv")
def qlinear_conv(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """y = quantize(Conv(deq x, deq w) + B * xs * ws): straight-through at y's requantization, Conv's rule below."""
    x, xs, xzp, w, ws, wzp, ys, yzp = (node_input(node, i) for i in range(8))
    bias = node_input(node, 8)
    rank = len(ctx.shape(x, node))
    x_f = dequantized(ctx, node, x, xs, xzp, x)
    w_f = dequantized(ctx, node, w, ws, wzp, w, axis=0)
    b_f = ""
    if bias:
        b_value, xs_value, ws_value = (ctx.constant_value(n) for n in (bias, xs, ws))
        if b_value is None or xs_value is None or ws_value is None:
            raise UnsupportedOpError(f"node {node_label(node)} (QLinearConv): bias {bias!r} or the scales are not "
                                     "constants; cannot build the float equivalent")
        b_f = ctx.const((b_value.astype(np.float64) * xs_value.astype(np.float64) * ws_value.astype(np.float64))
                        .astype(np.float32), hint="dequantized_bias")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    twin, y_f = _float_twin(ctx, node, "Conv", [x_f, w_f] + ([b_f] if b_f else []), node.output[0], attrs)
    dy_f = straight_through(ctx, node, y_f, dys[0], ys, yzp, rank)
    dx_f = _float_rule(ctx, twin, dy_f, frozenset({0}))[0]
    return {0: ctx.node("Mul", [dx_f, xs], hint="qconv_grad")}


@grad_rule("ConvInteger")
def conv_integer(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """y = Conv(x - xzp, w - wzp) in int32 (no requantization): dL/dx = ConvTranspose(dL/dy, w - wzp)."""
    x, w, xzp, wzp = (node_input(node, i) for i in range(4))
    one = ctx.const(np.array(1, np.float32), hint="unit_scale")
    x_f = dequantized(ctx, node, x, one, xzp, x)
    w_f = dequantized(ctx, node, w, ctx.const(np.ones(1, np.float32), hint="unit_scale"), wzp, w, axis=0)
    return {0: _conv_like(ctx, node, x_f, w_f, dys[0])}


def _matmul_grads(ctx: GradContext, node: onnx.NodeProto, a_f: str, b_f: str, dy_f: str, needs: frozenset,
                  positions: tuple[int, int]) -> dict:
    """dL/d(deq a), dL/d(deq b) of a float MatMul twin, keyed by the quantized node's input positions."""
    twin = helper.make_node("MatMul", [a_f, b_f], [ctx.fresh("unused")], name=ctx.fresh("node_twin"))
    wanted = frozenset(i for i, p in enumerate(positions) if p in needs)
    grads = _float_rule(ctx, twin, dy_f, wanted)
    return {positions[i]: g for i, g in grads.items()}


@grad_rule("MatMulInteger", inputs=(0, 1))
def matmul_integer(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """y = (a - azp)(b - bzp) in int32: the float MatMul rule on the zero-point-shifted operands."""
    a, b, azp, bzp = (node_input(node, i) for i in range(4))
    one = ctx.const(np.array(1, np.float32), hint="unit_scale")
    a_f = dequantized(ctx, node, a, one, azp, a)
    b_f = dequantized(ctx, node, b, one, bzp, b, axis=-1)
    return _matmul_grads(ctx, node, a_f, b_f, dys[0], needs, (0, 1))


@grad_rule("QLinearMatMul", inputs=(0, 3))
def qlinear_matmul(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """y = quantize(deq a @ deq b): straight-through at the requantization, then MatMul's rule."""
    a, a_s, azp, b, b_s, bzp, ys, yzp = (node_input(node, i) for i in range(8))
    a_f = dequantized(ctx, node, a, a_s, azp, a)
    b_f = dequantized(ctx, node, b, b_s, bzp, b, axis=-1)
    _, y_f = _float_twin(ctx, node, "MatMul", [a_f, b_f], node.output[0])
    dy_f = straight_through(ctx, node, y_f, dys[0], ys, yzp, len(ctx.shape(node.output[0], node)))
    grads = _matmul_grads(ctx, node, a_f, b_f, dy_f, needs, (0, 3))
    return {i: ctx.node("Mul", [g, a_s if i == 0 else b_s]) for i, g in grads.items()}


@grad_rule("QGemm", inputs=(0,))
def qgemm(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """com.microsoft QGemm: Gemm on the dequantized operands (C in int32 at a_scale * b_scale), requantized when it
    has an output scale (else its output is float)."""
    a, a_s, azp, b, b_s, bzp, c, ys, yzp = (node_input(node, i) for i in range(9))
    if attribute(node, "transA", 0):
        raise UnsupportedOpError(f"node {node_label(node)} (QGemm): transA=1 is not supported")
    a_f = dequantized(ctx, node, a, a_s, azp, a)
    b_f = dequantized(ctx, node, b, b_s, bzp, b, axis=0 if attribute(node, "transB", 0) else -1)
    attrs = {"alpha": float(attribute(node, "alpha", 1.0)), "transB": int(attribute(node, "transB", 0))}
    dy_f = dys[0]
    if ys:
        inputs = [a_f, b_f]
        if c:
            c_value, as_value, bs_value = (ctx.constant_value(n) for n in (c, a_s, b_s))
            if c_value is None or as_value is None or bs_value is None:
                raise UnsupportedOpError(f"node {node_label(node)} (QGemm): C or the scales are not constants")
            inputs.append(ctx.const((c_value * as_value.astype(np.float64) * bs_value.astype(np.float64))
                                    .astype(np.float32), hint="dequantized_c"))
        _, y_f = _float_twin(ctx, node, "Gemm", inputs, node.output[0], attrs)
        dy_f = straight_through(ctx, node, y_f, dys[0], ys, yzp, 2)
    twin = helper.make_node("Gemm", [a_f, b_f], [ctx.fresh("unused")], name=ctx.fresh("node_twin"), **attrs)
    grad = _float_rule(ctx, twin, dy_f, frozenset({0}))[0]
    return {0: ctx.node("Mul", [grad, a_s])}


def _elementwise(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset, op: str) -> dict:
    """QLinearAdd / QLinearMul (com.microsoft): the float op on the dequantized operands, requantized."""
    a, a_s, azp, b, b_s, bzp, ys, yzp = (node_input(node, i) for i in range(8))
    a_f = dequantized(ctx, node, a, a_s, azp, a)
    b_f = dequantized(ctx, node, b, b_s, bzp, b)
    twin, y_f = _float_twin(ctx, node, op, [a_f, b_f], node.output[0])
    dy_f = straight_through(ctx, node, y_f, dys[0], ys, yzp, len(ctx.shape(node.output[0], node)))
    wanted = frozenset(i for i, p in enumerate((0, 3)) if p in needs)
    grads = _float_rule(ctx, twin, dy_f, wanted)
    return {(0, 3)[i]: ctx.node("Mul", [g, a_s if i == 0 else b_s]) for i, g in grads.items()}


@grad_rule("QLinearAdd", inputs=(0, 3))
def qlinear_add(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """C = quantize(deq A + deq B)."""
    return _elementwise(ctx, node, dys, needs, "Add")


@grad_rule("QLinearMul", inputs=(0, 3))
def qlinear_mul(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """C = quantize(deq A * deq B)."""
    return _elementwise(ctx, node, dys, needs, "Mul")


@grad_rule("QLinearGlobalAveragePool")
def qlinear_global_average_pool(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """Y = quantize(GlobalAveragePool(deq X)) (NCHW only)."""
    if attribute(node, "channels_last", 0):
        raise UnsupportedOpError(f"node {node_label(node)} (QLinearGlobalAveragePool): channels_last=1 is not "
                                 "supported")
    x, xs, xzp, ys, yzp = (node_input(node, i) for i in range(5))
    x_f = dequantized(ctx, node, x, xs, xzp, x)
    twin, y_f = _float_twin(ctx, node, "GlobalAveragePool", [x_f], node.output[0])
    dy_f = straight_through(ctx, node, y_f, dys[0], ys, yzp, len(ctx.shape(x, node)))
    return {0: ctx.node("Mul", [_float_rule(ctx, twin, dy_f, frozenset({0}))[0], xs])}


def _unary(ctx: GradContext, node: onnx.NodeProto, dys: list, op: str, attrs: dict | None = None) -> dict:
    """Y = quantize(op(deq X)) (com.microsoft QLinearSigmoid / QLinearLeakyRelu): the float op's rule on the twin."""
    x, xs, xzp, ys, yzp = (node_input(node, i) for i in range(5))
    x_f = dequantized(ctx, node, x, xs, xzp, x)
    twin, y_f = _float_twin(ctx, node, op, [x_f], node.output[0], attrs)
    dy_f = straight_through(ctx, node, y_f, dys[0], ys, yzp, len(ctx.shape(x, node)))
    return {0: ctx.node("Mul", [_float_rule(ctx, twin, dy_f, frozenset({0}))[0], xs])}


@grad_rule("QLinearSigmoid")
def qlinear_sigmoid(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """Y = quantize(Sigmoid(deq X))."""
    return _unary(ctx, node, dys, "Sigmoid")


@grad_rule("QLinearLeakyRelu")
def qlinear_leaky_relu(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """Y = quantize(LeakyRelu(deq X, alpha))."""
    return _unary(ctx, node, dys, "LeakyRelu", {"alpha": float(attribute(node, "alpha", 0.01))})

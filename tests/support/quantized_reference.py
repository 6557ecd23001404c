"""The float64 fake-quantized twin of an INT8 ONNX file, run in PyTorch: the reference for the quantized gradients.

Each node of the file becomes the torch op of its dequantized float equivalent (QLinearConv: conv2d of the dequantized
input and weight, requantized); every quantization (QuantizeLinear and each QOperator op's output) is fake
quantization with the straight-through estimator of quantization-aware training: round passes the gradient, and it
flows where the value lies in [(qmin - zp) * s, (qmax - zp) * s]. The forward value of every integer tensor is taken
from ONNX Runtime's run of the same file (`snap`), so the masks and max-pool choices are those of the integer graph and
the comparison tests the gradient rules, not float rounding at a tie. Written from the ONNX operator specs, sharing
no code with fusioncam's gradient rules.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

RANGES = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127)}


def integer_values(model: onnx.ModelProto, image: np.ndarray, input_name: str) -> dict[str, np.ndarray]:
    """ONNX Runtime's values of the quantized tensors of `model` on `image` (basic optimisations: no unit fused): the
    integer outputs of QOperator ops and the outputs of DequantizeLinear nodes of activations. QuantizeLinear outputs
    are not asked for: a QDQ unit whose output is a graph output is not fused, and its values would differ."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    inferred = onnx.shape_inference.infer_shapes(copy)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    constants = {i.name for i in copy.graph.initializer}
    wanted = [o for n in copy.graph.node for o in n.output
              if o and ((n.op_type == "DequantizeLinear" and n.input[0] not in constants)
                        or (n.op_type != "QuantizeLinear"
                            and types.get(o) in (TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32)))]
    copy.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in wanted)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(copy.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return dict(zip(wanted, session.run(wanted, {input_name: image})))


class FakeQuantModel:
    """Evaluates an ONNX graph as its float64 fake-quantized twin; `gradient` gives d(logit of class)/d(tensor)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.dtypes = {name: value.dtype for name, value in self.consts.items()}

    def _t(self, env: dict, name: str):
        if not name:
            return None
        if name in env:
            return env[name]
        return torch.from_numpy(np.asarray(self.consts[name]).astype(np.float64))

    def _range(self, zp_name: str) -> tuple[int, int]:
        return RANGES[self.dtypes.get(zp_name, np.dtype(np.uint8))] if zp_name else (0, 255)

    @staticmethod
    def _per_axis(v, rank: int, axis: int):
        if v.dim() == 0 or v.numel() == 1:
            return v.reshape(())
        shape = [1] * rank
        shape[axis % rank] = -1
        return v.reshape(shape)

    def _quantize(self, x, s, zp, zp_name: str, axis: int = 1):
        qmin, qmax = self._range(zp_name)
        s = self._per_axis(s, x.dim(), axis)
        zp = self._per_axis(zp, x.dim(), axis) if zp is not None else torch.zeros((), dtype=x.dtype)
        raw = x / s + zp
        q = raw + (torch.clamp(torch.round(raw), qmin, qmax) - raw).detach()
        inside = (x >= (qmin - zp) * s) & (x <= (qmax - zp) * s)
        return torch.where(inside, q, q.detach())

    def _dequantize(self, q, s, zp, axis: int = 1):
        s = self._per_axis(s, q.dim(), axis)
        zp = self._per_axis(zp, q.dim(), axis) if zp is not None else 0.0
        return (q - zp) * s

    def run(self, image: np.ndarray, snap: dict, target: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, target tensor as a leaf needing its gradient) of the graph's first output."""
        graph = self.model.graph
        env = {graph.input[0].name: torch.from_numpy(image.astype(np.float64))}
        leaf = None
        for node in graph.node:
            outs = self._node(node, env)
            for name, value in zip(node.output, outs):
                if name in snap and value is not None:
                    value = value + (torch.from_numpy(snap[name].astype(np.float64)) - value).detach()
                if name == target:
                    value = leaf = value.detach().requires_grad_(True)
                env[name] = value
            if graph.output[0].name in env:
                break
        return env[graph.output[0].name], leaf

    def gradient(self, image: np.ndarray, snap: dict, target: str, classes: np.ndarray) -> tuple[np.ndarray, ...]:
        """(logits, target value, d(sum of each image's logit of its class)/d(target)) in float64."""
        logits, leaf = self.run(image, snap, target)
        seed = torch.zeros_like(logits)
        seed[torch.arange(len(classes)), torch.from_numpy(classes)] = 1.0
        (grad,) = torch.autograd.grad((logits * seed).sum(), leaf)
        return logits.detach().numpy(), leaf.detach().numpy(), grad.numpy()

    def _attr(self, node, name, default=None):
        for a in node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    def _conv(self, node, x, w, b):
        pads = self._attr(node, "pads", [0, 0, 0, 0])
        x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
        return F.conv2d(x, w, b, stride=self._attr(node, "strides", [1, 1]),
                        dilation=self._attr(node, "dilations", [1, 1]), groups=self._attr(node, "group", 1))

    def _node(self, node, env):  # noqa: C901  (one branch per op)
        t = lambda i: self._t(env, node.input[i]) if i < len(node.input) else None  # noqa: E731
        name = lambda i: node.input[i] if i < len(node.input) else ""  # noqa: E731
        op = node.op_type
        if op == "QuantizeLinear":
            return [self._quantize(t(0), t(1), t(2), name(2), self._attr(node, "axis", 1))]
        if op == "DequantizeLinear":
            return [self._dequantize(t(0), t(1), t(2), self._attr(node, "axis", 1))]
        if op == "QLinearConv":
            x = self._dequantize(t(0), t(1), t(2))
            w = self._dequantize(t(3), t(4), t(5), axis=0)
            b = t(8) * t(1) * t(4) if name(8) else None
            return [self._quantize(self._conv(node, x, w, b), t(6), t(7), name(7))]
        if op in ("QLinearAdd", "QLinearMul"):
            a, b = self._dequantize(t(0), t(1), t(2)), self._dequantize(t(3), t(4), t(5))
            return [self._quantize(a + b if op == "QLinearAdd" else a * b, t(6), t(7), name(7))]
        if op == "QLinearGlobalAveragePool":
            x = self._dequantize(t(0), t(1), t(2))
            return [self._quantize(x.mean(dim=(2, 3), keepdim=True), t(3), t(4), name(4))]
        if op == "QLinearSigmoid":
            return [self._quantize(torch.sigmoid(self._dequantize(t(0), t(1), t(2))), t(3), t(4), name(4))]
        if op == "QLinearLeakyRelu":
            x = self._dequantize(t(0), t(1), t(2))
            return [self._quantize(F.leaky_relu(x, self._attr(node, "alpha", 0.01)), t(3), t(4), name(4))]
        if op == "QGemm":
            a = self._dequantize(t(0), t(1), t(2))
            trans_b = self._attr(node, "transB", 0)
            b = self._dequantize(t(3), t(4), t(5), axis=0 if trans_b else -1)
            y = self._attr(node, "alpha", 1.0) * (a @ (b.T if trans_b else b))
            if name(6):
                y = y + t(6) * t(1) * t(4)
            return [self._quantize(y, t(7), t(8), name(8)) if name(7) else y]
        if op == "Conv":
            return [self._conv(node, t(0), t(1), t(2))]
        if op == "Gemm":
            b = t(1).T if self._attr(node, "transB", 0) else t(1)
            y = t(0) @ b
            return [y + t(2) if name(2) else y]
        if op in ("Add", "Mul", "Sub"):
            return [{"Add": torch.add, "Mul": torch.mul, "Sub": torch.sub}[op](t(0), t(1))]
        if op == "Relu":
            return [torch.relu(t(0))]
        if op == "Sigmoid":
            return [torch.sigmoid(t(0))]
        if op == "MaxPool":
            pads = self._attr(node, "pads", [0, 0, 0, 0])
            x = F.pad(t(0), (pads[1], pads[3], pads[0], pads[2]), value=-1e300)
            return [F.max_pool2d(x, self._attr(node, "kernel_shape"), self._attr(node, "strides", [1, 1]))]
        if op == "ReduceMean":
            axes = self._attr(node, "axes") or [int(v) for v in self.consts[name(1)]]
            return [t(0).mean(dim=tuple(axes), keepdim=bool(self._attr(node, "keepdims", 1)))]
        if op == "GlobalAveragePool":
            return [t(0).mean(dim=(2, 3), keepdim=True)]
        if op == "Flatten":
            return [t(0).flatten(self._attr(node, "axis", 1))]
        if op == "Identity":
            return [t(0)]
        if op == "MatMul":
            return [t(0) @ t(1)]
        if op == "QLinearMatMul":
            a = self._dequantize(t(0), t(1), t(2))
            b = self._dequantize(t(3), t(4), t(5), axis=-1)
            return [self._quantize(a @ b, t(6), t(7), name(7))]
        if op == "ConvInteger":
            x = t(0) - (t(2) if name(2) else 0.0)
            w = t(1) - (self._per_axis(t(3), 4, 0) if name(3) else 0.0)
            return [self._conv(node, x, w, None)]
        if op == "MatMulInteger":
            return [(t(0) - (t(2) if name(2) else 0.0)) @ (t(1) - (t(3) if name(3) else 0.0))]
        if op == "Cast":
            return [t(0)]
        if op == "DynamicQuantizeLinear":
            x = t(0)
            low, high = torch.clamp(x.detach().min(), max=0.0), torch.clamp(x.detach().max(), min=0.0)
            scale = (high - low) / 255.0
            zero_point = torch.clamp(torch.round(-low / scale), 0, 255)
            return [self._quantize(x, scale, zero_point, ""), scale, zero_point]
        if op == "Reshape":
            return [t(0).reshape([int(v) for v in self.consts[name(1)]])]
        raise NotImplementedError(f"reference has no {op} ({node.name})")

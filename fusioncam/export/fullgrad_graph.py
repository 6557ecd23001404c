"""The FullGrad graph: image and target in, FullGrad's saliency map out, every gradient taken in one backward pass.

FullGrad (Srinivas and Fleuret, NeurIPS 2019) sums the input-gradient term |dy_c/dx * x| and, for every layer that
adds a bias over a 2-D feature map, the bias-gradient term |dy_c/dz * b| (z the layer's output, b its bias). This
follows pytorch-grad-cam 1.5.7's `FullGrad` arithmetic: each term's channels are scaled to [0, 1] one by one
(`(v - min) / (1e-7 + max(v - min))` over the channel's positions), summed over channels, resized bilinearly to the
image (half-pixel centres, OpenCV's `cv2.resize`), the terms summed, and the sum scaled to [0, 1] the same way.
Summing the scaled channels before the resize gives the same map as resizing each channel first (the resize is
linear), at one resize per layer.

The bias-carrying layers are found in the ONNX graph: every 4-D `Conv` with a bias and every `BatchNormalization`
(its bias as an affine map: `B - mean * scale / sqrt(var + epsilon)`, the FullGrad authors' reading of it). A
PyTorch `Conv2d` without a bias followed by `BatchNorm2d` reaches ONNX as one convolution whose bias is that same
BatchNorm bias and whose output is the BatchNorm's, so the term is pytorch-grad-cam's (which walks the modules).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import LayerError
from ..graph_names import INPUT, LOGITS, TARGET, TARGET_USED
from .classifier_graph import BATCH_DIM
from .explain_graph import _target_seed_nodes
from .graph_surgery import prune_to_outputs
from .onnx_loading import model_opset

FULLGRAD_MAP = "fullgrad/map"  # float32 [N, H, W] in [0, 1]: the finished FullGrad map
SCALE_EPS = 1e-7  # pytorch-grad-cam's scale_cam_image: (v - min) / (1e-7 + max(v - min))
PREFIX = "fullgrad/"
QUANTIZED_CONVOLUTIONS = ("QLinearConv", "ConvInteger")  # INT8 operator-format layers whose biases are not Conv's


def _initializer_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Small initializers and Constant node values by name (biases and BatchNorm statistics are small)."""
    values = {}
    for tensor in model.graph.initializer:
        if tensor.data_location != TensorProto.EXTERNAL:
            values[tensor.name] = numpy_helper.to_array(tensor)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _rank(inferred: onnx.ModelProto, name: str) -> int | None:
    for value in list(inferred.graph.value_info) + list(inferred.graph.output):
        if value.name == name and value.type.tensor_type.HasField("shape"):
            return len(value.type.tensor_type.shape.dim)
    return None


def bias_layers(model: onnx.ModelProto) -> list[tuple[str, np.ndarray, str]]:
    """(output tensor, bias float32 [K], node name) for every Conv with a bias and every BatchNormalization whose
    output is a 4-D map [N, K, h, w], in graph order. A bias that is not a constant is a LayerError."""
    quantized = sorted({n.op_type for n in model.graph.node if n.op_type in QUANTIZED_CONVOLUTIONS})
    if quantized:
        raise LayerError(f"FullGrad reads the float biases of Conv and BatchNormalization layers; this graph's "
                         f"convolutions are quantized ({', '.join(quantized)}), whose biases it cannot read; explain "
                         f"the float32 model for FullGrad")
    values = _initializer_values(model)
    inferred = onnx.shape_inference.infer_shapes(model)
    layers = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "BatchNormalization") or _rank(inferred, node.output[0]) != 4:
            continue
        if node.op_type == "Conv":
            if len(node.input) < 3 or not node.input[2]:
                continue
            bias = values.get(node.input[2])
        else:
            stats = [values.get(name) for name in node.input[1:5]]
            bias = None
            if all(s is not None for s in stats):
                scale, shift, mean, var = (s.astype(np.float64) for s in stats)
                eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
                bias = shift - mean * scale / np.sqrt(var + eps)
        if bias is None:
            raise LayerError(f"FullGrad: the bias of {node.op_type} node {node.name!r} is computed in the graph, not "
                             "a constant; FullGrad needs every layer's bias as a value")
        layers.append((node.output[0], np.asarray(bias, dtype=np.float32).reshape(-1), node.name))
    return layers


class _Nodes:
    """Appends the map's nodes and constants to a graph, with names under PREFIX."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.opset = model_opset(model)
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{PREFIX}{hint}_{self.count}"

    def node(self, op: str, inputs: list[str], hint: str, **attrs) -> str:
        out = self.name(hint)
        self.model.graph.node.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def const(self, array: np.ndarray, hint: str) -> str:
        name = self.name(hint)
        self.model.graph.initializer.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def reduce(self, op: str, x: str, axes: list[int], hint: str) -> str:
        if op == "ReduceSum" or self.opset >= 18:  # ReduceSum takes its axes as an input from opset 13, the rest from 18
            return self.node(op, [x, self.const(np.array(axes, dtype=np.int64), "axes")], hint, keepdims=1)
        return self.node(op, [x], hint, axes=axes, keepdims=1)

    def scaled(self, x: str, axes: list[int], hint: str) -> str:
        """(x - min) / (1e-7 + max(x - min)) over `axes` (pytorch-grad-cam's scale_cam_image)."""
        shifted = self.node("Sub", [x, self.reduce("ReduceMin", x, axes, f"{hint}_min")], f"{hint}_shifted")
        top = self.node("Add", [self.reduce("ReduceMax", shifted, axes, f"{hint}_max"),
                                self.const(np.array(SCALE_EPS, np.float32), "eps")], f"{hint}_top")
        return self.node("Div", [shifted, top], f"{hint}_scaled")

    def term(self, value: str, hint: str) -> str:
        """[N, 1, h, w]: the channels of |value| [N, K, h, w] scaled one by one, then summed."""
        magnitude = self.node("Abs", [value], f"{hint}_abs")
        return self.reduce("ReduceSum", self.scaled(magnitude, [2, 3], hint), [1], f"{hint}_sum")

    def resized(self, x: str, size: tuple[int, int], hint: str) -> str:
        """x [N, 1, h, w] bilinearly resized to [N, 1, H, W] with half-pixel centres (cv2.resize INTER_LINEAR)."""
        sizes = self.node("Concat", [self.node("Slice", [self.node("Shape", [x], f"{hint}_shape"),
                                                         self.const(np.array([0], np.int64), "start"),
                                                         self.const(np.array([2], np.int64), "stop")],
                                                 f"{hint}_batch_channels"),
                                     self.const(np.array(size, np.int64), "size")], f"{hint}_sizes", axis=0)
        return self.node("Resize", [x, "", "", sizes], f"{hint}_resized", mode="linear",
                         coordinate_transformation_mode="half_pixel")


def build_fullgrad(forward: onnx.ModelProto, num_classes: int, input_size: tuple[int, int]) -> onnx.ModelProto:
    """The FullGrad graph from a bundle's forward graph `input -> logits` (the scorer): inputs `input`, `target`
    (-1 = arg-max), outputs `logits`, `target_used` and FULLGRAD_MAP [N, H, W]."""
    from .autodiff import differentiate

    model = onnx.ModelProto()
    model.CopyFrom(forward)
    layers = bias_layers(model)
    graph = model.graph
    graph.input.append(helper.make_tensor_value_info(TARGET, TensorProto.INT64, [BATCH_DIM]))
    nodes, constants = _target_seed_nodes(LOGITS, num_classes)
    graph.node.extend(nodes)
    graph.initializer.extend(constants)
    wanted = {output: f"{PREFIX}layer_gradient_{i}" for i, (output, _, _) in enumerate(layers)}
    try:
        model = differentiate(model, wrt=INPUT, of=LOGITS, seed="explain/seed", grad_name=f"{PREFIX}input_gradient",
                              also=wanted, branches=False)
    except LayerError as exc:
        unreached = [node for output, _, node in layers  # the message lists the names, each followed by , or :
                     if f"{wanted[output]}," in str(exc) or f"{wanted[output]}:" in str(exc)]
        if not unreached:
            raise
        raise LayerError(f"FullGrad: the outputs of bias layer(s) {', '.join(repr(n) for n in unreached)} do not "
                         "reach the logits through float tensors, so they have no gradient; FullGrad needs every "
                         "bias layer on the path from the image to the logits") from None
    build = _Nodes(model)
    size = (int(input_size[0]), int(input_size[1]))
    total = build.term(build.node("Mul", [f"{PREFIX}input_gradient", INPUT], "input_times_gradient"), "input")
    for i, (output, bias, _) in enumerate(layers):
        bias_map = build.const(bias.reshape(1, -1, 1, 1), f"bias_{i}")
        layer = build.term(build.node("Mul", [wanted[output], bias_map], f"bias_gradient_{i}"), f"layer_{i}")
        total = build.node("Add", [total, build.resized(layer, size, f"layer_{i}")], f"total_{i}")
    finished = build.scaled(total, [1, 2, 3], "map")
    build.node("Squeeze", [finished, build.const(np.array([1], np.int64), "channel_axis")], "squeezed")
    graph = model.graph
    graph.node.append(helper.make_node("Identity", [graph.node[-1].output[0]], [FULLGRAD_MAP], name="output/fullgrad"))
    del graph.output[:]
    graph.output.extend([
        helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, [BATCH_DIM, num_classes]),
        helper.make_tensor_value_info(TARGET_USED, TensorProto.INT64, [BATCH_DIM]),
        helper.make_tensor_value_info(FULLGRAD_MAP, TensorProto.FLOAT, [BATCH_DIM, *size]),
    ])
    prune_to_outputs(model, [LOGITS, TARGET_USED, FULLGRAD_MAP])
    return model

"""Float16 source models (all-float16, or mixed with the Casts converters insert) brought to fusioncam's interface.

fusioncam's graphs take float32 images and give float32 scores, maps and gradients. For a float16 model:

- an all-float16 model's float16 image input gets a Cast from the float32 `input`, and float16 class scores a Cast
  to float32 (a mixed model already has both);
- each float16 feature map x gets a float32 view: `x/float32` = Cast(x, float32) then Cast back to float16 for its
  consumers. float16 -> float32 -> float16 is exact, so the forward is the float16 graph's; the view is a float32
  target whose values are the float16 activations, upcast;
- the backward graph runs in float32 (see autodiff's `float32_twin`): each float16 node on the path is
  differentiated through a float32 copy whose inputs are the float16 forward's tensors upcast, so gradients
  accumulate in float32, where float16 would underflow (its smallest normal is 6.1e-5).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

HALF_TYPES = (TensorProto.FLOAT16, TensorProto.BFLOAT16)
VIEW_SUFFIX, BACK_SUFFIX = "/float32", "/float16"
# ops whose float16 output can be a feature map (a CAM target): they get a float32 view
VIEWED_OPS = ("Conv", "Relu", "Clip", "Add", "Mul", "Sigmoid", "HardSwish", "HardSigmoid", "BatchNormalization",
              "MaxPool", "AveragePool", "LayerNormalization", "Gelu", "Div", "Sub", "Transpose", "Reshape")
GRADIENT_NOTE = ("float32: the backward graph differentiates float32 copies of the float16 ops, fed the float16 "
                 "forward's activations and weights upcast; the maps' activations are the float16 values upcast")


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor ONNX's type inference finds (initializers and node outputs)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.input,
                                                             *inferred.graph.output)}
    types.update({init.name: init.data_type for init in model.graph.initializer})
    return types


def float16_facts(model: onnx.ModelProto) -> dict | None:
    """{'format': 'float16' | 'mixed float16', 'gradient': ...} for a model with float16 computation, else None."""
    half = [init for init in model.graph.initializer if init.data_type in HALF_TYPES]
    casts = [n for n in model.graph.node if n.op_type == "Cast"
             and any(a.name == "to" and a.i in HALF_TYPES for a in n.attribute)
             and not n.name.endswith((BACK_SUFFIX, "/input_float16"))]
    if not half and not casts:
        return None
    return {"format": "mixed float16" if casts else "float16", "gradient": GRADIENT_NOTE}


def adapt_float16(model: onnx.ModelProto) -> list[str]:
    """In place: float32 image input and class scores for an all-float16 model, and float32 views of the float16
    feature maps (see the module's docstring). Returns the views' names (none for a float32 model)."""
    if float16_facts(model) is None:
        return []
    graph = model.graph
    types = _elem_types(model)
    initializers = {init.name for init in graph.initializer}
    _cast_interface(graph, initializers)
    taken = {o for node in graph.node for o in node.output} | {i.name for i in graph.input} | initializers
    nodes, views = [], []
    outputs = {out.name for out in graph.output}
    for node in list(graph.node):
        nodes.append(node)
        if node.op_type not in VIEWED_OPS:
            continue
        for x in node.output:
            view, back = x + VIEW_SUFFIX, x + BACK_SUFFIX
            if not x or types.get(x) not in HALF_TYPES or x in outputs or view in taken or back in taken:
                continue
            for consumer in graph.node:
                for index, name in enumerate(consumer.input):
                    if name == x:
                        consumer.input[index] = back
            nodes.append(helper.make_node("Cast", [x], [view], to=TensorProto.FLOAT, name=view))
            nodes.append(helper.make_node("Cast", [view], [back], to=types[x], name=back))
            views.append(view)
    del graph.node[:]
    graph.node.extend(nodes)
    return views


def _cast_interface(graph: onnx.GraphProto, initializers: set[str]) -> None:
    """A float16 image input becomes float32 (Cast in front); float16 graph outputs become float32 (Cast after)."""
    front, back = [], []
    for inp in graph.input:
        elem = inp.type.tensor_type.elem_type
        if inp.name in initializers or elem not in HALF_TYPES:
            continue
        half = inp.name + "/input_float16"
        for node in graph.node:
            for index, name in enumerate(node.input):
                if name == inp.name:
                    node.input[index] = half
        front.append(helper.make_node("Cast", [inp.name], [half], to=elem, name=half))
        inp.type.tensor_type.elem_type = TensorProto.FLOAT
    for out in graph.output:
        if out.type.tensor_type.elem_type not in HALF_TYPES:
            continue
        half = out.name + "/output_float16"
        for node in graph.node:
            for index, name in enumerate(node.output):
                if name == out.name:
                    node.output[index] = half
            for index, name in enumerate(node.input):
                if name == out.name:
                    node.input[index] = half
        back.append(helper.make_node("Cast", [half], [out.name], to=TensorProto.FLOAT, name=out.name + "/float32"))
        out.type.tensor_type.elem_type = TensorProto.FLOAT
    nodes = [*front, *graph.node, *back]
    del graph.node[:]
    graph.node.extend(nodes)

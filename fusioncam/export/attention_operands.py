"""Which tensors of an ONNX graph are only queries, keys or values of an attention: never an automatic target.

A tensor is an attention operand when every path from it to the logits ends in an attention product (a MatMul or
Einsum of two computed tensors, or a Softmax) after nothing but projections and rearrangements: reshapes,
transposes, slices, concatenations, batch norms, linear projections (a MatMul/Gemm with a constant weight) and
arithmetic with constants (a consumer that reads only the shape does not count). CvT's strided convolutional key/value projections and LeViT's subsampled queries are
such maps: spatial, late in the graph, and reaching the logits, but parts of an attention, not representations. A
path through anything else (a residual Add, a LayerNorm, a convolution, an activation, pooling, the logits) makes
the tensor a representation.
"""

from __future__ import annotations

import onnx

# ops a query/key/value passes through on its way into the attention product
PASS_THROUGH = {"Reshape", "Transpose", "Slice", "Split", "Squeeze", "Unsqueeze", "Concat", "Identity", "Flatten",
                "BatchNormalization", "Gather", "Cast", "Expand"}
WITH_A_CONSTANT = {"Add", "Sub", "Mul", "Div", "MatMul", "Gemm"}  # pass-through when the other operand is constant
ATTENTION_PRODUCTS = {"MatMul", "Einsum"}
SHAPE_ONLY = {"Shape", "Size"}  # consumers that read a tensor's shape, not its values


class AttentionOperands:
    """Answers `only_attention(tensor)` for one graph (memoised walks towards `logits`)."""

    def __init__(self, model: onnx.ModelProto, logits: str) -> None:
        self._logits = logits
        self._constants = {init.name for init in model.graph.initializer}
        self._constants |= {node.output[0] for node in model.graph.node if node.op_type == "Constant"}
        self._consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in model.graph.node:
            for name in set(node.input):
                self._consumers.setdefault(name, []).append(node)
        self._memo: dict[str, bool] = {}

    @staticmethod
    def _value_inputs(node: onnx.NodeProto) -> list[str]:
        """The inputs whose values (not only shape or indices) flow into the output."""
        if node.op_type in ("Reshape", "Expand", "Slice", "Gather", "Squeeze", "Unsqueeze"):
            return list(node.input[:1])
        return list(node.input)

    def _computed_inputs(self, node: onnx.NodeProto) -> list[str]:
        return [name for name in node.input if name and name not in self._constants]

    def _ends_in_attention(self, node: onnx.NodeProto) -> bool:
        return node.op_type == "Softmax" or (node.op_type in ATTENTION_PRODUCTS and len(self._computed_inputs(node)) >= 2)

    def _passes_through(self, node: onnx.NodeProto) -> bool:
        if node.op_type in PASS_THROUGH:
            return True
        return node.op_type in WITH_A_CONSTANT and len(self._computed_inputs(node)) == 1

    def only_attention(self, tensor: str) -> bool:
        """True when every path from `tensor` to the logits goes into an attention product first."""
        if tensor in self._memo:
            return self._memo[tensor]
        self._memo[tensor] = False  # a cycle cannot occur in ONNX; this also bounds re-entry
        consumers = self._consumers.get(tensor, [])
        result = tensor != self._logits and bool(consumers)
        for node in consumers:
            if not result:
                break
            if node.op_type in SHAPE_ONLY or tensor not in self._value_inputs(node):
                continue  # reads only the tensor's shape (reshape targets computed at run time)
            if self._ends_in_attention(node):
                continue
            if not self._passes_through(node):
                result = False
                break
            result = all(self.only_attention(out) for out in node.output if out)
        self._memo[tensor] = result
        return result

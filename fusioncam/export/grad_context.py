"""The builder the gradient rules write into: fresh names, constants, opset-aware helpers, shape lookups."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fusioncam.errors import UnsupportedOpError
from fusioncam.export.weight_stash import is_set_aside

GRAD_PREFIX = "grad/"
INT64_MAX = np.iinfo(np.int64).max
FLOAT_ELEMS = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)

Dims = list[int | str | None]


def model_opset(model: onnx.ModelProto) -> int:
    """Version of the default ONNX domain the model imports (the ops we emit must be valid in it)."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise UnsupportedOpError("the model imports no default ONNX opset (ai.onnx); cannot emit gradient nodes")


def attribute(node: onnx.NodeProto, name: str, default=None):
    """Value of attribute `name` of `node` as a Python value, or `default` when it is not set."""
    for attr in node.attribute:
        if attr.name == name:
            value = helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


def node_label(node: onnx.NodeProto) -> str:
    """A node's name for error messages (its first output when the node is unnamed)."""
    return repr(node.name) if node.name else f"<unnamed, output {node.output[0]!r}>"


def node_input(node: onnx.NodeProto, index: int) -> str:
    """Name of input `index` of `node`, or '' when that optional input is absent."""
    return node.input[index] if index < len(node.input) else ""


class GradContext:
    """Holds the model being extended and the nodes/initializers a backward pass appends to it."""

    def __init__(self, model: onnx.ModelProto, inferred: onnx.ModelProto) -> None:
        """Index `model` (which receives new nodes) using types and shapes from its shape-inferred twin."""
        self.graph = model.graph
        self.opset = model_opset(model)
        self.nodes: list[onnx.NodeProto] = []
        self._types: dict[str, onnx.TypeProto] = {}
        for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
            self._types[info.name] = info.type
        overridable = {i.name for i in self.graph.input}  # an initializer that is also an input is a default
        self._initializers = {init.name: init for init in self.graph.initializer if init.name not in overridable}
        for init in self.graph.initializer:
            if init.name not in self._types:
                self._types[init.name] = helper.make_tensor_type_proto(init.data_type, list(init.dims))
        self._constants = {node.output[0]: node for node in self.graph.node if node.op_type == "Constant"}
        self.producers = {o: node for node in self.graph.node for o in node.output if o}  # the forward's nodes
        self._extra_shapes: dict[str, Dims] = {}
        self._extra_types: dict[str, int] = {}
        self._used = _all_names(self.graph)
        self._counter = 0
        self._shape_cache: dict[str, str] = {}
        self._const_cache: dict[tuple, str] = {}

    # ----- names and node emission -------------------------------------------------------------

    def fresh(self, hint: str) -> str:
        """A new tensor/node name under the `grad/` prefix that collides with nothing in the graph."""
        while True:
            self._counter += 1
            name = f"{GRAD_PREFIX}{hint}_{self._counter}"
            if name not in self._used:
                self._used.add(name)
                return name

    def node(self, op: str, inputs: Sequence[str], attrs: dict | None = None, outputs: int = 1,
             hint: str | None = None) -> str | list[str]:
        """Append node `op(inputs)` and return its output name (a list when `outputs` > 1)."""
        names = [self.fresh(hint or op) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op, list(inputs), names, name=self.fresh(f"node_{op}"),
                                           **(attrs or {})))
        return names[0] if outputs == 1 else names

    def const(self, value, dtype=None, hint: str = "const") -> str:
        """Add `value` as an initializer (cast to `dtype` when given) and return its name; small ones are shared."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes()) if array.size <= 64 else None
        if key in self._const_cache:
            return self._const_cache[key]
        name = self.fresh(hint)
        self.graph.initializer.append(numpy_helper.from_array(array, name))
        self._initializers[name] = self.graph.initializer[-1]
        if key is not None:
            self._const_cache[key] = name
        return name

    def scalar(self, value: float, like: str) -> str:
        """A 0-d constant holding `value` in the float dtype of tensor `like` (for elementwise math)."""
        return self.const(np.array(value, dtype=self.np_dtype(like)), hint="scalar")

    def ints(self, values: Sequence[int]) -> str:
        """A 1-D int64 constant (axes, shapes, starts, pads)."""
        return self.const(np.array(list(values), dtype=np.int64), hint="ints")

    # ----- reading the forward graph ------------------------------------------------------------

    def constant_value(self, name: str) -> np.ndarray | None:
        """The value of `name` when it is an initializer or a Constant node's output, else None.

        A large weight held in the export's WeightStash counts as unknown: no rule needs such a value."""
        if name in self._initializers:
            tensor = self._initializers[name]
            return None if is_set_aside(tensor) else numpy_helper.to_array(tensor)
        node = self._constants.get(name)
        if node is None:
            return None
        attr = node.attribute[0]
        value = helper.get_attribute_value(attr)
        if attr.name in ("value", "sparse_value"):
            return numpy_helper.to_array(value)
        if attr.name in ("value_float", "value_int"):
            return np.array(value, dtype=np.float32 if attr.name == "value_float" else np.int64)
        if attr.name in ("value_floats", "value_ints"):
            return np.array(value, dtype=np.float32 if attr.name == "value_floats" else np.int64)
        return None

    def elem_type(self, name: str) -> int | None:
        """ONNX element type of tensor `name`, or None when shape inference could not tell."""
        if name in self._extra_types:
            return self._extra_types[name]
        type_proto = self._types.get(name)
        if type_proto is None or not type_proto.HasField("tensor_type"):
            return None
        return type_proto.tensor_type.elem_type or None

    def np_dtype(self, name: str) -> np.dtype:
        """Numpy dtype of the gradient of tensor `name`: its own float dtype; float32 when unknown, and for the
        integer tensors of quantized graphs (their gradient is taken with respect to the integer value)."""
        elem = self.elem_type(name)
        if elem not in FLOAT_ELEMS:
            return np.dtype(np.float32)
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem))

    def maybe_shape(self, name: str) -> Dims | None:
        """Dims of `name` (int when static, the symbol's name or None when not), None when the rank is unknown."""
        if name in self._extra_shapes:
            return list(self._extra_shapes[name])
        type_proto = self._types.get(name)
        if type_proto is None or not type_proto.tensor_type.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in type_proto.tensor_type.shape.dim]

    def shape(self, name: str, node: onnx.NodeProto) -> Dims:
        """Dims of `name` as in `maybe_shape`, raising UnsupportedOpError (naming `node`) when the rank is unknown."""
        dims = self.maybe_shape(name)
        if dims is None:
            raise UnsupportedOpError(f"node {node_label(node)} ({node.op_type}): shape of {name!r} is unknown "
                                     "after shape inference; cannot build its gradient")
        return dims

    def static_shape(self, name: str, node: onnx.NodeProto, axes: Sequence[int]) -> Dims:
        """Dims of `name`, requiring the listed axes to be static ints (else UnsupportedOpError naming `node`)."""
        dims = self.shape(name, node)
        missing = [a for a in axes if not isinstance(dims[a], int)]
        if missing:
            raise UnsupportedOpError(f"node {node_label(node)} ({node.op_type}): axes {missing} of {name!r} are "
                                     "not static; its gradient needs them known at export time")
        return dims

    def set_shape(self, name: str, dims: Dims, like: str | None = None, elem: int | None = None) -> None:
        """Record the dims (and the dtype of `like`, or the ONNX element type `elem`) of a tensor a rule created."""
        self._extra_shapes[name] = list(dims)
        if like is not None and self.elem_type(like):
            self._extra_types[name] = self.elem_type(like)
        if elem is not None:
            self._extra_types[name] = elem

    # ----- opset-aware building blocks ---------------------------------------------------------

    def shape_of(self, name: str) -> str:
        """Run-time `Shape(name)` (int64 [rank]), built once per tensor."""
        if name not in self._shape_cache:
            self._shape_cache[name] = self.node("Shape", [name], hint="shape")
        return self._shape_cache[name]

    def reduce_sum(self, x: str, axes: Sequence[int], keepdims: bool) -> str:
        """`ReduceSum` over `axes` (axes as an input: opset 13+)."""
        return self.node("ReduceSum", [x, self.ints(axes)], {"keepdims": int(keepdims)})

    def reduce_mean(self, x: str, axes: Sequence[int], keepdims: bool) -> str:
        """`ReduceMean` over `axes` (attribute before opset 18, input from 18)."""
        if self.opset >= 18:
            return self.node("ReduceMean", [x, self.ints(axes)], {"keepdims": int(keepdims)})
        return self.node("ReduceMean", [x], {"axes": list(axes), "keepdims": int(keepdims)})

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        """`Unsqueeze` with axes as an input (opset 13+)."""
        return self.node("Unsqueeze", [x, self.ints(axes)])

    def reshape_like(self, g: str, x: str) -> str:
        """`Reshape(g, Shape(x))`: give a gradient its operand's (batch-dependent) shape at run time."""
        return self.node("Reshape", [g, self.shape_of(x)])

    def zeros_like(self, x: str) -> str:
        """A zero tensor with the run-time shape and dtype of `x`."""
        zero = numpy_helper.from_array(np.zeros(1, dtype=self.np_dtype(x)))
        return self.node("ConstantOfShape", [self.shape_of(x)], {"value": zero})

    def size_ratio(self, small: str, big: str) -> str:
        """Run-time Size(small) / Size(big) in big's float dtype: 1/count for means whose dims are not static."""
        to = helper.np_dtype_to_tensor_dtype(self.np_dtype(big))
        sizes = [self.node("Cast", [self.node("Size", [name])], {"to": to}) for name in (small, big)]
        return self.node("Div", sizes)

    def transpose(self, x: str, perm: Sequence[int]) -> str:
        """`Transpose(x, perm)`."""
        return self.node("Transpose", [x], {"perm": list(perm)})

    def sum_to_shape(self, grad: str, grad_dims: Dims, operand: str, node: onnx.NodeProto) -> str:
        """Undo numpy broadcasting: sum `grad` (whose dims are `grad_dims`) down to the shape of `operand`.

        Axes are chosen at export time; when a symbolic dim might be broadcast, they are found at run time.
        """
        op_dims = self.shape(operand, node)
        lead = len(grad_dims) - len(op_dims)
        axes, ambiguous = list(range(lead)), False
        for i, d in enumerate(op_dims):
            out = grad_dims[lead + i]
            if d == 1:
                if out != 1:
                    axes.append(lead + i)
            elif not isinstance(d, int) and out != 1 and not (isinstance(d, str) and out == d):
                ambiguous = True
        if ambiguous:
            return self._sum_to_shape_dynamic(grad, len(grad_dims), operand)
        if not axes:
            return grad
        reduced = self.reduce_sum(grad, axes, keepdims=True)
        return self.reshape_like(reduced, operand) if lead else reduced

    def _sum_to_shape_dynamic(self, grad: str, grad_rank: int, operand: str) -> str:
        """`sum_to_shape` when a symbolic dim may or may not be broadcast: reduce axes found at run time."""
        op_rank = len(self.maybe_shape(operand))
        lead = grad_rank - op_rank
        op_shape = self.shape_of(operand)
        if lead:
            op_shape = self.node("Concat", [self.ints([1] * lead), op_shape], {"axis": 0})
        grad_shape = self.node("Shape", [grad])
        one = self.ints([1])
        is_one = self.node("Equal", [op_shape, one])
        differs = self.node("Not", [self.node("Equal", [grad_shape, op_shape])])
        axes = self.node("Reshape", [self.node("NonZero", [self.node("And", [is_one, differs])]),
                                     self.ints([-1])])
        reduced = self.node("ReduceSum", [grad, axes], {"keepdims": 1, "noop_with_empty_axes": 1})
        return self.reshape_like(reduced, operand)

    def replay_indices(self, node: onnx.NodeProto, data_index: int = 0, drop: Sequence[int] = ()) -> str:
        """Flat int64 indices of the input elements each output element of `node` copies.

        Re-runs `node` on an iota of its data input's shape (exact for pure data-movement ops); inputs
        listed in `drop` (float fill values) are left out of the replay.
        """
        data = node.input[data_index]
        size = self.node("Size", [data])
        iota = self.node("Range", [self.const(np.array(0, np.int64)), size, self.const(np.array(1, np.int64))])
        iota = self.node("Reshape", [iota, self.shape_of(data)])
        inputs = list(node.input)
        inputs[data_index] = iota
        for index in drop:
            if index < len(inputs):
                inputs[index] = ""
        out = self.fresh(f"replay_{node.op_type}")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self.nodes.append(helper.make_node(node.op_type, inputs, [out], name=self.fresh("node_replay"), **attrs))
        return self.node("Reshape", [out, self.ints([-1])])

    def scatter_add(self, flat_indices: str, grad: str, like: str, buffer_shape: str | None = None) -> str:
        """Sum the elements of `grad` into a zero tensor the size of `like` at `flat_indices`.

        Returns the flat buffer reshaped to `buffer_shape` (default: the run-time shape of `like`).
        """
        size = self.node("Reshape", [self.node("Size", [like]), self.ints([1])])
        zero = numpy_helper.from_array(np.zeros(1, dtype=self.np_dtype(like)))
        zeros = self.node("ConstantOfShape", [size], {"value": zero})
        updates = self.node("Reshape", [grad, self.ints([-1])])
        flat = self.node("ScatterElements", [zeros, flat_indices, updates], {"axis": 0, "reduction": "add"})
        return self.node("Reshape", [flat, buffer_shape or self.shape_of(like)])


def _all_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor and node name used in `graph` and its subgraphs (so new names never collide)."""
    names: set[str] = {i.name for i in graph.input} | {o.name for o in graph.output}
    names |= {i.name for i in graph.initializer} | {v.name for v in graph.value_info}
    for node in graph.node:
        names.add(node.name)
        names.update(node.input)
        names.update(node.output)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                names |= _all_names(sub)
    return names

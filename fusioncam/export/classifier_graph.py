"""Find a classifier graph's image input and its pre-softmax logits, and fix their shapes."""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
from onnx import TensorProto

from ..errors import ModelLoadError
from ..memory_budget import check_input_size_fits
from .constant_folding import fold_constants
from .dynamic_quantization import per_image_ranges
from .float16_source import adapt_float16
from .onnx_loading import upgrade_opset
from .quantized_graph import add_dequantized_views
from .shape_resolution import resolve_shapes
from .weight_stash import WeightStash

BATCH_DIM = "N"
SOFTMAX_OPS = ("Softmax", "LogSoftmax")
SEGMENTATION_HINT = ("; per-pixel class scores [N, C, H, W] are a segmentation model: export it with "
                     "task='segmentation' (fusioncam export --task segmentation)")
KNOWN_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")  # ops ONNX and ONNX Runtime define


@dataclass
class Classifier:
    """A classifier graph with a dynamic batch, one `[N,3,H,W]` input and a known logits tensor."""

    model: onnx.ModelProto  # shape-inferred, opset >= 17
    input_name: str
    logits_name: str  # pre-softmax scores [N, C]
    input_size: tuple[int, int]
    num_classes: int
    weights: WeightStash = field(default_factory=WeightStash)  # large initializers' data, held outside `model`
    output_note: str = ""  # which graph output gives the logits, when the model has several


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str | None]:
    """Static ints, symbolic names, or None for each dim of a value's type."""
    dims = []
    for dim in value_info.type.tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(dim.dim_value)
        elif dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return dims


def infer_shapes(model: onnx.ModelProto, origin: str) -> onnx.ModelProto:
    """Shape inference with constant propagation; errors name the model."""
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception as exc:
        raise ModelLoadError(f"{origin}: ONNX shape inference failed: {exc}") from None


def tensor_shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    """Shape of every tensor shape inference knows about (graph inputs, outputs, value_info, initializers)."""
    shapes: dict[str, tuple] = {}
    for info in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape"):
            shapes[info.name] = tuple(_dims(info))
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def tensor_elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """ONNX element type of every typed tensor."""
    types = {}
    for info in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        if info.type.HasField("tensor_type"):
            types[info.name] = info.type.tensor_type.elem_type
    for init in model.graph.initializer:
        types[init.name] = init.data_type
    return types


def _image_input(model: onnx.ModelProto, origin: str) -> onnx.ValueInfoProto:
    """The single graph input that is not an initializer."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [inp for inp in model.graph.input if inp.name not in initializers]
    if len(inputs) != 1:
        names = ", ".join(inp.name for inp in inputs) or "none"
        raise ModelLoadError(f"{origin}: expected exactly one image input [N,3,H,W], found {len(inputs)} ({names})")
    return inputs[0]


def _fix_input_shape(inp: onnx.ValueInfoProto, input_size: tuple[int, int] | None, origin: str) -> tuple[int, int]:
    """Check the input is float [N,3,H,W]; make N symbolic and H, W static; return (H, W)."""
    elem = inp.type.tensor_type.elem_type
    dims = _dims(inp)
    shape_text = "[" + ",".join(str(d) for d in dims) + "]"
    if elem != TensorProto.FLOAT or len(dims) != 4 or dims[1] != 3:
        raise ModelLoadError(
            f"{origin}: input '{inp.name}' is {onnx.TensorProto.DataType.Name(elem).lower()} {shape_text}; "
            f"fusioncam explains image classifiers with a float32 [N,3,H,W] input (NCHW, 3 colour channels)"
        )
    height, width = dims[2], dims[3]
    if input_size is not None:
        for got, want, axis in ((height, input_size[0], "H"), (width, input_size[1], "W")):
            if isinstance(got, int) and got != want:
                raise ModelLoadError(f"{origin}: input '{inp.name}' has {axis}={got} but input_size asks for {want}")
        height, width = input_size
    if not isinstance(height, int) or not isinstance(width, int):
        raise ModelLoadError(
            f"{origin}: input '{inp.name}' {shape_text} has a dynamic height/width; pass input_size=(H, W) "
            f"(CLI: --input-size H W) to fix it"
        )
    if height < 1 or width < 1:  # found by fuzz/onnx_export_fuzz.py: negative dims reached NumPy as a ValueError
        raise ModelLoadError(f"{origin}: input '{inp.name}' {shape_text} declares a height/width below 1; "
                             f"fix the model's input shape or pass input_size=(H, W)")
    check_input_size_fits((height, width))  # the model's own input size, before any example is allocated
    shape = inp.type.tensor_type.shape
    shape.dim[0].Clear()
    shape.dim[0].dim_param = BATCH_DIM
    shape.dim[2].Clear()
    shape.dim[2].dim_value = height
    shape.dim[3].Clear()
    shape.dim[3].dim_value = width
    return height, width


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Map from tensor name to the node that produces it."""
    return {out: node for node in model.graph.node for out in node.output if out}


def _chosen_output(model: onnx.ModelProto, output: str | None, origin: str) -> tuple[str, str]:
    """The graph output that holds the class scores (the first unless `output` names one) and a note saying which."""
    names = [out.name for out in model.graph.output]
    if output is not None:
        if output not in names:
            raise ModelLoadError(f"{origin}: the model has no output '{output}'; its outputs are: {', '.join(names)}")
        chosen = output
    else:
        chosen = names[0]
    if len(names) == 1:
        return chosen, ""
    how = "as requested" if output is not None else "the first; choose another with output=NAME (CLI: --output NAME)"
    return chosen, f"logits from output '{chosen}' of {len(names)} ({', '.join(names)}; {how})"


def _logits_tensor(model: onnx.ModelProto, origin: str, output: str | None = None) -> str:
    """The graph output `output` (default: the first), or the input of a final (Log)Softmax: the score must be the
    raw logit."""
    made_by = producers(model)
    name = output if output is not None else model.graph.output[0].name
    while name in made_by and made_by[name].op_type == "Identity":
        name = made_by[name].input[0]
    legacy = _legacy_softmax_input(made_by, name)
    if legacy is not None:
        return legacy
    if name in made_by and made_by[name].op_type in SOFTMAX_OPS:
        name = made_by[name].input[0]
    return name


def _legacy_softmax_input(made_by: dict[str, onnx.NodeProto], name: str) -> str | None:
    """The scores under an opset < 13 (Log)Softmax as ONNX's version converter rewrites it (Reshape(Softmax(
    Flatten(y)), Shape(y)): the old softmax over all axes from `axis` on), or None. PaddlePaddle's exports
    (rapidocr's orientation classifier, opset 11) end this way; without this their probabilities were taken for
    logits."""
    reshape = made_by.get(name)
    if reshape is None or reshape.op_type != "Reshape" or len(reshape.input) < 2:
        return None
    softmax, shape = made_by.get(reshape.input[0]), made_by.get(reshape.input[1])
    if softmax is None or softmax.op_type not in SOFTMAX_OPS or shape is None or shape.op_type != "Shape":
        return None
    flatten = made_by.get(softmax.input[0])
    if flatten is None or flatten.op_type != "Flatten" or flatten.input[0] != shape.input[0]:
        return None
    return flatten.input[0]


def _check_domains(model: onnx.ModelProto, origin: str) -> None:
    """Refuse ops from domains neither ONNX nor ONNX Runtime defines: nothing can infer, run or differentiate them."""
    local = {function.name for function in model.functions}
    for node in model.graph.node:
        if node.domain not in KNOWN_DOMAINS and node.op_type not in local:
            raise ModelLoadError(
                f"{origin}: node '{node.name or node.output[0]}' uses op '{node.op_type}' from the custom domain "
                f"'{node.domain}', which ONNX shape inference, ONNX Runtime and fusioncam's gradient rules do not "
                f"know. Export the model with standard ONNX ops only (no custom_opsets), or replace that op."
            )


def _clear_output_batch(model: onnx.ModelProto) -> None:
    """Drop value_info and output shapes so stale static batch sizes don't survive the dynamic-batch fix."""
    del model.graph.value_info[:]
    for out in model.graph.output:
        if out.type.tensor_type.HasField("shape"):
            out.type.tensor_type.ClearField("shape")


def prepare_classifier(model: onnx.ModelProto, origin: str, input_size: tuple[int, int] | None = None,
                       output: str | None = None) -> Classifier:
    """Validate the classifier's interface and return it with a dynamic batch and every shape resolved.

    `output` names the graph output holding the class scores (default: the first). `model` is consumed: its large
    weights move into the classifier's WeightStash (see weight_stash)."""
    model, input_name, logits, size, weights, output_note = prepare_scores_graph(model, origin, input_size, output)
    shape = tensor_shapes(model).get(logits)
    if shape is None or len(shape) != 2 or not isinstance(shape[1], int):
        raise ModelLoadError(
            f"{origin}: output '{logits}' has shape {shape}; expected class scores [N, C] with a static C"
            + (SEGMENTATION_HINT if shape is not None and len(shape) == 4 else "")
        )
    return Classifier(model=model, input_name=input_name, logits_name=logits, input_size=size, num_classes=shape[1],
                      weights=weights, output_note=output_note)


def prepare_scores_graph(model: onnx.ModelProto, origin: str, input_size: tuple[int, int] | None = None,
                         output: str | None = None) -> tuple[onnx.ModelProto, str, str, tuple[int, int], WeightStash, str]:
    """What prepare_classifier (and prepare_segmenter) do before checking the scores' shape: opset, weights set
    aside, constants folded, input fixed to [N,3,H,W], shapes inferred and resolved. Returns (model, input name,
    pre-softmax scores tensor, (H, W), weights, output note)."""
    weights = WeightStash()
    _check_domains(model, origin)
    model = upgrade_opset(model, origin)
    adapt_float16(model)  # float16 sources: float32 interface and float32 views of the maps (float16_source.py)
    per_image_ranges(model)  # dynamically quantized sources: one range per image (dynamic_quantization.py)
    weights.set_aside(model)
    model = fold_constants(model, weights)
    add_dequantized_views(model)  # QOperator INT8 feature maps become float targets (quantized_graph.py)
    inp = _image_input(model, origin)
    size = _fix_input_shape(inp, input_size, origin)
    _clear_output_batch(model)
    model = infer_shapes(model, origin)
    chosen, output_note = _chosen_output(model, output, origin)
    logits = _logits_tensor(model, origin, chosen)
    resolve_shapes(model, weights, inp.name, size, tensor_shapes(model), BATCH_DIM)
    return model, inp.name, logits, size, weights, output_note

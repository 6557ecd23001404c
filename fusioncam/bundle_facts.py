"""A bundle's manifest must tell the truth about its graphs: checked at load time from the graphs' declared inputs and
outputs (parsed without their external weights), so an edited or mismatched manifest is a BundleError naming the
field, not an ONNX Runtime or IndexError traceback later."""

from __future__ import annotations

from pathlib import Path

import onnx

from .bundle import EXPLAIN_GRAPH, SCORER_GRAPH, SCORER_GRAPH_FP16, SCORER_GRAPH_INT8, Manifest
from .errors import BundleError
from .graph_names import (DETECTION_EXPLAIN_INPUTS, DETECTION_EXPLAIN_OUTPUTS, DETECTION_SCORER_INPUTS,
                          DETECTION_SCORER_OUTPUTS, EXPLAIN_INPUTS, EXPLAIN_OUTPUTS, INPUT, SCORER_INPUTS, SCORER_OUTPUTS,
                          SEGMENTATION_EXPLAIN_INPUTS, SEGMENTATION_EXPLAIN_OUTPUTS, SEGMENTATION_SCORER_INPUTS,
                          SEGMENTATION_SCORER_OUTPUTS, layer_activations, layer_gradients)

# Segmentation bundles (export/segmentation_graph.py): a class and a region per image; the scorer returns P [N].
SEGMENTATION_INTERFACE = {
    EXPLAIN_GRAPH: (SEGMENTATION_EXPLAIN_INPUTS, SEGMENTATION_EXPLAIN_OUTPUTS),
    "scorer": (SEGMENTATION_SCORER_INPUTS, SEGMENTATION_SCORER_OUTPUTS),
}


# Detection bundles (export/detection_graph.py): one instance per row; the scorer returns D-RISE's similarity [N].
DETECTION_INTERFACE = {
    EXPLAIN_GRAPH: (DETECTION_EXPLAIN_INPUTS, DETECTION_EXPLAIN_OUTPUTS),
    "scorer": (DETECTION_SCORER_INPUTS, DETECTION_SCORER_OUTPUTS),
}
TASK_INTERFACES = {"segmentation": SEGMENTATION_INTERFACE, "detection": DETECTION_INTERFACE}


def _dims(info: onnx.ValueInfoProto) -> list[int | None]:
    """A value's declared dimensions: ints where fixed, None where symbolic or unknown."""
    return [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]


def _load_interface(path: Path, name: str) -> onnx.GraphProto:
    """The graph of `name` without its external weights (cheap: no weights.bin is read)."""
    try:
        return onnx.load(str(path / name), load_external_data=False).graph
    except Exception as exc:  # a hash-consistent file that is not ONNX: protobuf raises its own errors
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BundleError(f"bundle {path}: {name} is not a readable ONNX graph ({reason}); re-export the bundle") from None


def _field_error(path: Path, field: str, claimed, graph: str, found) -> BundleError:
    return BundleError(f"bundle {path}: manifest field '{field}' says {claimed} but {graph} has {found}; the manifest "
                       f"does not describe these graphs (edited or swapped files): re-export the bundle")


def _check_names(path: Path, graph: onnx.GraphProto, name: str, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> None:
    """The graph's inputs (initializers aside) and outputs must be exactly those of a fusioncam graph of its kind."""
    constants = {init.name for init in graph.initializer}
    got_in = tuple(i.name for i in graph.input if i.name not in constants)
    got_out = tuple(o.name for o in graph.output)
    if got_in != inputs or got_out != outputs:
        raise BundleError(f"bundle {path}: {name} has inputs {list(got_in)} and outputs {list(got_out)}, not the "
                          f"{list(inputs)} -> {list(outputs)} of a fusioncam {name}; the bundle's graphs were swapped or "
                          f"replaced: re-export the bundle")


def _check_image_input(path: Path, graph: onnx.GraphProto, name: str, manifest: Manifest) -> None:
    dims = _dims(next(i for i in graph.input if i.name == INPUT))
    if len(dims) != 4 or dims[1] != 3:
        raise _field_error(path, "input_size", list(manifest.input_size), f"{name}'s input", f"shape {dims}")
    if tuple(dims[2:]) != tuple(manifest.input_size):
        raise _field_error(path, "input_size", list(manifest.input_size), f"{name}'s input", f"height x width {dims[2:]}")


def _check_logits(path: Path, graph: onnx.GraphProto, name: str, manifest: Manifest) -> None:
    """Logits are [N, num_classes], or [N, num_classes, H', W'] (output_size) for a segmentation bundle."""
    dims = _dims(graph.output[0])
    if len(dims) < 2 or dims[1] != manifest.num_classes:
        raise _field_error(path, "num_classes", manifest.num_classes, f"{name}'s logits", f"shape {dims}")
    output_size = getattr(manifest, "output_size", None)
    if getattr(manifest, "task", None) == "detection":  # the instance's class scores [N, C]; output_size is (A, C)
        output_size = None
    expected_rank = 2 if output_size is None else 4
    if len(dims) != expected_rank:
        raise _field_error(path, "output_size", output_size, f"{name}'s logits", f"shape {dims}")
    if output_size is not None and tuple(dims[2:]) != tuple(output_size) and None not in dims[2:]:
        raise _field_error(path, "output_size", list(output_size), f"{name}'s logits", f"height x width {dims[2:]}")


def check_manifest_facts(path: Path, manifest: Manifest) -> None:
    """Raise a BundleError naming the first manifest field that disagrees with the graphs or with itself."""
    if manifest.class_names is not None and len(manifest.class_names) != manifest.num_classes:
        raise BundleError(f"bundle {path}: manifest field 'class_names' has {len(manifest.class_names)} names but "
                          f"'num_classes' is {manifest.num_classes}; re-export the bundle")
    numbers = [*manifest.mean, *manifest.std]
    if (len(manifest.mean) != 3 or len(manifest.std) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers)
            or any(not s > 0 for s in manifest.std)):
        raise BundleError(f"bundle {path}: manifest fields 'mean'/'std' must be 3 numbers each (std > 0), got "
                          f"{list(manifest.mean)}/{list(manifest.std)}; re-export the bundle")
    explain = _load_interface(path, EXPLAIN_GRAPH)
    interface = TASK_INTERFACES.get(getattr(manifest, "task", "classification"))
    segmentation = interface is not None  # a task whose scorer returns one score per row
    explain_names = interface[EXPLAIN_GRAPH] if segmentation else (EXPLAIN_INPUTS, EXPLAIN_OUTPUTS)
    extra_layers = getattr(manifest, "extra_layers", None) or []
    if extra_layers and getattr(manifest, "task", None) == "segmentation":
        raise BundleError(f"bundle {path}: manifest field 'extra_layers' lists several target layers, which only "
                          f"classifier and detection bundles carry; re-export the bundle")
    extra_names = tuple(name(i) for i in range(1, 1 + len(extra_layers)) for name in (layer_activations, layer_gradients))
    _check_names(path, explain, EXPLAIN_GRAPH, explain_names[0], explain_names[1] + extra_names)
    _check_image_input(path, explain, EXPLAIN_GRAPH, manifest)
    _check_logits(path, explain, EXPLAIN_GRAPH, manifest)
    outputs = {output.name: output for output in explain.output}
    layers = [("", manifest.channels, manifest.feature_size, explain.output[1:3])]
    layers += [(f"extra_layers[{i - 1}].", layer["channels"], layer["feature_size"],
                [outputs[layer_activations(i)], outputs[layer_gradients(i)]])
               for i, layer in enumerate(extra_layers, start=1)]
    for prefix, channels, feature_size, maps in layers:
        for output in maps:
            dims = _dims(output)
            if len(dims) != 4 or dims[1] != channels:
                raise _field_error(path, f"{prefix}channels", channels, f"{EXPLAIN_GRAPH}'s {output.name}",
                                   f"shape {dims}")
            if tuple(dims[2:]) != tuple(feature_size):
                raise _field_error(path, f"{prefix}feature_size", list(feature_size),
                                   f"{EXPLAIN_GRAPH}'s {output.name}", f"height x width {dims[2:]}")
    scorers = [SCORER_GRAPH] + [name for name in (SCORER_GRAPH_FP16, SCORER_GRAPH_INT8) if name in manifest.files]
    for name in scorers:
        scorer = _load_interface(path, name)
        _check_names(path, scorer, name, *(interface["scorer"] if segmentation
                                           else (SCORER_INPUTS, SCORER_OUTPUTS)))
        _check_image_input(path, scorer, name, manifest)
        if not segmentation:
            _check_logits(path, scorer, name, manifest)

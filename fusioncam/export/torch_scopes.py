"""Which PyTorch module an exported ONNX node came from, for error messages that name the user's module.

torch's dynamo exporter records each node's module scopes in its metadata (`pkg.torch.onnx.name_scopes`, e.g.
['', 'model', 'model.network.0', 'model.network.0.2.attn'], with the classes in `pkg.torch.onnx.class_hierarchy`
and the aten op in `pkg.torch.onnx.fx_node`); the TorchScript exporter writes them into the node's name
('/model/layer1/layer1.0/conv2/Conv', each level the module's name, or its full path inside a container).
`export_torch` wraps the user's model as the attribute `model` of a wrapper module: that first level is dropped, so
the path is the one `fusioncam.list_layers(model)` shows ('' is the model itself).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

import onnx

WRAPPER_CLASS = "features_wrapper.<locals>.Wrapper"  # fusioncam.export.torch_export.features_wrapper's module
WRAPPED_ATTRIBUTE = "model"


@dataclass(frozen=True)
class TorchOrigin:
    """The module path (relative to the exported model), its class and the aten op of one ONNX node."""

    path: str
    module_class: str = ""
    aten_op: str = ""

    def describe(self) -> str:
        """E.g. "torch module 'network.0.2.attn' (timm.models.volo.OutlookAttention), aten.im2col"."""
        where = f"torch module '{self.path}'" if self.path else "the torch model's own forward"
        parts = [where + (f" ({self.module_class})" if self.module_class else "")]
        if self.aten_op:
            parts.append(self.aten_op)
        return ", ".join(parts)


def _metadata(node: onnx.NodeProto) -> dict[str, str]:
    return {prop.key: prop.value for prop in node.metadata_props}


def _listed(text: str) -> list[str]:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else []


def _from_metadata(meta: dict[str, str]) -> TorchOrigin | None:
    scopes = _listed(meta.get("pkg.torch.onnx.name_scopes", ""))
    classes = _listed(meta.get("pkg.torch.onnx.class_hierarchy", ""))
    if not scopes:
        return None
    # the last entry is the op itself (scopes: 'max_1'; classes: 'aten.max.dim'), the ones before it are modules
    modules, module_classes = scopes[:-1], classes[:-1]
    aten = classes[-1] if classes and classes[-1].startswith("aten.") else ""
    path = modules[-1] if modules else ""
    if module_classes and module_classes[0].endswith(WRAPPER_CLASS):
        path = "" if path == WRAPPED_ATTRIBUTE else path.removeprefix(WRAPPED_ATTRIBUTE + ".")
        module_classes = module_classes[1:]
    return TorchOrigin(path, module_classes[-1] if module_classes else "", aten)


def _from_name(name: str, wrapped: bool) -> TorchOrigin | None:
    levels = name.split("/")[1:-1]  # '/model/layer1/layer1.0/conv2/Conv' -> model, layer1, layer1.0, conv2
    if not name.startswith("/") or not levels:
        return None
    parts: list[str] = []
    for level in levels:
        if parts and level.startswith(parts[-1] + "."):  # 'layer1.0' inside 'layer1': the container's full path
            parts[-1] = level
        else:
            parts.append(level)
    if wrapped and parts and parts[0] == WRAPPED_ATTRIBUTE:
        parts = parts[1:]
    return TorchOrigin(".".join(parts))


def exported_from_wrapper(graph: onnx.GraphProto) -> bool:
    """True when the graph's TorchScript scope names all start under fusioncam's wrapper ('/model/...')."""
    scoped = [node.name for node in graph.node if node.name.startswith("/") and node.name.count("/") > 1]
    return bool(scoped) and all(name.startswith(f"/{WRAPPED_ATTRIBUTE}/") for name in scoped)


def torch_origin(node: onnx.NodeProto, wrapped: bool) -> TorchOrigin | None:
    """Where a node came from in the PyTorch model, or None when the exporter left no trace (an ONNX file made
    some other way). `wrapped`: the graph came through export_torch's wrapper (see exported_from_wrapper)."""
    return _from_metadata(_metadata(node)) or _from_name(node.name, wrapped)

"""What an Explainer does differently on a bundle with several target layers (manifest extra_layers): one explain
pass returns every layer's activations and gradients; each layer gets its own Engine over that pass (its own
Grad-CAM weights, its own Score-CAM sweep over its channels, as pytorch-grad-cam's per-layer get_cam_weights does);
the maps are then aggregated per method (layer_aggregation.py). AblationCAM and ReciproCAM run each layer's own head
graph (head.onnx, head_1.onnx, ...); FullGrad's and ShapleyCAM's graphs are derived from one target layer's, so
those two are refused on such bundles."""

from __future__ import annotations

from typing import Callable

from ..bundle import Bundle
from ..errors import InputError
from ..graph_names import ACTIVATIONS, GRADIENTS, layer_activations, layer_gradients
from ..tasks import TensorSpec
from .methods.registry import REGISTRY


def layer_count(bundle: Bundle) -> int:
    """How many target layers the bundle's explain graph outputs maps of."""
    return 1 + len(bundle.manifest.extra_layers or ())


def extra_output_names(bundle: Bundle) -> list[str]:
    """The explain graph's outputs beyond the task's: activations/i, gradients/i of each further layer."""
    return [name(i) for i in range(1, layer_count(bundle)) for name in (layer_activations, layer_gradients)]


def extra_output_specs(bundle: Bundle) -> dict[str, TensorSpec]:
    """Per-image shape and dtype of each extra output (the CUDA backend allocates them)."""
    specs = {}
    for index, layer in enumerate(bundle.manifest.extra_layers or (), start=1):
        features = (int(layer["channels"]), *(int(v) for v in layer["feature_size"]))
        specs[layer_activations(index)] = TensorSpec(features, "float")
        specs[layer_gradients(index)] = TensorSpec(features, "float")
    return specs


def one_layer_methods() -> tuple[str, ...]:
    """The methods that run a graph derived from one target layer's (FullGrad's and ShapleyCAM's,
    runtime/derived_graphs.py)."""
    return tuple(name for name, method in REGISTRY.items() if method.derived_passes)


def refused_methods(bundle: Bundle, methods: tuple[str, ...]) -> list[str]:
    """The asked methods the bundle cannot run because it has several target layers ([] on a one-layer bundle)."""
    return [name for name in methods if name in one_layer_methods()] if layer_count(bundle) > 1 else []


def check_several_layer_methods(bundle: Bundle, methods: tuple[str, ...]) -> None:
    """An InputError naming the methods a several-layer bundle cannot run, and what to do instead."""
    refused = refused_methods(bundle, methods)
    if refused:
        raise InputError(f"{', '.join(refused)} cannot run on bundle {bundle.path}, which has several target layers "
                         f"({', '.join(bundle.layer_names)}): they run a graph derived from one target layer's; "
                         f"export one bundle per layer for them")


def layer_view(graph: dict, index: int) -> dict:
    """The explain pass's outputs as an Engine reads them for layer `index`: its maps under ACTIVATIONS, GRADIENTS."""
    if index == 0:
        return graph
    return {**graph, ACTIVATIONS: graph[layer_activations(index)], GRADIENTS: graph[layer_gradients(index)]}


def shared_comparisons(explain_classes: Callable | None) -> Callable | None:
    """FinerCAM's comparison passes (another explain pass for other classes) run once for every layer: the pass
    for one set of classes is kept and each layer reads its own maps from it (layer_view per layer's Engine)."""
    if explain_classes is None:
        return None
    kept: dict[tuple, dict] = {}

    def explain(images, classes):
        key = (int(images.shape[0]), tuple(int(c) for c in classes.tolist()))
        if key not in kept:
            kept[key] = explain_classes(images, classes)
        return kept[key]

    return explain


def layer_comparisons(explain_classes: Callable | None, index: int) -> Callable | None:
    """`explain_classes` with its outputs seen as layer `index`'s (layer_view)."""
    if explain_classes is None or index == 0:
        return explain_classes
    return lambda images, classes: layer_view(explain_classes(images, classes), index)

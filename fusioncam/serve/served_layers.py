"""The target layers of a served bundle, for bundles with one or several (manifest extra_layers).

A several-layer bundle is served as a one-layer bundle is: each method's answer is the map Explainer.explain
aggregates over the layers (`result.maps`; runtime/layer_aggregation.py). What differs is told to clients here:
the layers are named (Triton's model configuration `parameters.target_layers`, v1 `:explain` answers'
`target_layers`), and the methods whose graphs are derived from one layer's (FullGrad, ShapleyCAM;
runtime/several_layers.py) are left out of the metadata's outputs and refused per request with a 400 that says why.
"""

from __future__ import annotations

import json

from ..bundle import Bundle, Manifest
from ..runtime.methods import METHODS
from ..runtime.several_layers import layer_count, one_layer_methods, refused_methods
from .request_errors import BadRequest

TARGET_LAYERS = "target_layers"  # the key under which answers and the model configuration name the layers


def has_several_layers(manifest: Manifest) -> bool:
    """Whether the bundle's explain graph outputs the maps of more than one target layer."""
    return bool(manifest.extra_layers)


def served_methods(manifest: Manifest) -> tuple[str, ...]:
    """The methods the served bundle answers, in canonical order: every one, less FullGrad and ShapleyCAM on a
    several-layer bundle."""
    if not has_several_layers(manifest):
        return tuple(METHODS)
    refused = set(one_layer_methods())
    return tuple(method for method in METHODS if method not in refused)


def config_parameters(bundle: Bundle) -> dict[str, str]:
    """Triton ModelConfig `parameters` (string values): the target layers as a JSON list, in the bundle's order
    (the first is the manifest's target_layer)."""
    return {TARGET_LAYERS: json.dumps(list(bundle.layer_names))}


def check_served_methods(bundle: Bundle, model_name: str, methods: tuple[str, ...]) -> None:
    """BadRequest naming the asked methods a several-layer bundle cannot run, the layers, and what to ask instead."""
    refused = refused_methods(bundle, methods)
    if refused:
        raise BadRequest(f"{', '.join(refused)} cannot run on model {model_name}: its bundle has "
                         f"{layer_count(bundle)} target layers ({', '.join(bundle.layer_names)}) and "
                         f"{'this method runs' if len(refused) == 1 else 'these methods run'} a graph derived from one "
                         f"target layer's; ask for another method ({', '.join(served_methods(bundle.manifest))}), or "
                         f"serve a bundle with one target layer for {', '.join(refused)}")

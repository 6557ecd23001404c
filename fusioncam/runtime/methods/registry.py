"""Every method by name: its function, its title, and the shared quantities to prepare before it runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from ...errors import InputError
from .ablationcam import ablationcam
from .fusion import fusion
from .gradient_weights import gradcam, gradcam_plus_plus, xgradcam
from .eigen import eigencam, eigengradcam, kpcacam
from .elementwise import gradcam_elementwise, hirescam, layercam
from .finercam import finercam
from .groupcam import groupcam
from .reciprocam import reciprocam, reciprocam_gaussian
from .scorecam import scorecam
from .unioncam import unioncam


@dataclass(frozen=True)
class Method:
    """A method: `run(engine)` returns a MethodOutput, or is a generator that yields probe rounds first."""

    name: str
    title: str
    run: Callable
    needs: tuple[str, ...] = ()  # Engine properties it reads: prepared (once, shared) before any method runs


REGISTRY: dict[str, Method] = {method.name: method for method in (
    Method("gradcam", "Grad-CAM", gradcam, ("gradcam",)),
    Method("gradcam++", "Grad-CAM++", gradcam_plus_plus),
    Method("xgradcam", "XGrad-CAM", xgradcam),
    Method("scorecam", "Score-CAM", scorecam, ("scorecam",)),
    Method("groupcam", "Group-CAM", groupcam, ("gradcam_weights",)),
    Method("unioncam", "Union-CAM", unioncam, ("scorecam", "b0")),
    Method("fusion", "Fusion-CAM", fusion, ("gradcam", "scorecam", "b0")),
    Method("hirescam", "HiResCAM", hirescam),
    Method("gradcam-elementwise", "Grad-CAM element-wise", gradcam_elementwise),
    Method("layercam", "LayerCAM", layercam),
    Method("eigencam", "Eigen-CAM", eigencam),
    Method("eigengradcam", "EigenGrad-CAM", eigengradcam),
    Method("kpcacam", "KPCA-CAM", kpcacam),
    Method("finercam", "FinerCAM", finercam, ("gradcam_weights",)),
    Method("ablationcam", "Ablation-CAM", ablationcam, ("head",)),  # head-graph forwards (methods/head_sweep.py)
    Method("reciprocam", "Recipro-CAM", reciprocam, ("head",)),
    Method("reciprocam-gaussian", "Recipro-CAM (Gaussian)", reciprocam_gaussian, ("head",)),
)}
METHODS: tuple[str, ...] = tuple(REGISTRY)
METHOD_TITLES: dict[str, str] = {name: method.title for name, method in REGISTRY.items()}


def check_methods(methods: str | Sequence[str]) -> tuple[str, ...]:
    """The methods in canonical order without repeats, or an InputError naming the valid ones. One string may name
    several, comma-separated ("gradcam,fusion"), as the CLI's --methods and the server's parameter do."""
    methods = [m.strip() for m in methods.split(",") if m.strip()] if isinstance(methods, str) else list(methods)
    if not methods:
        raise InputError(f"methods: none given; choose one or more of {', '.join(METHODS)}")
    unknown = [str(m) for m in methods if m not in REGISTRY]
    if unknown:
        raise InputError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    return tuple(m for m in METHODS if m in methods)

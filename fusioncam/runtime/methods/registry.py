"""Every method by name: its function, its title, and the shared quantities to prepare before it runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from ...errors import InputError
from .ablationcam import ablationcam
from .fullgrad import fullgrad
from .fusion import fusion
from .gradient_weights import gradcam, gradcam_plus_plus, xgradcam
from .eigen import eigencam, eigengradcam, kpcacam
from .elementwise import gradcam_elementwise, hirescam, layercam
from .finercam import COMPARISONS, finercam
from .groupcam import groupcam
from .reciprocam import reciprocam, reciprocam_gaussian
from .scorecam import scorecam
from .shapleycam import shapleycam
from .unioncam import unioncam


ALL_TASKS: tuple[str, ...] = ("classification", "segmentation", "detection")
HEAD_TASKS: tuple[str, ...] = ("classification",)  # only a classifier bundle has a head graph (methods/head_sweep.py)
COMPARISON_TASKS: tuple[str, ...] = ("classification", "segmentation")  # tasks whose explain pass takes other classes
CLASSIFICATION_TASKS: tuple[str, ...] = ("classification",)  # FullGrad's and ShapleyCAM's derived graphs: classifiers


@dataclass(frozen=True)
class Method:
    """A method: `run(engine)` returns a MethodOutput, or is a generator that yields probe rounds first."""

    name: str
    title: str
    run: Callable
    needs: tuple[str, ...] = ()  # Engine properties it reads: prepared (once, shared) before any method runs
    tasks: tuple[str, ...] = ALL_TASKS  # the bundle tasks it runs on; on others it raises a clear InputError
    extra_explain_passes: int = 0  # explain passes of the N images it runs beyond the one all methods share (at most)
    derived_passes: int = 0  # passes of the N images through a graph derived from the bundle's (runtime/derived_graphs.py)


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
    Method("finercam", "FinerCAM", finercam, ("gradcam_weights",), COMPARISON_TASKS, COMPARISONS),
    Method("ablationcam", "Ablation-CAM", ablationcam, ("head",), HEAD_TASKS),  # head-graph forwards (head_sweep.py)
    Method("reciprocam", "Recipro-CAM", reciprocam, ("head",), HEAD_TASKS),
    Method("reciprocam-gaussian", "Recipro-CAM (Gaussian)", reciprocam_gaussian, ("head",), HEAD_TASKS),
    # graphs derived from the bundle's own on first use (runtime/derived_graphs.py): one more pass of the N images
    Method("fullgrad", "FullGrad", fullgrad, (), CLASSIFICATION_TASKS, derived_passes=1),  # forward, whole backward
    Method("shapleycam", "ShapleyCAM", shapleycam, (), CLASSIFICATION_TASKS, derived_passes=1),  # 0 where H A is 0
)}
METHODS: tuple[str, ...] = tuple(REGISTRY)
METHOD_TITLES: dict[str, str] = {name: method.title for name, method in REGISTRY.items()}


def methods_for_task(task: str) -> tuple[str, ...]:
    """The methods, in canonical order, that run on a bundle of this task ("classification", "segmentation",
    "detection"); asking for another one anyway gives that method's InputError."""
    if task not in ALL_TASKS:
        raise InputError(f"unknown task {task!r}; choose from {', '.join(ALL_TASKS)}")
    return tuple(name for name, method in REGISTRY.items() if task in method.tasks)


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

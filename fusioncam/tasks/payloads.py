"""How each task's inputs and outputs are encoded outside the runtime: one payloads object per task.

The server (v1 and v2), `fusioncam evaluate` and `explain-dataset` ask the bundle's payloads how to read a
request's extra inputs (a segmentation region), what a prediction is (a classifier's logits, a segmentation
model's per-pixel class scores), and how predictions and explained targets are written back; none of them asks
which task a bundle is. A new task adds its payloads module and one line in PAYLOADS.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import numpy as np

from ..errors import InputError

PAYLOADS = {
    "classification": ("fusioncam.tasks.classification_payloads", "ClassificationPayloads"),
    "segmentation": ("fusioncam.tasks.segmentation_payloads", "SegmentationPayloads"),
    "detection": ("fusioncam.tasks.detection_payloads", "DetectionPayloads"),
}


class TaskPayloads(Protocol):
    """What serve, evaluate and explain-dataset need to know of a task (see the two implementations)."""

    v2_prediction_outputs: tuple[str, ...]  # v2 outputs that need a prediction only
    v2_explanation_outputs: tuple[str, ...]  # v2 outputs that need an explanation (besides the maps)
    score_name: str  # what the metrics and reports call the score of an explained target

    # --- serving
    def v1_regions(self, shared: Any, instances: list, size: tuple[int, int], max_pixels: int) -> list | None: ...
    def v2_regions(self, tensor, parameter: Any, count: int, size: tuple[int, int]) -> list | None: ...
    def v2_input_types(self, manifest) -> list[dict]: ...
    def v2_output_types(self, manifest) -> list[dict]: ...
    def predict(self, explainer, images: np.ndarray) -> np.ndarray: ...
    def explained_facts(self, explanation) -> dict[str, np.ndarray]: ...
    def v1_predictions(self, logits: np.ndarray, top_k: int, manifest) -> list[dict]: ...
    def v1_target(self, classes, probabilities, facts: dict, i: int, manifest) -> dict: ...
    def v2_tensors(self, logits, classes, probabilities, facts: dict, top_k: int, manifest,
                   outputs: tuple[str, ...]) -> dict[str, np.ndarray]: ...

    # --- explain-dataset
    def dataset_fields(self) -> list[tuple[str, Any]]: ...
    def dataset_row(self, explanation, j: int, region: str | None) -> dict[str, Any]: ...
    def dataset_regions(self, values: list, size: tuple[int, int], sources: list[str]) -> tuple[list | None, dict]: ...

    # --- evaluate
    def evaluate(self, explainer, image: np.ndarray, methods: tuple[str, ...], name: str, step: int, region,
                 on_batch=None, before_method=None, road_percentiles=None): ...
    def evaluate_maps(self, explainer, images: np.ndarray, maps: dict, explanation, step: int, names: list[str],
                      before_method=None, road_percentiles=None): ...
    def evaluation_facts(self, explanation) -> dict[str, Any]: ...
    def evaluation_subject(self, region) -> str: ...


_loaded: dict[str, TaskPayloads] = {}


def payloads_for(manifest) -> TaskPayloads:
    """The payloads of the bundle's task (its manifest's `task`), or an InputError naming the tasks there are."""
    task = getattr(manifest, "task", "classification") or "classification"
    if task not in PAYLOADS:
        raise InputError(f"this version of fusioncam has no encodings for a {task!r} bundle; it knows "
                         f"{', '.join(PAYLOADS)}")
    if task not in _loaded:
        module, name = PAYLOADS[task]
        _loaded[task] = getattr(importlib.import_module(module), name)()
    return _loaded[task]


__all__ = ["PAYLOADS", "TaskPayloads", "payloads_for"]

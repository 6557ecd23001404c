"""tasks/: what a bundle explains. One `Task` per kind of model, chosen by the bundle manifest's `task`.

A task is the only place that knows what the explained score is. Everything else (the backends, the scorer loop,
the seven methods, the Explainer) is task-agnostic and asks the task:

- which explain-graph inputs carry the target beside the images (`explain_inputs`), and how the user's
  `targets=` / `regions=` become them, with clear errors (`explain_feed`);
- what each scorer row needs beside its masked image (`row_inputs`, `row_input_specs`, `row_feed`) and what the
  scorer returns per row (`scorer_output`, `scorer_output_shape`);
- the per-image targets an explain pass resolved (`image_targets`: the classes, or class + region weights), which
  the methods index by image (`targets[image_index]` gives the rows' targets; `targets[start:stop]` slices rows);
- how a row's explained score is read from the scorer's output: raw (`row_scores`, Score-CAM's sweep) and as a
  probability (`row_probabilities`, the betas, Group-CAM, the metrics);
- the baseline: what the all-zeros image z0 scores (`constant_baseline` once per Explainer, `baseline` per call);
- the result: which Explanation class and fields it carries (`explanation`), per-image facts for encodings
  (`image_facts`), and the prediction without an explanation (`predict`).

Adding a task (e.g. object detection) is one module here that defines such a class and registers it in TASKS below,
plus its export rules (the graphs that take its target inputs); the runtime does not change.

Encodings of a task's inputs and outputs for serving, datasets and reports live in their own modules (named by the
task, e.g. `tasks/segmentation_payloads.py`, or under serve/, dataset/, report/); they build on the facts here:
`Task.name`, `explain_feed`'s arguments (targets, regions) and `image_facts`.

The task modules are imported on first use (`task_for`), so importing this package stays light and cannot form an
import loop with runtime/.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from ..errors import BundleError

Array = Any  # numpy.ndarray or cupy.ndarray (fusioncam.kernels.Array)


@dataclass(frozen=True)
class TensorSpec:
    """One graph tensor's per-image (or per-row) shape without the batch axis, and its dtype ("float" is the
    graph's float type: float32, or float16 in a float16 scorer)."""

    shape: tuple[int, ...]
    dtype: str  # "float" or "int64"


@dataclass(frozen=True)
class Baseline:
    """What the all-zeros image z0 scores for each image's target: `scores` float32 [N] (the raw score Score-CAM's
    sweep gives a constant channel, whose mask is all zeros) and `probabilities` float64 [N] (b0 = p(z0))."""

    scores: Array
    probabilities: Array


@dataclass(frozen=True)
class Prediction:
    """The model's prediction for N images without an explanation (Explainer.predict), on the host.

    Classification: `logits` float32 [N, C], `probabilities` float64 [N, C] (softmax), `classes` int64 [N].
    Segmentation: `logits` float32 [N, C, H', W'] (per-pixel class scores), `probabilities` float64 [N, C, H', W']
    (softmax over C per pixel), `classes` int64 [N, H', W'] (the predicted class of every output pixel)."""

    logits: np.ndarray
    probabilities: np.ndarray
    classes: np.ndarray

    def __array__(self, dtype=None, copy=None):
        """np.asarray(prediction) is its logits."""
        return np.asarray(self.logits, dtype=dtype)


@runtime_checkable
class Task(Protocol):
    """What the explained score of one kind of model is, and how its targets, inputs and results look.

    Device arrays (`Array`) are NumPy on the CPU and CuPy on the GPU: a task writes its array code with `xp`
    (the scorer's array module) and never assumes a device. `manifest` is the bundle's fusioncam.bundle.Manifest;
    `scorer` a fusioncam.runtime.scorer.Scorer (its backend, xp, kernels, asarray and to_host)."""

    name: str  # the manifest's `task` value: "classification", "segmentation"
    explain_inputs: tuple[str, ...]  # explain-graph inputs after INPUT, in graph order (graph_names)
    explain_outputs: tuple[str, ...]  # explain-graph outputs the runtime reads, in graph order
    row_inputs: tuple[str, ...]  # scorer inputs after INPUT, one row per masked image ((): the image alone)
    scorer_output: str  # the scorer output read per row (LOGITS [rows, C], or SCORE [rows])
    compat_note: str | None  # None: compat="pytorch-grad-cam" applies; else why it does not (said in the error)

    def explain_feed(self, manifest, n: int, targets, regions, class_names: Sequence[str] | None) -> dict[str, np.ndarray]:
        """The explain graph's target inputs (host arrays, by name) for N images from the user's `targets=` and
        `regions=`; an InputError says what was wrong and how to fix it (e.g. regions= for a classifier)."""

    def explain_output_specs(self, manifest) -> dict[str, TensorSpec]:
        """Per-image shape and dtype of each of explain_outputs (the CUDA backend allocates them)."""

    def row_input_specs(self, manifest) -> dict[str, TensorSpec]:
        """Per-row shape and dtype of each of row_inputs (the CUDA backend keeps bound buffers for them)."""

    def scorer_output_shape(self, manifest) -> tuple[int, ...]:
        """Per-row shape of scorer_output: (C,) for logits, () for one score per row."""

    def image_targets(self, graph: Mapping[str, Array]) -> Any:
        """The explained target of each of N images, from the explain pass's outputs, indexable by image: `t[index]`
        (an int64 array of image indices) gives the rows' targets, `t[start:stop]` slices rows."""

    def check_explained(self, graph_on_host: Callable[[str], np.ndarray], names: Sequence[str],
                        class_name: Callable[[int], str]) -> None:
        """Refuse, with an InputError naming the images, targets the explain pass resolved to nothing to explain
        (an empty region); `graph_on_host(name)` copies one explain output to the host."""

    def row_feed(self, rows: Any) -> dict[str, Array]:
        """The scorer's extra inputs (row_inputs, device arrays) for the rows' targets `rows` (a slice of
        `image_targets(...)[image_index]`)."""

    def row_scores(self, xp, outputs: Array, rows: Any) -> Array:
        """float32 [rows]: each row's raw explained score from the scorer's output (Score-CAM's sweep)."""

    def row_probabilities(self, xp, outputs: Array, rows: Any) -> Array:
        """float64 [rows]: each row's explained probability (the betas, Group-CAM, the faithfulness metrics)."""

    def constant_baseline(self, scorer) -> Any:
        """What about z0 is the same for every call, computed once when an Explainer starts (None if nothing)."""

    def baseline(self, scorer, targets: Any, constant: Any, clock) -> Baseline:
        """z0's scores for the N images' targets of one call (from `constant`, or scorer forwards timed on
        `clock` as baseline_forwards)."""

    def explanation(self, fields: dict[str, Any], graph: Mapping[str, Array], xp, to_host) -> Any:
        """The call's Explanation: `fields` are the task-agnostic ones (maps, timings, facts, ...), on the host;
        the task adds classes, probabilities, logits (and its own fields) from the explain pass's `graph`."""

    def image_facts(self, explanation, index: int) -> dict[str, Any]:
        """Plain facts of image `index` of an explanation (class, class name, probability, ...), for encodings."""

    def predict(self, scorer, images: Array) -> Prediction:
        """The model's prediction for preprocessed images on the scorer's device (call inside scorer.in_use())."""

    # Optional member, for tasks that explain several things per image (detection: one row per instance):
    # explained_rows(scorer, images, feed, instances, names, manifest, class_names) -> (index, feed, names) turns
    # N images and explain_feed's placeholder feed into rows: `index` int64 [R] the image of each row, the rows'
    # explain feed and names. The Explainer explains images[index]; R == 0 gives an empty result. Tasks without it
    # explain one row per image and refuse `instances=`.
    # Optional member layers_weighted_by_attribution (bool, default False): a several-layer bundle's maps are combined
    # per row weighted by each layer's attribution sum |A * dS/dA| (runtime/layer_aggregation.py) instead of averaged:
    # for tasks whose rows read some layers only (detection: an instance and its feature pyramid's levels).


# manifest task -> "module:attribute" of its Task instance (imported on first use)
TASKS: dict[str, str] = {
    "classification": "fusioncam.tasks.classification:CLASSIFICATION",
    "segmentation": "fusioncam.tasks.segmentation:SEGMENTATION",
    "detection": "fusioncam.tasks.detection:DETECTION",
}


def task_for(name: str) -> Task:
    """The Task of a manifest's `task` value, or a BundleError naming the tasks this fusioncam knows."""
    where = TASKS.get(name) if isinstance(name, str) else None
    if where is None:
        raise BundleError(f"bundle task {name!r} is not one this fusioncam explains ({', '.join(TASKS)}); re-export "
                          f"the bundle with this fusioncam, or upgrade fusioncam")
    module, attribute = where.split(":")
    return getattr(importlib.import_module(module), attribute)


__all__ = ["Baseline", "Prediction", "TASKS", "Task", "TensorSpec", "task_for"]

"""The cases of the task parity reference (tests/runtime/data/task_parity_reference.npz): seeded models, exported
and explained on the CPU with every method, each result flattened into named arrays.

Only public API is used (export_torch / export_torch_segmentation, Explainer.explain), so the same cases run on the
commit that made the reference and on the current code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import fusioncam

METHODS = ("gradcam", "gradcam++", "xgradcam", "scorecam", "groupcam", "unioncam", "fusion")
CLASSIFIER_SIZE = (32, 32)


def small_classifier() -> torch.nn.Module:
    """A seeded CNN with sharpened logits (random weights otherwise give near-uniform probabilities)."""
    torch.manual_seed(7)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 5)).eval()
    with torch.no_grad():
        model[6].weight.mul_(8.0)
    return model


def _flatten(result) -> dict[str, np.ndarray]:
    """The arrays an explanation's parity is judged on."""
    arrays = {f"map/{name}": result.maps[name] for name in result.maps}
    arrays["classes"] = result.classes
    arrays["probabilities"] = result.probabilities
    for name, value in (result.betas or {}).items():
        arrays[f"betas/{name}"] = value
    for name, value in (result.union_betas or {}).items():
        arrays[f"union_betas/{name}"] = value
    if result.group_scores is not None:
        arrays["group_scores"] = result.group_scores
    if getattr(result, "region_weights", None) is not None:
        arrays["region_weights"] = result.region_weights
    return arrays


def _classifier_images(n: int) -> np.ndarray:
    return np.random.default_rng(3).standard_normal((n, 3, *CLASSIFIER_SIZE)).astype(np.float32)


def classifier_case(folder: Path, **options) -> dict[str, np.ndarray]:
    path = folder / "classifier.fcam"
    if not path.exists():
        fusioncam.export_torch(small_classifier(), "2", path, input_size=CLASSIFIER_SIZE, fp16_scorer=True)
    with fusioncam.Explainer(path, device="cpu", batch_size=5, **options) as explainer:
        return _flatten(explainer.explain(_classifier_images(3), targets=[None, 2, 4], methods=METHODS))


def segmentation_case(folder: Path, **options) -> dict[str, np.ndarray]:
    from tests.support.segmentation_models import SIZE, lraspp, random_images

    path = folder / "segmentation.fcam"
    if not path.exists():
        fusioncam.export_torch_segmentation(lraspp(), "backbone.12", path, input_size=SIZE, fp16_scorer=True)
    mask = np.zeros(SIZE, dtype=bool)
    mask[8:30, 12:40] = True
    with fusioncam.Explainer(path, device="cpu", batch_size=16, **options) as explainer:
        return _flatten(explainer.explain(random_images(3, seed=4), targets=[None, 2, 1],
                                          regions=["predicted", (10, 4, 44, 40), mask], methods=METHODS))


CASES = {
    "classifier": lambda folder: classifier_case(folder),
    "classifier_fast": lambda folder: classifier_case(folder, max_channels=5),
    "classifier_compat": lambda folder: classifier_case(folder, compat="pytorch-grad-cam"),
    "classifier_fp16": lambda folder: classifier_case(folder, precision="fp16"),
    "segmentation": lambda folder: segmentation_case(folder),
    "segmentation_fast": lambda folder: segmentation_case(folder, max_channels=9),
    "segmentation_fp16": lambda folder: segmentation_case(folder, precision="fp16"),
}


def run_case(name: str, folder: Path) -> dict[str, np.ndarray]:
    """The named case's arrays, its bundles exported under `folder` (shared between the cases of one model)."""
    return CASES[name](folder)

"""Faithfulness metrics of segmentation explanations (metrics/segmentation.py) against an eager PyTorch
computation of the same protocols with the region probability P, on the known-answer quadrant network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusioncam import Explainer, export_torch_segmentation
from fusioncam.metrics.segmentation import evaluate_segmentation_maps
from tests.support.segmentation_reference import class_scores, region_probability
from tests.support.segmentation_models import QuadrantNet
from tests.support.torch_reference_methods import gaussian_blur

STEP = 128


def _eager_probability(model, batch: np.ndarray, cls: int, weights: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        scores = class_scores(model(torch.from_numpy(batch.astype(np.float32)))).double()
    return region_probability(scores, [cls] * len(batch), weights.double().expand(len(batch), -1, -1)).numpy()


def _eager_curves(model, image: np.ndarray, cam: np.ndarray, cls: int, weights: torch.Tensor):
    """Deletion and insertion P [S] by ranking pixels (descending, ties row-major) and changing the top ones."""
    plane = cam.size
    counts = np.append(np.arange(0, plane, STEP), plane)
    order = np.argsort(-cam.ravel(), kind="stable")
    blurred = gaussian_blur(torch.from_numpy(image)).numpy()
    deleted, inserted = [], []
    for count in counts:
        changed = np.zeros(plane, bool)
        changed[order[:count]] = True
        changed = changed.reshape(cam.shape)
        deleted.append(image * ~changed)
        inserted.append(np.where(changed, image, blurred))
    x = counts / plane
    return x, _eager_probability(model, np.stack(deleted), cls, weights), \
        _eager_probability(model, np.stack(inserted), cls, weights)


@pytest.mark.slow
def test_metrics_match_an_eager_computation(tmp_path) -> None:
    model = QuadrantNet().eval()
    image = (np.abs(np.random.default_rng(0).standard_normal((1, 3, 32, 32))) + 0.5).astype(np.float32)
    with torch.no_grad():
        mean = float(model.top_left_mean(torch.from_numpy(image)))
    model.alpha, model.beta = 8.0 / mean, mean / 2  # softer than the methods test: the curves move gradually
    export_torch_segmentation(model, "target", tmp_path / "q.fcam", input_size=(32, 32))
    with Explainer(tmp_path / "q.fcam", device="cpu") as explainer:
        explanation = explainer.explain(image, targets=1, regions=(0, 0, 32, 20), methods=("gradcam", "scorecam"))
        inverted = {"inverted_gradcam": 1.0 - explanation.maps["gradcam"]}
        scores = evaluate_segmentation_maps(explainer, image, explanation, step=STEP)
        scores.update(evaluate_segmentation_maps(explainer, image, explanation, inverted, step=STEP))
    weights = torch.from_numpy(explanation.region_weights[0])
    y = _eager_probability(model, image, 1, weights)[0]
    for name, cam in [*explanation.maps.items(), *inverted.items()]:
        got = scores[name]
        o = _eager_probability(model, image * cam[0], 1, weights)[0]
        assert abs(got.on_image[0] - y) <= 1e-5 and abs(got.on_masked[0] - o) <= 1e-5, name
        assert got.average_drop[0] == pytest.approx(100 * max(0.0, y - o) / y, abs=1e-4)
        assert got.increase[0] == (100.0 if o > y else 0.0)
        x, deletion, insertion = _eager_curves(model, image[0], cam[0], 1, weights)
        np.testing.assert_allclose(got.fractions, x)
        np.testing.assert_allclose(got.deletion_curve[0], deletion, atol=1e-5)
        np.testing.assert_allclose(got.insertion_curve[0], insertion, atol=1e-5)
        assert got.deletion_auc[0] == pytest.approx(np.trapezoid(deletion, x), abs=1e-5)
        assert got.insertion_auc[0] == pytest.approx(np.trapezoid(insertion, x), abs=1e-5)
    # The known answer: deleting the top-left quadrant first (Grad-CAM's mass) drops P sooner than deleting it last.
    # (Insertion cannot tell them apart here: this network reads a quadrant's mean, which the blurred start keeps.)
    assert scores["gradcam"].deletion_auc[0] < scores["inverted_gradcam"].deletion_auc[0] - 0.1


def test_classifier_metrics_on_a_segmentation_bundle_say_which_to_use(tmp_path) -> None:
    from fusioncam.errors import InputError
    from fusioncam.metrics import average_drop

    export_torch_segmentation(QuadrantNet().eval(), "target", tmp_path / "q.fcam", input_size=(32, 32))
    image = np.ones((1, 3, 32, 32), np.float32)
    with Explainer(tmp_path / "q.fcam", device="cpu") as explainer:
        with pytest.raises(InputError, match="evaluate_segmentation_maps"):
            average_drop(explainer, image, np.ones((1, 32, 32), np.float32))
        explanation = explainer.explain(image, targets=1, regions="all", methods="gradcam")
        with pytest.raises(InputError, match="2 images given for an explanation of 1"):
            evaluate_segmentation_maps(explainer, np.concatenate([image, image]), explanation)

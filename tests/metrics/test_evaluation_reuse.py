"""evaluate_maps does the work its methods share once: Y reused from the explanation, one blur per evaluation."""

from __future__ import annotations

import numpy as np
import pytest

import fusioncam
from fusioncam.kernels import numpy_kernels
from fusioncam.metrics import average_drop, deletion_curve, increase_in_confidence, insertion_curve
from fusioncam.metrics.evaluation import evaluate_maps, explain_and_evaluate
from fusioncam.metrics.perturbation_curves import step_counts
from tests.support.tiny_models import tiny_bundle_at

SIZE, STEP = 12, 20
METHODS = ("gradcam", "scorecam", "fusion")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle_at(tmp_path_factory.mktemp("tiny"), size=SIZE, seed=6)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(8).uniform(-2, 2, (3, 3, SIZE, SIZE)).astype(np.float32)


def counted(explainer, monkeypatch) -> dict:
    """Count the scorer's rows and the insertion blurs."""
    counts = {"rows": 0, "blurs": 0}
    score_rows = explainer.backend.score_rows
    blur = numpy_kernels.gaussian_blurred_images

    def counted_rows(count, *inputs):
        counts["rows"] += count
        return score_rows(count, *inputs)

    def counted_blur(*args, **kwargs):
        counts["blurs"] += 1
        return blur(*args, **kwargs)

    explainer.backend.score_rows = counted_rows
    monkeypatch.setattr(numpy_kernels, "gaussian_blurred_images", counted_blur)
    return counts


def test_reusing_the_explanation_gives_the_metric_functions_values(bundle, images, monkeypatch):
    explainer = fusioncam.Explainer(bundle, device="cpu", batch_size=16)
    explanation = explainer.explain(images, methods=METHODS)
    maps = {m: explanation.maps[m] for m in METHODS}
    counts = counted(explainer, monkeypatch)
    evaluation = evaluate_maps(explainer, images, maps, step=STEP, explanation=explanation)
    steps = len(step_counts(SIZE * SIZE, STEP))
    # Per method: N masked images and N * steps for each curve; no unperturbed image is scored, one blur in all.
    assert counts == {"rows": len(METHODS) * 3 * (1 + 2 * steps), "blurs": 1}
    np.testing.assert_array_equal(evaluation.classes, explanation.classes)
    for method in METHODS:  # the same values as the public metric functions, which score Y themselves
        scores = evaluation.scores[method]
        x, deletion = deletion_curve(explainer, images, maps[method], explanation.classes, STEP)
        _, insertion = insertion_curve(explainer, images, maps[method], explanation.classes, STEP)
        np.testing.assert_array_equal(scores.deletion[0], x)
        np.testing.assert_array_equal(scores.deletion[1], deletion)
        np.testing.assert_array_equal(scores.insertion[1], insertion)
        assert scores.per_image["average_drop"].mean() == average_drop(explainer, images, maps[method],
                                                                       explanation.classes)
        assert scores.per_image["increase_in_confidence"].mean() == increase_in_confidence(
            explainer, images, maps[method], explanation.classes)


def test_without_an_explanation_y_is_scored_once_for_every_method(bundle, images, monkeypatch):
    explainer = fusioncam.Explainer(bundle, device="cpu", batch_size=16)
    explanation = explainer.explain(images, methods=METHODS)
    maps = {m: explanation.maps[m] for m in METHODS}
    counts = counted(explainer, monkeypatch)
    evaluation = evaluate_maps(explainer, images, maps, None, STEP)  # arg-max targets: Y's run classifies too
    steps = len(step_counts(SIZE * SIZE, STEP))
    assert counts == {"rows": 3 + len(METHODS) * 3 * (1 + 2 * steps), "blurs": 1}
    np.testing.assert_array_equal(evaluation.classes, explanation.classes)
    reused = evaluate_maps(explainer, images, maps, step=STEP, explanation=explanation)
    for method in METHODS:
        for metric, values in evaluation.scores[method].per_image.items():
            np.testing.assert_array_equal(reused.scores[method].per_image[metric], values, err_msg=metric)


def test_other_targets_than_the_explanations_score_y_again(bundle, images, monkeypatch):
    explainer = fusioncam.Explainer(bundle, device="cpu", batch_size=16)
    explanation = explainer.explain(images, methods="gradcam")
    counts = counted(explainer, monkeypatch)
    other = (explanation.classes + 1) % 5
    evaluate_maps(explainer, images, {"gradcam": explanation.maps["gradcam"]}, other, STEP, explanation=explanation)
    steps = len(step_counts(SIZE * SIZE, STEP))
    assert counts["rows"] == 3 + 3 * (1 + 2 * steps)


def test_explain_and_evaluate_reuses_the_explanation(bundle, images, monkeypatch):
    explainer = fusioncam.Explainer(bundle, device="cpu", batch_size=16)
    want = evaluate_maps(explainer, images, {"gradcam": explainer.explain(images, methods="gradcam").maps["gradcam"]},
                         None, STEP)
    counts = counted(explainer, monkeypatch)
    got = explain_and_evaluate(explainer, images, ["gradcam"], step=STEP)
    steps = len(step_counts(SIZE * SIZE, STEP))
    assert counts == {"rows": 3 * (1 + 2 * steps), "blurs": 1}  # Grad-CAM runs no forward; Y is not rescored
    for metric, values in want.scores["gradcam"].per_image.items():
        np.testing.assert_array_equal(got.scores["gradcam"].per_image[metric], values, err_msg=metric)

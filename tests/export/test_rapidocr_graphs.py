"""Real third-party graphs exported as shipped: rapidocr-onnxruntime 1.4.4's text-orientation classifier (PaddleOCR
MobileNetV3, opset 11) and its PP-OCRv4 DBNet detector (one-channel sigmoid map, ConvTranspose upsampling).

The bundles' in-graph gradients are checked against central finite differences of the shipped graph's part after
the target layer, run in ONNX Runtime (benchmarks/faithfulness/graph_cut_gradients.py). The graphs are not a
dependency (rapidocr-onnxruntime requires opencv-python, which clashes with opencv-python-headless): these tests skip
with the command that fetches them when they are absent."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from benchmarks.faithfulness import rapidocr_models
from benchmarks.faithfulness.graph_cut_gradients import check_directions, check_gradient, check_kinks, cut_after
from benchmarks.faithfulness.ocr_inputs import TEXT_THRESHOLD, classifier_input, detector_input, grey_photo
from benchmarks.faithfulness.rapidocr_models import CLASSIFIER, DETECTOR, ModelsMissing, model_path
from benchmarks.faithfulness.shipped_graphs import (CLASSIFIER_LAYERS, DETECTOR_LAYERS, classifier_gradient,
                                                    detector_gradient, export_classifier, export_detector,
                                                    scores_tensor, shipped_session)

# text lines of page.png at DBNet's 192 x 384 input, found by the shipped detector (prob > 0.3, a third of the
# height added around each)
LINE = (5, 100, 378, 122)
LAST_LINE = (6, 117, 171, 139)


def _shipped(name: str):
    try:
        return model_path(name)
    except ModelsMissing as missing:
        pytest.skip(str(missing))


@pytest.fixture(scope="module")
def page() -> tuple[np.ndarray, np.ndarray]:
    return detector_input(grey_photo("page"))


def _crop(page_rgb: np.ndarray, box, turned: bool = False) -> np.ndarray:
    x0, y0, x1, y1 = box
    crop = page_rgb[y0:y1, x0:x1]
    return classifier_input(np.ascontiguousarray(crop[::-1, ::-1]) if turned else crop)[1]


def test_missing_or_altered_graphs_are_named_with_the_command_that_fetches_them(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(rapidocr_models, "RAPIDOCR_WHEEL_DIR", tmp_path)
    monkeypatch.setattr(rapidocr_models, "_installed_models", lambda: None)
    with pytest.raises(ModelsMissing, match=r"pip download --no-deps rapidocr-onnxruntime==1\.4\.4"):
        model_path(CLASSIFIER)
    altered = tmp_path / "models"
    altered.mkdir()
    (altered / CLASSIFIER).write_bytes(b"not the shipped graph")
    monkeypatch.setattr(rapidocr_models, "_installed_models", lambda: altered)
    with pytest.raises(ModelsMissing, match="has SHA-256 .* not the ch_ppocr_mobile_v2.0_cls_infer.onnx"):
        model_path(CLASSIFIER)


def test_orientation_classifier_turns_its_answer_with_the_line(page) -> None:
    shipped = _shipped(CLASSIFIER)
    page_rgb, _ = page
    images = np.stack([_crop(page_rgb, LAST_LINE), _crop(page_rgb, LAST_LINE, turned=True)])
    (probabilities,) = shipped_session(shipped).run(None, {"x": images})
    assert probabilities[0, 0] > 0.99 and probabilities[1, 1] > 0.99  # labels '0' and '180'


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(DETECTOR_LAYERS))
def test_dbnet_gradient_matches_finite_differences_of_the_shipped_graph(key: str, page, tmp_path) -> None:
    """Region score of the text class over rapidocr's text pixels; every checked coordinate within 1e-3, and with
    kinks told apart (check_kinks) the smooth ones within 1e-3 and every kink within 1e-3 of a one-sided
    difference."""
    shipped = _shipped(DETECTOR)
    page_rgb, image = page
    (probability,) = shipped_session(shipped).run(None, {"x": image[None]})
    region = (probability[0, 0] > TEXT_THRESHOLD).astype(np.float32)
    assert 0.05 < region.mean() < 0.5
    layer = DETECTOR_LAYERS[key]
    result = export_detector(shipped, tmp_path / "dbnet.fcam", page_rgb.shape[:2], layer)
    assert result.bundle.manifest.num_classes == 2
    found = detector_gradient(tmp_path / "dbnet.fcam", shipped, image, region)
    assert found.forward_error < 1e-5  # the bundle's text logit is the shipped pre-sigmoid logit

    model = onnx.load(str(shipped))
    cut = cut_after(model, image.shape[1:], layer, scores_tensor(model))  # the cut reproduces the shipped logit
    import onnxruntime as ort

    (again,) = ort.InferenceSession(cut.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {cut.graph.input[0].name: image[None], cut.graph.input[1].name: found.activations[None]})
    assert np.abs(again[0, 0] * found.seed[0]).sum() > 0
    check = check_gradient(model, image, layer, scores_tensor(model), found.activations, found.gradients, found.seed)
    assert check.gradient_scale > 0
    assert check.max_relative_error <= 1e-3, check
    kinks = check_kinks(model, image, layer, scores_tensor(model), found.activations, found.gradients, found.seed)
    assert kinks.smooth >= 32 and kinks.smooth_max_relative_error <= 1e-3, kinks  # measured 56 and 62 of 64
    assert kinks.kinks_matching_one_side == kinks.kinks, kinks


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(CLASSIFIER_LAYERS))
def test_orientation_classifier_gradient_matches_differences_of_the_shipped_graph(key: str, page, tmp_path) -> None:
    """The predicted class's logit. Along the gradient's direction and random directions the central difference is
    within 1e-3 of g.v (relative to |g|). Coordinate by coordinate, at one step chosen from the measured float32
    rounding error (check_kinks), the coordinates where S is smooth within the step are within 1e-3 of the central
    difference; where S has a kink within the step the in-graph gradient must equal a one-sided difference, which
    holds within 1e-3 only where one side is free of kinks: at relu_0 and hardswish_6 many coordinates have kinks on
    both sides within any step above rounding (measured: a minority match), so the matching count is checked to be
    non-zero there and all of them at hardswish_17, and every kink within 1e-1 of a side."""
    shipped = _shipped(CLASSIFIER)
    page_rgb, _ = page
    crop = _crop(page_rgb, LINE)
    layer = CLASSIFIER_LAYERS[key]
    export_classifier(shipped, tmp_path / "orientation.fcam", layer)
    found = classifier_gradient(tmp_path / "orientation.fcam", shipped, crop)
    assert found.forward_error < 1e-5  # logits, not the shipped softmax (opset 11's rewritten Softmax)
    model = onnx.load(str(shipped))
    directions = check_directions(model, crop, layer, scores_tensor(model), found.activations, found.gradients,
                                  found.seed)
    assert directions["gradient_direction_error"] <= 1e-3, directions
    assert directions["random_direction_max_error"] <= 1e-3, directions
    check = check_gradient(model, crop, layer, scores_tensor(model), found.activations, found.gradients, found.seed)
    assert check.median_relative_error <= 1e-3, check
    assert check.largest_own_relative_error <= 1e-1, check
    kinks = check_kinks(model, crop, layer, scores_tensor(model), found.activations, found.gradients, found.seed)
    assert kinks.smooth >= 8 and kinks.rounding_error > 0, kinks  # measured 15 .. 60 of 64
    assert kinks.smooth_max_relative_error <= 1e-3, kinks
    assert kinks.kink_one_sided_max_error <= 1e-1, kinks
    if key == "last":
        assert kinks.kinks_matching_one_side == kinks.kinks, kinks
    else:
        assert kinks.kinks_matching_one_side >= 1, kinks

"""Faithfulness metrics on a linear classifier whose probabilities are known in closed form, computed here by hand."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import fusioncam
from fusioncam.errors import InputError
from fusioncam.kernels import blend_numpy, numpy_kernels
from fusioncam.metrics import (average_drop, deletion_auc, deletion_curve, increase_in_confidence, insertion_auc,
                               insertion_curve)
from fusioncam.metrics.perturbation_curves import pixel_ranks
from tests.support.kernel_inventory import KERNELS_DIR, public_functions

# logits = WEIGHTS @ (per-channel mean of x over the pixels) + BIAS: the model the ONNX graph below computes.
WEIGHTS = np.array([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0], [-1.5, 3.0, 0.5]])
BIAS = np.array([0.3, 0.0, -0.2])


def linear_classifier(height: int, width: int) -> onnx.ModelProto:
    """x [N,3,H,W] -> 1x1 identity Conv ('feat', the target layer) -> GlobalAveragePool -> Gemm -> logits [N,3]."""
    inits = [numpy_helper.from_array(np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1), "conv_w"),
             numpy_helper.from_array(WEIGHTS.astype(np.float32), "fc_w"),
             numpy_helper.from_array(BIAS.astype(np.float32), "fc_b")]
    nodes = [helper.make_node("Conv", ["x", "conv_w"], ["feat"], name="conv"),
             helper.make_node("GlobalAveragePool", ["feat"], ["pool"], name="gap"),
             helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1, name="fc")]
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, height, width])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def probability(x: np.ndarray, target: int) -> float:
    """The model's softmax probability of `target` for one image x [3,H,W], in float64."""
    logits = WEIGHTS @ x.astype(np.float64).mean(axis=(1, 2)) + BIAS
    exp = np.exp(logits - logits.max())
    return float(exp[target] / exp.sum())


def blurred(x: np.ndarray) -> np.ndarray:
    """The insertion baseline straight from OpenCV: each channel through GaussianBlur 51x51, sigma 50."""
    return np.stack([cv2.GaussianBlur(channel, (51, 51), 50) for channel in x.astype(np.float32)])


def expected_curves(images, maps, targets, step, order=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, deletion p, insertion p) by hand: one pixel at a time, in the given order (default: descending map)."""
    n, _, height, width = images.shape
    counts = list(range(0, height * width, step)) + [height * width]
    deletion, insertion = np.zeros((n, len(counts))), np.zeros((n, len(counts)))
    for i in range(n):
        ranking = order if order is not None else sorted(range(height * width), key=lambda k: -maps[i].reshape(-1)[k])
        for s, count in enumerate(counts):
            removed = images[i].copy()
            revealed = blurred(images[i])
            for pixel in ranking[:count]:
                row, col = divmod(pixel, width)
                removed[:, row, col] = 0.0
                revealed[:, row, col] = images[i][:, row, col]
            deletion[i, s] = probability(removed, targets[i])
            insertion[i, s] = probability(revealed, targets[i])
    return np.array(counts) / (height * width), deletion, insertion


def trapezoid(x: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Area under each row of p by the trapezoid rule, written out."""
    return np.array([sum((row[k] + row[k + 1]) / 2 * (x[k + 1] - x[k]) for k in range(len(x) - 1)) for row in p])


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[tuple[int, int], Path]:
    """Bundles of the linear classifier at 2x3 and 4x5 pixels."""
    folder = tmp_path_factory.mktemp("linear")
    made = {}
    for size in ((2, 3), (4, 5)):
        path = folder / f"linear_{size[0]}x{size[1]}.onnx"
        onnx.save(linear_classifier(*size), str(path))
        fusioncam.export_onnx(path, folder / f"linear_{size[0]}x{size[1]}.bundle", "feat")
        made[size] = folder / f"linear_{size[0]}x{size[1]}.bundle"
    return made


def explainer(bundles, size: tuple[int, int], batch_size: int = 5) -> fusioncam.Explainer:
    return fusioncam.Explainer(bundles[size], device="cpu", batch_size=batch_size)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(3)


# ---------------------------------------------------------------- ranking and steps


def test_ties_are_broken_in_row_major_order(bundles, rng):
    # Pixels 1 and 3 tie at 0.9, pixels 0, 2 and 5 at 0.5: the order is 1, 3, 0, 2, 5, 4.
    maps = np.array([[[0.5, 0.9, 0.5], [0.9, 0.1, 0.5]]], dtype=np.float32)
    order = [1, 3, 0, 2, 5, 4]
    np.testing.assert_array_equal(pixel_ranks(np, maps), [[2, 0, 3, 1, 5, 4]])
    images = rng.uniform(-2, 2, (1, 3, 2, 3)).astype(np.float32)
    model = explainer(bundles, (2, 3))
    want_x, want_deletion, want_insertion = expected_curves(images, maps, [1], 4, order)  # 4 does not divide 6
    x, deletion = deletion_curve(model, images, maps, 1, step=4)
    _, insertion = insertion_curve(model, images, maps, 1, step=4)
    np.testing.assert_allclose(x, [0, 4 / 6, 1])
    np.testing.assert_allclose(x, want_x)
    np.testing.assert_allclose(deletion, want_deletion, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(insertion, want_insertion, rtol=1e-5, atol=1e-7)
    # The order matters: a reversed tie-break would give other probabilities.
    _, other, _ = expected_curves(images, maps, [1], 4, [3, 1, 5, 2, 0, 4])
    assert np.abs(other - want_deletion).max() > 1e-3
    np.testing.assert_allclose(deletion_auc(model, images, maps, 1, step=4), trapezoid(want_x, want_deletion), rtol=1e-5)
    np.testing.assert_allclose(insertion_auc(model, images, maps, 1, step=4), trapezoid(want_x, want_insertion), rtol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_curves_of_several_images_with_different_targets(bundles, rng, batch_size):
    images = rng.uniform(-2, 2, (3, 3, 4, 5)).astype(np.float32)
    maps = rng.random((3, 4, 5)).astype(np.float32)
    targets = [1, 2, 0]
    model = explainer(bundles, (4, 5), batch_size)
    calls = []
    score_rows = model.backend.score_rows
    model.backend.score_rows = lambda count, *inputs: calls.append(count) or score_rows(count, *inputs)
    want_x, want_deletion, want_insertion = expected_curves(images, maps, targets, 3)  # 8 steps: 0, 3, ..., 18, 20

    x, deletion = deletion_curve(model, images, maps, targets, step=3)
    assert calls == [batch_size] * (24 // batch_size) + ([24 % batch_size] if 24 % batch_size else [])
    _, insertion = insertion_curve(model, images, maps, targets, step=3)
    np.testing.assert_allclose(x, want_x)
    assert deletion.shape == insertion.shape == (3, 8)
    np.testing.assert_allclose(deletion, want_deletion, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(insertion, want_insertion, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(deletion_auc(model, images, maps, targets, step=3), trapezoid(want_x, want_deletion), rtol=1e-5)
    np.testing.assert_allclose(insertion_auc(model, images, maps, targets, step=3), trapezoid(want_x, want_insertion), rtol=1e-5)


def test_deletion_ends_at_the_zero_image_and_insertion_at_the_image(bundles, rng):
    images = rng.uniform(-2, 2, (2, 3, 4, 5)).astype(np.float32)
    maps = rng.random((2, 4, 5)).astype(np.float32)
    model = explainer(bundles, (4, 5))
    _, deletion = deletion_curve(model, images, maps, 2, step=7)
    _, insertion = insertion_curve(model, images, maps, 2, step=7)
    at_zero = np.exp(BIAS - BIAS.max())[2] / np.exp(BIAS - BIAS.max()).sum()  # softmax(BIAS)[2]
    np.testing.assert_allclose(deletion[:, -1], at_zero, rtol=1e-6)
    np.testing.assert_allclose(deletion[:, 0], [probability(x, 2) for x in images], rtol=1e-6)
    np.testing.assert_allclose(insertion[:, -1], [probability(x, 2) for x in images], rtol=1e-6)
    np.testing.assert_allclose(insertion[:, 0], [probability(blurred(x), 2) for x in images], rtol=1e-6)


def test_default_target_is_the_arg_max_of_the_unperturbed_image(bundles, rng):
    images = rng.uniform(-2, 2, (4, 3, 4, 5)).astype(np.float32)
    maps = rng.random((4, 4, 5)).astype(np.float32)
    top = [int(np.argmax(WEIGHTS @ x.mean(axis=(1, 2)) + BIAS)) for x in images]
    assert len(set(top)) > 1, "the test needs images with different top classes"
    model = explainer(bundles, (4, 5))
    np.testing.assert_array_equal(deletion_auc(model, images, maps, step=3), deletion_auc(model, images, maps, top, step=3))
    np.testing.assert_array_equal(insertion_auc(model, images, maps, step=3), insertion_auc(model, images, maps, top, step=3))
    assert average_drop(model, images, maps) == average_drop(model, images, maps, top)


def test_constant_image_blurs_to_itself_so_insertion_is_flat(bundles):
    images = np.full((1, 3, 4, 5), 0.7, dtype=np.float32)
    images[0, 1] = -0.4
    np.testing.assert_allclose(numpy_kernels.gaussian_blurred_images(images), images, rtol=0, atol=1e-6)
    maps = np.arange(20, dtype=np.float32).reshape(1, 4, 5)
    model = explainer(bundles, (4, 5))
    _, insertion = insertion_curve(model, images, maps, 1, step=6)
    np.testing.assert_allclose(insertion, probability(images[0], 1), rtol=1e-6)
    np.testing.assert_allclose(insertion_auc(model, images, maps, 1, step=6), probability(images[0], 1), rtol=1e-6)


# ---------------------------------------------------------------- average drop, increase in confidence


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_average_drop_and_increase_in_confidence(bundles, rng, batch_size):
    images = rng.uniform(-2, 2, (5, 3, 4, 5)).astype(np.float32)
    images[0] = -np.abs(images[0])  # class 1's logit rises when a negative image is dimmed: O > Y
    maps = rng.random((5, 4, 5)).astype(np.float32)
    targets = [1, 1, 2, 0, 2]
    model = explainer(bundles, (4, 5), batch_size)
    y = np.array([probability(x, t) for x, t in zip(images, targets)])
    o = np.array([probability(x * m, t) for x, m, t in zip(images, maps, targets)])
    assert 0 < (o > y).sum() < len(y), "the test needs images that gain and images that lose confidence"
    want_drop = 100 * np.mean(np.maximum(0, y - o) / y)
    want_increase = 100 * np.mean(o > y)
    assert average_drop(model, images, maps, targets) == pytest.approx(want_drop, rel=1e-5)
    assert increase_in_confidence(model, images, maps, targets) == pytest.approx(want_increase, abs=1e-12)


def test_one_target_for_all_images(bundles, rng):
    images = rng.uniform(-2, 2, (3, 3, 4, 5)).astype(np.float32)
    maps = rng.random((3, 4, 5)).astype(np.float32)
    model = explainer(bundles, (4, 5))
    y = np.array([probability(x, 2) for x in images])
    o = np.array([probability(x * m, 2) for x, m in zip(images, maps)])
    assert average_drop(model, images, maps, 2) == pytest.approx(100 * np.mean(np.maximum(0, y - o) / y), rel=1e-5)
    assert increase_in_confidence(model, images, maps, 2) == pytest.approx(100 * np.mean(o > y), abs=1e-12)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("maps_shape", [(2, 4), (2, 4, 6), (3, 4, 5), (2, 5, 4), (2, 1, 4, 5)])
def test_maps_of_the_wrong_shape(bundles, rng, maps_shape):
    images = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    model = explainer(bundles, (4, 5))
    for metric in (average_drop, increase_in_confidence, deletion_auc, insertion_auc):
        with pytest.raises(InputError, match=r"maps have shape .*expected one \[H, W\] map per image, \[2, 4, 5\]"):
            metric(model, images, np.zeros(maps_shape, dtype=np.float32))


def test_nan_in_a_map(bundles, rng):
    images = rng.standard_normal((3, 3, 4, 5)).astype(np.float32)
    maps = rng.random((3, 4, 5)).astype(np.float32)
    maps[1, 2, 3] = np.nan
    model = explainer(bundles, (4, 5))
    for metric in (average_drop, increase_in_confidence, deletion_auc, insertion_auc):
        with pytest.raises(InputError, match="maps of images 1 hold NaN"):
            metric(model, images, maps)


@pytest.mark.parametrize("step,message", [(0, "between 1 and the image's 20 pixels"), (21, "between 1 and the image's 20 pixels"),
                                          (-3, "between 1"), (2.5, "must be an int"), (True, "must be an int")])
def test_bad_step(bundles, rng, step, message):
    images = rng.standard_normal((1, 3, 4, 5)).astype(np.float32)
    maps = rng.random((1, 4, 5)).astype(np.float32)
    model = explainer(bundles, (4, 5))
    for metric in (deletion_auc, insertion_auc, deletion_curve, insertion_curve):
        with pytest.raises(InputError, match=message):
            metric(model, images, maps, step=step)


def test_step_of_all_pixels_is_one_trapezoid(bundles, rng):
    images = rng.standard_normal((1, 3, 4, 5)).astype(np.float32)
    maps = rng.random((1, 4, 5)).astype(np.float32)
    x, p = deletion_curve(explainer(bundles, (4, 5)), images, maps, 0, step=20)
    np.testing.assert_allclose(x, [0, 1])
    np.testing.assert_allclose(p[0], [probability(images[0], 0), probability(np.zeros_like(images[0]), 0)], rtol=1e-6)


@pytest.mark.parametrize("images,message", [
    (np.zeros((2, 3, 4, 5), dtype=np.uint8), "dtype uint8"),
    (np.zeros((3, 4, 5), dtype=np.float32), "expected a batch"),
    (np.zeros((2, 3, 5, 4), dtype=np.float32), "5x4 but the bundle was exported for 4x5"),
    (np.full((2, 3, 4, 5), np.nan, dtype=np.float32), "images 0, 1 hold NaN"),
])
def test_bad_images(bundles, images, message):
    model = explainer(bundles, (4, 5))
    for metric in (average_drop, deletion_auc, insertion_auc):
        with pytest.raises(InputError, match=message):
            metric(model, images, np.zeros((2, 4, 5), dtype=np.float32))


def test_bad_targets(bundles, rng):
    images = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    maps = rng.random((2, 4, 5)).astype(np.float32)
    model = explainer(bundles, (4, 5))
    with pytest.raises(InputError, match="out of range"):
        deletion_auc(model, images, maps, 3, step=5)
    with pytest.raises(InputError, match="3 targets given for 2 images"):
        average_drop(model, images, maps, [0, 1, 2])


# ---------------------------------------------------------------- kernels


@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (1, 3, 60, 80), (1, 1, 1, 5), (1, 2, 224, 224)])
def test_insertion_baseline_is_opencv_separable_reflect_101(rng, shape):
    """The blur kernel insertion uses, against a plain separable filter with reflect-101 indices written out."""
    images = rng.standard_normal(shape).astype(np.float32)
    weights = cv2.getGaussianKernel(51, 50, cv2.CV_32F)[:, 0].astype(np.float64)

    def reflect_101(p: int, n: int) -> int:
        while n > 1 and not 0 <= p < n:
            p = -p if p < 0 else 2 * (n - 1) - p
        return 0 if n == 1 else p

    height, width = shape[-2:]
    cols = np.array([[reflect_101(x + k - 25, width) for k in range(51)] for x in range(width)])
    rows = np.array([[reflect_101(y + k - 25, height) for k in range(51)] for y in range(height)])
    along_x = (images[..., cols] * weights).sum(-1)
    want = (along_x[..., rows, :] * weights[:, None]).sum(-2)
    got = numpy_kernels.gaussian_blurred_images(images)
    assert got.dtype == np.float32 and got.shape == shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert np.abs(got - images).max() > 0.1  # it did blur


def test_write_blended_inputs(rng):
    images = rng.standard_normal((3, 3, 4, 5)).astype(np.float32)
    baselines = rng.standard_normal((3, 3, 4, 5)).astype(np.float32)
    masks = (rng.random((4, 4, 5)) > 0.5).astype(np.float32)
    masks[3] = 0.25
    image_index = np.array([2, 0, 2, 1])
    out = np.full((6, 3, 4, 5), 99, dtype=np.float32)
    numpy_kernels.write_blended_inputs(images, baselines, masks, image_index, out, 1)
    want = masks[:, None] * images[image_index] + (1 - masks[:, None]) * baselines[image_index]
    np.testing.assert_allclose(out[1:5], want, rtol=1e-6, atol=1e-7)
    assert (out[0] == 99).all() and (out[5] == 99).all()
    with pytest.raises(ValueError, match="do not fit"):
        numpy_kernels.write_blended_inputs(images, baselines, masks, image_index, out, 3)


def test_kernel_set_holds_the_new_kernels():
    assert numpy_kernels.write_blended_inputs is blend_numpy.write_blended_inputs


def test_blend_cuda_module_mirrors_numpy_module():
    """Same names, arguments and docstrings in blend_numpy.py / blend_cuda.py (read from source: no CuPy needed)."""
    assert public_functions(KERNELS_DIR / "blend_numpy.py") == public_functions(KERNELS_DIR / "blend_cuda.py")

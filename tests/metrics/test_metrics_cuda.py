"""The metrics' GPU path against the CPU path, and the CuPy blend and blur kernels against NumPy/OpenCV (needs a GPU)."""

from __future__ import annotations

import numpy as np
import pytest

from fusioncam.runtime.device_select import cuda_unavailable_reason

_REASON = cuda_unavailable_reason()
if _REASON:
    pytest.skip(f"the GPU metrics need CuPy, a CUDA GPU and onnxruntime's CUDA provider: {_REASON}",
                allow_module_level=True)

import cupy as cp  # noqa: E402

import fusioncam  # noqa: E402
from fusioncam.kernels import cuda_kernels, numpy_kernels as CPU  # noqa: E402
from fusioncam.metrics import (average_drop, deletion_auc, deletion_curve, increase_in_confidence,  # noqa: E402
                               insertion_auc, insertion_curve)
from fusioncam.metrics.perturbation_curves import pixel_ranks  # noqa: E402
from tests.support.tiny_models import save, tiny_classifier  # noqa: E402

pytestmark = pytest.mark.gpu

GPU = cuda_kernels()
SIZE = 16
STEP = 10  # 256 pixels: 27 steps, the last one shorter


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_gpu")
    model = save(tiny_classifier(size=SIZE, classes=5, seed=2), folder / "tiny.onnx")
    fusioncam.export_onnx(model, folder / "tiny.bundle", "feat")
    return folder / "tiny.bundle"


@pytest.fixture(scope="module")
def cases():
    """Four images, maps with many ties (quantised to quarters), and mixed targets (-1: the arg-max)."""
    rng = np.random.default_rng(11)
    images = rng.uniform(-2, 2, (4, 3, SIZE, SIZE)).astype(np.float32)
    maps = (np.round(rng.random((4, SIZE, SIZE)) * 4) / 4).astype(np.float32)
    return images, maps, [-1, 0, 3, -1]


@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (1, 3, 224, 224), (1, 1, 1, 5), (2, 3, 60, 80), (1, 3, 224, 160)])
def test_insertion_blur_matches_opencv(shape):
    """The insertion baseline (the kernel Group-CAM shares) at the sizes the metrics meet."""
    images = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    got = GPU.gaussian_blurred_images(cp.asarray(images))
    assert isinstance(got, cp.ndarray) and got.dtype == cp.float32 and got.shape == shape
    np.testing.assert_allclose(cp.asnumpy(got), CPU.gaussian_blurred_images(images), rtol=0, atol=1e-5)


def test_write_blended_inputs_matches_numpy():
    rng = np.random.default_rng(2)
    images = rng.standard_normal((3, 3, 20, 30)).astype(np.float32)
    baselines = rng.standard_normal((3, 3, 20, 30)).astype(np.float32)
    masks = rng.random((5, 20, 30)).astype(np.float32)
    masks[:3] = masks[:3] > 0.5
    image_index = np.array([2, 0, 1, 2, 0])
    want = np.full((7, 3, 20, 30), 5, dtype=np.float32)
    CPU.write_blended_inputs(images, baselines, masks, image_index, want, 1)
    got = cp.full((7, 3, 20, 30), 5, dtype=cp.float32)
    GPU.write_blended_inputs(cp.asarray(images), cp.asarray(baselines), cp.asarray(masks), cp.asarray(image_index), got, 1)
    np.testing.assert_allclose(cp.asnumpy(got), want, rtol=0, atol=1e-5)


def test_pixel_ranks_on_the_gpu_break_ties_in_row_major_order(cases):
    _, maps, _ = cases
    np.testing.assert_array_equal(cp.asnumpy(pixel_ranks(cp, cp.asarray(maps))), pixel_ranks(np, maps))


@pytest.mark.parametrize("as_cupy", [False, True])
def test_every_metric_on_the_gpu_equals_the_cpu(bundle, cases, as_cupy):
    images, maps, targets = cases
    cpu = fusioncam.Explainer(bundle, device="cpu", batch_size=7)
    gpu = fusioncam.Explainer(bundle, device="cuda", batch_size=7)
    gpu_images, gpu_maps = (cp.asarray(images), cp.asarray(maps)) if as_cupy else (images, maps)
    for metric in (average_drop, increase_in_confidence):
        assert metric(gpu, gpu_images, gpu_maps, targets) == pytest.approx(metric(cpu, images, maps, targets), abs=1e-4)
    for metric in (deletion_auc, insertion_auc):
        np.testing.assert_allclose(metric(gpu, gpu_images, gpu_maps, targets, step=STEP),
                                   metric(cpu, images, maps, targets, step=STEP), rtol=0, atol=1e-4)
    for curve in (deletion_curve, insertion_curve):
        gpu_x, gpu_p = curve(gpu, gpu_images, gpu_maps, targets, step=STEP)
        cpu_x, cpu_p = curve(cpu, images, maps, targets, step=STEP)
        np.testing.assert_array_equal(gpu_x, cpu_x)
        np.testing.assert_allclose(gpu_p, cpu_p, rtol=0, atol=1e-4)
        assert np.ptp(cpu_p) > 1e-2  # the curves move: the comparison is not between constants

"""Segmentation bundles on the GPU: the same task-agnostic CUDA backend and CuPy kernels as classifiers, against the
CPU path on the same bundle (maps, region probabilities, region weights, betas; fast mode, float16, batch sizes with
padded scorer runs, predictions). Marked gpu: skipped with the reason where no CUDA GPU can be used."""

from __future__ import annotations

import numpy as np
import pytest

import fusioncam
from tests.support.segmentation_models import METHODS, SIZE, lraspp, random_images

pytestmark = pytest.mark.gpu

TARGETS = [None, 2, 1]


def _regions():
    mask = np.zeros(SIZE, dtype=bool)
    mask[8:30, 12:40] = True
    return ["predicted", (10, 4, 44, 40), mask]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    path = tmp_path_factory.mktemp("seg_cuda") / "lraspp.fcam"
    fusioncam.export_torch_segmentation(lraspp(), "backbone.12", path, input_size=SIZE, fp16_scorer=True)
    return path


def _explain(bundle, device: str, batch_size: int, **options):
    with fusioncam.Explainer(bundle, device=device, batch_size=batch_size, **options) as explainer:
        return explainer.explain(random_images(3, seed=4), targets=TARGETS, regions=_regions(), methods=METHODS)


def _same(gpu, cpu, map_atol: float = 1e-4) -> None:
    assert type(gpu).__name__ == "SegmentationExplanation" and gpu.device.startswith("cuda")
    np.testing.assert_array_equal(gpu.classes, cpu.classes)
    np.testing.assert_allclose(gpu.region_weights, cpu.region_weights, atol=1e-6)
    np.testing.assert_allclose(gpu.probabilities, cpu.probabilities, atol=1e-5)
    for method in METHODS:
        np.testing.assert_allclose(gpu.maps[method], cpu.maps[method], atol=map_atol, err_msg=method)
    for key in cpu.betas:
        np.testing.assert_allclose(gpu.betas[key], cpu.betas[key], atol=1e-5, err_msg=key)
    np.testing.assert_allclose(gpu.group_scores, cpu.group_scores, atol=1e-4)
    assert gpu.forwards_run.tolist() == cpu.forwards_run.tolist()


def test_every_method_on_the_gpu_matches_the_cpu(bundle) -> None:
    _same(_explain(bundle, "cuda", 64), _explain(bundle, "cpu", 64))


def test_padded_scorer_runs_do_not_change_the_maps(bundle) -> None:
    """Batch 7 cuts the rows into runs padded to powers of two (stale padding rows, stale row inputs)."""
    small, large = _explain(bundle, "cuda", 7), _explain(bundle, "cuda", 256)
    for method in METHODS:
        np.testing.assert_allclose(small.maps[method], large.maps[method], atol=1e-5, err_msg=method)


def test_fast_mode_on_the_gpu_matches_the_cpu(bundle) -> None:
    _same(_explain(bundle, "cuda", 64, max_channels=9), _explain(bundle, "cpu", 64, max_channels=9))


def test_float16_scorer_on_the_gpu_stays_close_to_float32(bundle) -> None:
    half, full = _explain(bundle, "cuda", 64, precision="fp16"), _explain(bundle, "cuda", 64)
    np.testing.assert_array_equal(half.classes, full.classes)
    for method in ("gradcam", "scorecam", "fusion"):
        assert np.abs(half.maps[method] - full.maps[method]).mean() < 0.02, method


def test_predictions_on_the_gpu_match_the_cpu(bundle) -> None:
    images = random_images(3, seed=9)
    with fusioncam.Explainer(bundle, device="cuda") as gpu, fusioncam.Explainer(bundle, device="cpu") as cpu:
        got, want = gpu.predict(images), cpu.predict(images)
    np.testing.assert_allclose(got.logits, want.logits, atol=1e-4)
    assert (got.classes == want.classes).mean() > 0.99  # per pixel: ties within rounding may differ

"""ROAD on the GPU (imputation on the host, the imputed images scored on the device) against the CPU path (needs a
GPU)."""

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
from fusioncam.metrics.evaluation import evaluate_maps  # noqa: E402
from fusioncam.metrics.road import road_scores  # noqa: E402
from tests.support.tiny_models import tiny_bundle_at  # noqa: E402

pytestmark = pytest.mark.gpu

SIZE = 16


def test_road_on_the_gpu_equals_the_cpu(tmp_path):
    bundle = tiny_bundle_at(tmp_path, size=SIZE, seed=2)
    rng = np.random.default_rng(3)
    images = rng.standard_normal((5, 3, SIZE, SIZE)).astype(np.float32)
    maps = rng.random((5, SIZE, SIZE)).astype(np.float32)
    with fusioncam.Explainer(bundle, device="cpu", batch_size=7) as cpu:
        want = road_scores(cpu, images, maps, percentiles=(20, 60))
    with fusioncam.Explainer(bundle, device="cuda", batch_size=7) as gpu:
        got = road_scores(gpu, cp.asarray(images), cp.asarray(maps), percentiles=(20, 60))
        evaluation = evaluate_maps(gpu, images, {"m": maps}, step=64, road_percentiles=(20, 60))
    for name in ("morf", "lerf", "combined"):
        assert np.abs(getattr(got, name) - getattr(want, name)).max() < 1e-5, name
        assert np.abs(evaluation.scores["m"].per_image[f"road_{name}"] - getattr(want, name)).max() < 1e-5, name

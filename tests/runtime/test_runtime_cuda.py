"""The CUDA backend (ORT CUDA provider + CuPy kernels) against the CPU backend on the same bundle."""

from __future__ import annotations

import numpy as np
import pytest

import fusioncam
from fusioncam.runtime.device_select import cuda_unavailable_reason

REASON = cuda_unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"needs a CUDA GPU: {REASON}")


@pytest.fixture(scope="module")
def resnet_bundle(tmp_path_factory):
    """A seeded random ResNet-50 at 224x224, `layer4` (K=2048): the GPU benchmark's model."""
    from tests.support.torch_reference import sample_model

    out = tmp_path_factory.mktemp("rn50") / "resnet50.fcam"
    fusioncam.export_torch(sample_model("resnet50", seed=0), "layer4", out)
    return out


def test_cuda_equals_cpu_on_resnet50(resnet_bundle):
    images = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    methods = ("gradcam", "scorecam", "fusion")
    gpu = fusioncam.Explainer(resnet_bundle, device="cuda", batch_size=256).explain(images, methods=methods)
    cpu = fusioncam.Explainer(resnet_bundle, device="cpu", batch_size=256).explain(images, methods=methods)
    np.testing.assert_array_equal(gpu.classes, cpu.classes)
    for key in ("fusion", "gradcam", "denoised", "scorecam", "combined"):
        np.testing.assert_allclose(getattr(gpu, key), getattr(cpu, key), atol=1e-3, rtol=0, err_msg=key)
    np.testing.assert_array_equal(gpu.forwards_skipped, cpu.forwards_skipped)


def test_cuda_maps_equal_cpu_maps(efficientnet_bundle, sample_batch, efficientnet_explanation):
    gpu = fusioncam.Explainer(efficientnet_bundle, device="cuda", batch_size=256).explain(sample_batch[1])
    cpu = efficientnet_explanation
    np.testing.assert_array_equal(gpu.classes, cpu.classes)
    for key in ("fusion", "gradcam", "denoised", "scorecam", "combined"):
        np.testing.assert_allclose(getattr(gpu, key), getattr(cpu, key), atol=1e-3, rtol=0, err_msg=key)
    for key in cpu.betas:
        np.testing.assert_allclose(gpu.betas[key], cpu.betas[key], atol=1e-3, rtol=0, err_msg=key)
    np.testing.assert_array_equal(gpu.forwards_skipped, cpu.forwards_skipped)


def test_cuda_accepts_cupy_images_and_batch_sizes_that_do_not_divide_k(efficientnet_bundle, sample_batch):
    import cupy

    images = sample_batch[1][:2]
    reference = fusioncam.Explainer(efficientnet_bundle, device="cuda", batch_size=256).explain(images)
    odd = fusioncam.Explainer(efficientnet_bundle, device="cuda", batch_size=37).explain(cupy.asarray(images))
    for key in ("fusion", "scorecam"):
        np.testing.assert_allclose(getattr(odd, key), getattr(reference, key), atol=1e-5, rtol=0, err_msg=key)


def test_scorer_buffers_are_sized_by_batch_not_by_k(resnet_bundle):
    explainer = fusioncam.Explainer(resnet_bundle, device="cuda", batch_size=64)
    assert explainer.backend.input_buffer().shape == (64, 3, 224, 224)


def test_remainder_runs_use_few_bound_shapes(resnet_bundle, sample_batch):
    """The remainder is cut into power-of-two runs (test_cuda_equals_cpu_on_resnet50 checks their maps against
    the CPU); another batch size, so other padding, must give the same maps."""
    images = sample_batch[1][:1]
    gpu = fusioncam.Explainer(resnet_bundle, device="cuda", batch_size=256)
    got = gpu.explain(images)
    assert set(gpu.backend._scorer_bindings) <= {8, 16, 32, 64, 128, 256}
    assert 8 in gpu.backend._scorer_bindings  # Fusion-CAM's 2-row and 1-row probe rounds
    other = fusioncam.Explainer(resnet_bundle, device="cuda", batch_size=100).explain(images)
    for key in ("fusion", "scorecam"):
        np.testing.assert_allclose(getattr(got, key), getattr(other, key), atol=1e-4, rtol=0, err_msg=key)


def test_unknown_cuda_option_is_a_clear_error(resnet_bundle):
    with pytest.raises(fusioncam.errors.DeviceError, match="no_such_option"):
        fusioncam.Explainer(resnet_bundle, device="cuda", cuda_options={"no_such_option": "1"})


def test_nhwc_option_gives_the_same_maps(resnet_bundle, sample_batch):
    images = sample_batch[1][:1]
    plain = fusioncam.Explainer(resnet_bundle, device="cuda").explain(images)
    nhwc = fusioncam.Explainer(resnet_bundle, device="cuda", cuda_options={"prefer_nhwc": "1"}).explain(images)
    np.testing.assert_allclose(nhwc.fusion, plain.fusion, atol=1e-3, rtol=0)


def test_warm_up_binds_every_run_size(resnet_bundle):
    from fusioncam.runtime.batch_plan import padded_run_sizes

    explainer = fusioncam.Explainer(resnet_bundle, device="cuda", batch_size=256).warm_up()
    assert set(explainer.backend._scorer_bindings) == set(padded_run_sizes(256))

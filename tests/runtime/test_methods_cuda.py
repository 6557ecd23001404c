"""The methods' CuPy kernels and the GPU Explainer against the CPU path (skipped without a usable GPU), and the
numpy/cuda pairs' matching signatures and docstrings (read from source: runs everywhere)."""

from __future__ import annotations


import numpy as np
import pytest
import torch

import fusioncam
from fusioncam.kernels import numpy_kernels as CPU
from fusioncam.kernels.array_math import channel_percentiles
from fusioncam.runtime.device_select import cuda_unavailable_reason
from fusioncam.runtime.methods import METHODS
from tests.support.kernel_inventory import KERNELS_DIR, public_functions
from tests.support.torch_reference import sample_model

NO_GPU = cuda_unavailable_reason()
needs_gpu = pytest.mark.skipif(NO_GPU is not None, reason=f"no usable CUDA GPU: {NO_GPU}")


@pytest.mark.parametrize("concern", ["channel_weights", "gaussian_blur"])
def test_cuda_module_mirrors_numpy_module(concern):
    """Same names, arguments and docstrings in each *_numpy.py / *_cuda.py pair."""
    assert public_functions(KERNELS_DIR / f"{concern}_numpy.py") == public_functions(KERNELS_DIR / f"{concern}_cuda.py")


@pytest.fixture
def gpu():
    import cupy as cp

    from fusioncam.kernels import cuda_kernels

    return cp, cuda_kernels()


def same(cp, gpu_result, cpu_result, atol: float = 1e-6) -> None:
    """The GPU result equals the CPU one within 1e-6 relative (and `atol` absolute), same dtype and shape."""
    assert isinstance(gpu_result, cp.ndarray)
    host = cp.asnumpy(gpu_result)
    assert host.dtype == np.asarray(cpu_result).dtype and host.shape == np.asarray(cpu_result).shape
    np.testing.assert_allclose(host, cpu_result, rtol=1e-6, atol=atol)


def _acts_grads(rng, n=3, k=70, hw=(7, 7)):
    acts = rng.standard_normal((n, k, *hw)).astype(np.float32)
    grads = (rng.standard_normal((n, k, *hw)) * 1e-3).astype(np.float32)
    acts[0, 1] = 0.0  # constant channel
    grads[0, 2] = 0.0  # no gradient: Grad-CAM++'s 0/0 and Union-CAM's empty channel
    grads[1, 3] = np.round(grads[1, 3] * 1e3) / 1e3  # ties at the percentile
    return acts, grads


@needs_gpu
def test_gradient_weights_and_union_map(gpu):
    cp, GPU = gpu
    acts, grads = _acts_grads(np.random.default_rng(0))
    a, g = cp.asarray(acts), cp.asarray(grads)
    same(cp, GPU.gradcam_weights(g), CPU.gradcam_weights(grads), atol=1e-12)
    same(cp, GPU.gradcam_plus_plus_weights(a, g), CPU.gradcam_plus_plus_weights(acts, grads), atol=1e-9)
    same(cp, GPU.xgradcam_weights(a, g), CPU.xgradcam_weights(acts, grads), atol=1e-9)
    for theta in (0.0, 10.0, 50.0, 100.0):
        # array_math.channel_percentiles: one function over NumPy and CuPy (not a KernelSet member)
        assert np.array_equal(cp.asnumpy(channel_percentiles(g, theta)), channel_percentiles(grads, theta))
        same(cp, GPU.union_gradient_map(a, g, theta), CPU.union_gradient_map(acts, grads, theta), atol=1e-6)
    weights = CPU.gradcam_weights(grads)
    for groups in (32, 7):
        same(cp, GPU.group_activation_maps(a, cp.asarray(weights), groups),
             CPU.group_activation_maps(acts, weights, groups), atol=1e-7)


@needs_gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("low_hw,out_hw", [((7, 7), (224, 224)), ((2, 3), (17, 11))])
def test_group_blends_and_weighted_masks(gpu, dtype, low_hw, out_hw):
    cp, GPU = gpu
    rng = np.random.default_rng(1)
    images, blurred = rng.standard_normal((2, 2, 3, *out_hw)).astype(np.float32)
    group_maps = np.maximum(rng.standard_normal((2, 5, *low_hw)), 0).astype(np.float32)
    group_maps[1, 2] = 0.0  # constant group: M = 0
    mins, maxs = CPU.upsampled_min_max(group_maps, out_hw)
    image_index = np.array([1, 0, 1, 0, 1], dtype=np.int64)
    group_index = np.array([2, 4, -1, 0, 3], dtype=np.int64)
    cpu_out = np.full((8, 3, *out_hw), 9.0, dtype=dtype)
    gpu_out = cp.asarray(cpu_out)
    CPU.write_group_blended_inputs(images, blurred, group_maps, mins, maxs, image_index, group_index, cpu_out, 2)
    GPU.write_group_blended_inputs(*(cp.asarray(x) for x in (images, blurred, group_maps, mins, maxs, image_index,
                                                              group_index)), gpu_out, 2)
    host = cp.asnumpy(gpu_out)
    if dtype == np.float16:  # the same fp16 value, or one ulp apart
        assert np.all(np.abs(host.astype(np.float32) - cpu_out.astype(np.float32)) <= np.spacing(np.abs(cpu_out)))
    else:
        np.testing.assert_allclose(host, cpu_out, rtol=1e-6, atol=1e-6 * np.abs(images).max())
    assert np.all(host[:2] == 9.0) and np.all(host[7:] == 9.0)
    scores = rng.random((2, 5))
    scores[0, 1] = 0.0
    same(cp, GPU.weighted_group_masks(*(cp.asarray(x) for x in (group_maps, mins, maxs, scores)), out_hw),
         CPU.weighted_group_masks(group_maps, mins, maxs, scores, out_hw), atol=1e-6)


@needs_gpu
@pytest.mark.parametrize("hw", [(224, 224), (64, 64), (16, 16), (5, 7), (1, 9)])
def test_gaussian_blur(gpu, hw):
    cp, GPU = gpu
    images = np.random.default_rng(2).standard_normal((2, 3, *hw)).astype(np.float32)
    same(cp, GPU.gaussian_blurred_images(cp.asarray(images), 51, 50.0), CPU.gaussian_blurred_images(images, 51, 50.0),
         atol=1e-6)


@needs_gpu
def test_every_method_on_the_gpu_matches_the_cpu(tmp_path):
    model = sample_model("resnet18", seed=0)
    with torch.no_grad():
        model.fc.weight.mul_(20.0)
        model.fc.bias.mul_(20.0)
    fusioncam.export_torch(model, "layer4", tmp_path / "r.fcam", input_size=(64, 64))
    images = np.random.default_rng(3).standard_normal((2, 3, 64, 64)).astype(np.float32)
    targets = [-1, 590]
    cpu = fusioncam.Explainer(tmp_path / "r.fcam", device="cpu", batch_size=100).explain(images, targets, METHODS)
    gpu = fusioncam.Explainer(tmp_path / "r.fcam", device="cuda", batch_size=64).explain(images, targets, METHODS)
    assert gpu.device.startswith("cuda") and tuple(gpu.maps) == METHODS
    for method in METHODS:
        assert gpu.maps[method].dtype == np.float32
        np.testing.assert_allclose(gpu.maps[method], cpu.maps[method], atol=1e-4, err_msg=method)
    for key in cpu.betas:
        np.testing.assert_allclose(gpu.betas[key], cpu.betas[key], atol=1e-5, err_msg=key)
    for key in cpu.union_betas:
        np.testing.assert_allclose(gpu.union_betas[key], cpu.union_betas[key], atol=1e-5, err_msg=key)
    assert gpu.union_kept_combined.tolist() == cpu.union_kept_combined.tolist()
    np.testing.assert_allclose(gpu.group_scores, cpu.group_scores, atol=1e-4)
    assert gpu.forwards_run.tolist() == cpu.forwards_run.tolist()  # ReLU zeros: the same constant channels

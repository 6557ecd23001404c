"""CuPy kernels against the NumPy kernels on the same inputs (needs a CUDA GPU and CuPy; skipped otherwise)."""

from __future__ import annotations

import numpy as np
import pytest

try:
    import cupy as cp
except ImportError:
    pytest.skip("CuPy is not installed: the CUDA kernels cannot run here", allow_module_level=True)
try:
    _GPU_COUNT = cp.cuda.runtime.getDeviceCount()
except Exception as exc:  # no driver, no device, or CUDA libraries missing
    pytest.skip(f"CuPy cannot reach a CUDA GPU: {exc}", allow_module_level=True)
if _GPU_COUNT == 0:
    pytest.skip("CuPy sees no CUDA GPU", allow_module_level=True)

from fusioncam.kernels import cuda_kernels, numpy_kernels as CPU  # noqa: E402

pytestmark = pytest.mark.gpu

GPU = cuda_kernels()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def same(gpu_result, cpu_result: np.ndarray, scale: float = 1.0) -> None:
    """The GPU result equals the CPU one within 1e-6 (relative, and absolute on the data's scale)."""
    assert isinstance(gpu_result, cp.ndarray)
    host = cp.asnumpy(gpu_result)
    assert host.dtype == cpu_result.dtype and host.shape == cpu_result.shape
    np.testing.assert_allclose(host, cpu_result, rtol=1e-6, atol=1e-6 * scale)


def test_same_functions_in_both_sets():
    for name in vars(CPU):
        assert getattr(GPU, name).__doc__ == getattr(CPU, name).__doc__


@pytest.mark.parametrize("in_size,out_size", [(7, 224), (1, 5), (3, 10), (13, 224), (224, 7)])
def test_bilinear_weights(in_size, out_size):
    from fusioncam.kernels import upsample_cuda, upsample_numpy

    same(upsample_cuda.bilinear_weights(in_size, out_size), upsample_numpy.bilinear_weights(in_size, out_size))


@pytest.mark.parametrize(
    "shape,out_hw",
    [((2, 3, 7, 7), (224, 224)), ((1, 1, 1), (5, 5)), ((4, 3, 3), (10, 10)), ((2, 13, 13), (224, 224)),
     ((3, 7, 5), (224, 160)), ((6, 4), (17, 9)), ((2, 10, 12), (4, 5))],
)
def test_upsample(rng, shape, out_hw):
    maps = (rng.standard_normal(shape) * 3).astype(np.float32)
    same(GPU.upsample(cp.asarray(maps), out_hw), CPU.upsample(maps, out_hw), scale=3)


@pytest.mark.parametrize(
    "n,k,low_hw,out_hw", [(1, 1, (7, 7), (224, 224)), (3, 37, (7, 7), (224, 224)), (2, 5, (3, 4), (10, 13))]
)
def test_upsampled_min_max(rng, n, k, low_hw, out_hw):
    acts = rng.standard_normal((n, k, *low_hw)).astype(np.float32)
    acts[0, 0] = 0.3  # constant
    if k > 2:
        acts[-1, 1] = 0
        acts[-1, 1, low_hw[0] // 2, low_hw[1] // 2] = 5.0  # interior peak the upsampled map does not reach
        acts[-1, 2] = -np.abs(acts[-1, 2]) - 1  # all negative
    gpu_mins, gpu_maxs = GPU.upsampled_min_max(cp.asarray(acts), out_hw)
    cpu_mins, cpu_maxs = CPU.upsampled_min_max(acts, out_hw)
    same(gpu_mins, cpu_mins, scale=5)
    same(gpu_maxs, cpu_maxs, scale=5)
    assert float(gpu_mins[0, 0]) == float(gpu_maxs[0, 0]) == np.float32(0.3)


def _channel_case(rng, n, k, low_hw, out_hw, m):
    images = rng.standard_normal((n, 3, *out_hw)).astype(np.float32)
    acts = rng.standard_normal((n, k, *low_hw)).astype(np.float32)
    acts[0, 0] = 1.5  # constant channel: zero mask
    mins, maxs = CPU.upsampled_min_max(acts, out_hw)
    image_index = rng.integers(0, n, m).astype(np.int64)
    channel_index = rng.integers(0, k, m).astype(np.int64)
    image_index[0], channel_index[0] = 0, 0
    return images, acts, mins, maxs, image_index, channel_index


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize(
    "n,k,low_hw,out_hw,m,batch,start",
    [(1, 1, (7, 7), (224, 224), 1, 1, 0), (3, 9, (7, 7), (224, 224), 6, 10, 3), (2, 4, (5, 3), (17, 11), 4, 4, 0)],
)
def test_write_channel_masked_inputs(rng, dtype, n, k, low_hw, out_hw, m, batch, start):
    images, acts, mins, maxs, image_index, channel_index = _channel_case(rng, n, k, low_hw, out_hw, m)
    cpu_out = np.full((batch, 3, *out_hw), 9.0, dtype=dtype)
    gpu_out = cp.asarray(cpu_out)
    CPU.write_channel_masked_inputs(images, acts, mins, maxs, image_index, channel_index, cpu_out, start)
    GPU.write_channel_masked_inputs(
        *(cp.asarray(a) for a in (images, acts, mins, maxs, image_index, channel_index)), gpu_out, start
    )
    host = cp.asnumpy(gpu_out)
    if dtype == np.float16:  # the same fp16 value, or one ulp apart
        ulp = np.spacing(np.abs(cpu_out)).astype(np.float32)
        assert np.all(np.abs(host.astype(np.float32) - cpu_out.astype(np.float32)) <= ulp)
    else:
        same(gpu_out, cpu_out, scale=np.abs(images).max())
    assert np.all(host[:start] == 9.0) and np.all(host[start + m :] == 9.0)
    assert np.all(host[start] == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_write_map_masked_inputs(rng, dtype):
    images = rng.standard_normal((2, 3, 224, 224)).astype(np.float32)
    maps = rng.random((3, 224, 224)).astype(np.float32)
    image_index = np.array([1, 0, 1], dtype=np.int64)
    cpu_out = np.full((6, 3, 224, 224), 9.0, dtype=dtype)
    gpu_out = cp.asarray(cpu_out)
    CPU.write_map_masked_inputs(images, maps, image_index, cpu_out, start=2)
    GPU.write_map_masked_inputs(cp.asarray(images), cp.asarray(maps), cp.asarray(image_index), gpu_out, start=2)
    host = cp.asnumpy(gpu_out)
    if dtype == np.float16:
        ulp = np.spacing(np.abs(cpu_out)).astype(np.float32)
        assert np.all(np.abs(host.astype(np.float32) - cpu_out.astype(np.float32)) <= ulp)
    else:
        same(gpu_out, cpu_out, scale=np.abs(images).max())


@pytest.mark.parametrize("n,k", [(1, 1), (3, 64)])
def test_weighted_channel_sum(rng, n, k):
    acts = rng.standard_normal((n, k, 7, 7)).astype(np.float32)
    weights = CPU.softmax(rng.standard_normal((n, k)) * 3)
    gpu = GPU.weighted_channel_sum(cp.asarray(acts), cp.asarray(weights))
    same(gpu, CPU.weighted_channel_sum(acts, weights), scale=5)


def _maps(rng, n=4, hw=(224, 224)):
    maps = rng.standard_normal((n, *hw)).astype(np.float32)
    maps[1] = 0.25  # constant
    maps[2] = np.round(maps[2] * 2) / 2  # ties
    return maps


def test_normalize(rng):
    maps = _maps(rng)
    same(GPU.normalize(cp.asarray(maps)), CPU.normalize(maps))


@pytest.mark.parametrize("n", [1, 3])
def test_relu_upsample_normalize(rng, n):
    low = rng.standard_normal((n, 7, 7)).astype(np.float32)
    low[0] = -np.abs(low[0]) - 0.1  # all negative: zeros
    same(GPU.relu_upsample_normalize(cp.asarray(low), (224, 224)), CPU.relu_upsample_normalize(low, (224, 224)))


@pytest.mark.parametrize("theta", [0, 10, 37.5, 50, 100])
def test_percentile_denoise(rng, theta):
    maps = CPU.normalize(_maps(rng))
    gpu = GPU.percentile_denoise(cp.asarray(maps), theta)
    cpu = CPU.percentile_denoise(maps, theta)
    same(gpu, cpu)
    assert np.array_equal(cp.asnumpy(gpu) == 0, cpu == 0)


def test_softmax(rng):
    scores = np.stack([rng.standard_normal(2048) * 4, np.full(2048, 3.0), 1e4 + rng.standard_normal(2048)])
    result = GPU.softmax(cp.asarray(scores))
    assert not bool(cp.isnan(result).any())
    same(result, CPU.softmax(scores))


def test_weighted_pair(rng):
    a, b = rng.random((2, 3, 224, 224)).astype(np.float32)
    wa, wb = np.array([0.3, 1.0, 0.0]), np.array([0.7, 0.0, 0.0])
    gpu = GPU.weighted_pair(*(cp.asarray(x) for x in (a, b, wa, wb)))
    same(gpu, CPU.weighted_pair(a, b, wa, wb))


def test_similarity_fusion(rng):
    l_dr, l_reg = rng.random((2, 4, 224, 224)).astype(np.float32)
    l_reg[3] = l_dr[3]
    b_dr, b_reg = np.array([0.6, 1.5, 0.0, 0.5]), np.array([0.4, -0.5, 1.0, 0.5])
    gpu = GPU.similarity_fusion(*(cp.asarray(x) for x in (l_dr, l_reg, b_dr, b_reg)))
    same(gpu, CPU.similarity_fusion(l_dr, l_reg, b_dr, b_reg))


def test_nonfinite_rows():
    a = np.zeros((4, 2, 3, 3), dtype=np.float32)
    b = np.zeros((4, 5), dtype=np.float16)
    a[1, 1, 2, 0] = np.nan
    b[2, 4] = np.inf
    result = GPU.nonfinite_rows(cp.asarray(a), cp.asarray(b))
    assert isinstance(result, cp.ndarray)
    assert cp.asnumpy(result).tolist() == CPU.nonfinite_rows(a, b).tolist() == [False, True, True, False]

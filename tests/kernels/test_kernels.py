"""NumPy kernels against plain loop references written from their definitions, and against PyTorch's resize."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

from fusioncam.errors import DeviceError
from fusioncam.kernels import KERNEL_NAMES, cuda_kernels, numpy_kernels as K
from fusioncam.kernels.upsample_numpy import bilinear_weights
from fusioncam.kernels.array_math import percentile_of_sorted
from tests.support.kernel_inventory import KERNELS_DIR, public_functions
from tests.support.kernel_references import ref_channel_masked, ref_denoise, ref_normalize, ref_upsample, ref_upsample_map, ref_weights



@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20260305)


def close(actual: np.ndarray, expected: np.ndarray, scale: float = 1.0) -> None:
    """float32 work against a float64 reference: 1e-6 relative, and 1e-6 of the data's scale absolute."""
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6 * scale)


# ---------------------------------------------------------------- loop references
















# ---------------------------------------------------------------- interface


def test_kernel_set_lists_every_numpy_kernel():
    import fusioncam.kernels as kernels_package

    names = set(KERNEL_NAMES)
    exported = {name for module in vars(kernels_package).values()
                if getattr(module, "__name__", "").endswith("_numpy") for name in module.__all__}
    assert names == exported
    assert all(callable(getattr(K, name)) for name in names)






@pytest.mark.parametrize("concern", ["upsample", "masks", "maps", "blend"])
def test_cuda_module_mirrors_numpy_module(concern):
    """Same names, arguments and docstrings in each *_numpy.py / *_cuda.py pair (read from source: no CuPy needed)."""
    cpu = public_functions(KERNELS_DIR / f"{concern}_numpy.py")
    gpu = public_functions(KERNELS_DIR / f"{concern}_cuda.py")
    assert cpu == gpu


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here")
def test_cuda_kernels_without_cupy_raise_device_error():
    with pytest.raises(DeviceError, match="CuPy"):
        cuda_kernels()


# ---------------------------------------------------------------- bilinear_weights, upsample

SIZES = [(7, 224), (1, 5), (3, 10), (13, 224), (5, 160), (14, 224), (7, 299), (10, 4), (224, 7), (6, 6)]


@pytest.mark.parametrize("in_size,out_size", SIZES)
def test_bilinear_weights_match_loop_reference(in_size, out_size):
    weights = bilinear_weights(in_size, out_size)
    assert weights.dtype == np.float32 and weights.shape == (out_size, in_size)
    np.testing.assert_allclose(weights, ref_weights(in_size, out_size), rtol=0, atol=1e-7)
    np.testing.assert_allclose(weights.sum(axis=1), 1, rtol=0, atol=1e-6)


@pytest.mark.parametrize("in_size,out_size", SIZES)
def test_bilinear_weights_match_torch(in_size, out_size):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    eye = torch.eye(in_size).reshape(in_size, 1, in_size, 1)
    resized = F.interpolate(eye, size=(out_size, 1), mode="bilinear", align_corners=False)
    expected = resized.reshape(in_size, out_size).T.numpy()
    np.testing.assert_allclose(bilinear_weights(in_size, out_size), expected, rtol=0, atol=2e-7)


@pytest.mark.parametrize(
    "low_hw,out_hw",
    [((7, 7), (224, 224)), ((1, 1), (5, 5)), ((3, 3), (10, 10)), ((13, 13), (224, 224)), ((7, 5), (224, 160)),
     ((5, 9), (17, 12)), ((10, 12), (4, 5))],
)
def test_upsample_matches_torch(rng, low_hw, out_hw):
    torch = pytest.importorskip("torch")
    maps = (rng.standard_normal((2, 3, *low_hw)) * 3).astype(np.float32)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(maps), size=out_hw, mode="bilinear", align_corners=False
    ).numpy()
    up = K.upsample(maps, out_hw)
    assert up.dtype == np.float32 and up.shape == (2, 3, *out_hw)
    close(up, expected, scale=np.abs(maps).max())


@pytest.mark.parametrize(
    "low_hw,out_hw", [((7, 7), (224, 224)), ((3, 3), (10, 10)), ((1, 1), (5, 5)), ((5, 4), (17, 23))]
)
def test_upsample_matches_loop_reference(rng, low_hw, out_hw):
    count = 1 if out_hw[0] > 100 else 4
    maps = rng.standard_normal((count, *low_hw)).astype(np.float32)
    close(K.upsample(maps, out_hw), ref_upsample(maps, out_hw), scale=np.abs(maps).max())


def test_upsample_accepts_one_map_and_keeps_constants_exact(rng):
    single = rng.standard_normal((4, 6)).astype(np.float32)
    assert K.upsample(single, (9, 11)).shape == (9, 11)
    constant = np.full((2, 7, 7), 0.3, dtype=np.float32)
    assert np.all(K.upsample(constant, (224, 224)) == np.float32(0.3))


def test_upsample_chunks_many_maps_like_one(rng):
    maps = rng.standard_normal((70, 7, 7)).astype(np.float32)  # more than one chunk at 224 x 224
    whole = K.upsample(maps, (224, 224))
    assert np.array_equal(whole[65], K.upsample(maps[65:66], (224, 224))[0])


# ---------------------------------------------------------------- upsampled_min_max


def test_upsampled_min_max_equals_extremes_of_upsample(rng):
    acts = rng.standard_normal((3, 5, 7, 7)).astype(np.float32)
    acts[1, 2] = 0.3  # constant channel
    acts[2, 0] = -rng.random((7, 7)).astype(np.float32) - 1  # all negative
    mins, maxs = K.upsampled_min_max(acts, (224, 224))
    up = K.upsample(acts, (224, 224))
    assert mins.dtype == maxs.dtype == np.float32 and mins.shape == (3, 5)
    assert np.array_equal(mins, up.min(axis=(2, 3)))
    assert np.array_equal(maxs, up.max(axis=(2, 3)))
    assert mins[1, 2] == maxs[1, 2] == np.float32(0.3)


@pytest.mark.parametrize("in_size,out_size", SIZES)
def test_upsampled_min_max_from_extreme_rows_is_bit_exact(rng, in_size, out_size):
    """Only the extreme rows are upsampled; min/max must still equal those of the full upsample bit for bit,
    also for maps of mixed scale and near-equal values (where float rounding could break a shortcut)."""
    acts = rng.standard_normal((2, 6, in_size, in_size)).astype(np.float32)
    acts[0, 1] *= np.float32(1e6)
    acts[1, 2] = np.float32(1) + rng.integers(0, 3, (in_size, in_size)).astype(np.float32) * np.float32(1e-7)
    acts[1, 3] = np.where(rng.random((in_size, in_size)) < 0.5, 1e-30, -1e-30).astype(np.float32)
    mins, maxs = K.upsampled_min_max(acts, (out_size, out_size + 3))
    up = K.upsample(acts, (out_size, out_size + 3))
    assert np.array_equal(mins, up.min(axis=(2, 3)))
    assert np.array_equal(maxs, up.max(axis=(2, 3)))


def test_upsampled_min_max_needs_upsampled_extremes():
    """An interior peak is not reached by half-pixel upsampling; a corner value is."""
    acts = np.zeros((1, 2, 7, 7), dtype=np.float32)
    acts[0, 0, 3, 3] = 5.0
    acts[0, 1, 0, 0] = -5.0
    mins, maxs = K.upsampled_min_max(acts, (224, 224))
    reference = ref_upsample(acts[0], (224, 224))
    np.testing.assert_allclose(maxs[0], reference.max(axis=(1, 2)), rtol=1e-6, atol=5e-6)
    np.testing.assert_allclose(mins[0], reference.min(axis=(1, 2)), rtol=1e-6, atol=5e-6)
    assert maxs[0, 0] < 5.0 - 0.1  # the low-resolution max would be wrong
    assert mins[0, 1] == -5.0


def test_upsampled_min_max_single_channel_single_image(rng):
    acts = rng.standard_normal((1, 1, 3, 3)).astype(np.float32)
    mins, maxs = K.upsampled_min_max(acts, (10, 10))
    reference = ref_upsample_map(acts[0, 0], 10, 10)
    close(mins[0, 0], reference.min())
    close(maxs[0, 0], reference.max())


# ---------------------------------------------------------------- masked inputs




def _masked_case(rng, n, k, low_hw, out_hw):
    images = rng.standard_normal((n, 3, *out_hw)).astype(np.float32)
    acts = rng.standard_normal((n, k, *low_hw)).astype(np.float32)
    return images, acts


def test_write_channel_masked_inputs_rows_and_untouched_rows(rng):
    images, acts = _masked_case(rng, 3, 4, (5, 5), (17, 17))
    acts[2, 1] = 1.25  # constant channel: a zero mask
    mins, maxs = K.upsampled_min_max(acts, (17, 17))
    image_index = np.array([0, 2, 1, 2, 0, 1, 2], dtype=np.int64)
    channel_index = np.array([3, 1, 0, 2, 3, 1, 0], dtype=np.int64)
    out = np.full((10, 3, 17, 17), 7.0, dtype=np.float32)
    K.write_channel_masked_inputs(images, acts, mins, maxs, image_index, channel_index, out, start=2)
    expected = ref_channel_masked(images, acts, mins, maxs, image_index, channel_index, (17, 17))
    close(out[2:9], expected, scale=np.abs(images).max())
    assert np.all(out[:2] == 7.0) and np.all(out[9:] == 7.0)
    assert np.all(out[3] == 0)  # (n, k) = (2, 1) is constant


def test_write_channel_masked_inputs_at_224(rng):
    images, acts = _masked_case(rng, 1, 1, (7, 7), (224, 224))
    mins, maxs = K.upsampled_min_max(acts, (224, 224))
    out = np.empty((1, 3, 224, 224), dtype=np.float32)
    index = np.zeros(1, dtype=np.int64)
    K.write_channel_masked_inputs(images, acts, mins, maxs, index, index, out)
    expected = ref_channel_masked(images, acts, mins, maxs, index, index, (224, 224))
    close(out, expected, scale=np.abs(images).max())


def test_write_channel_masked_inputs_masks_span_zero_to_one(rng):
    images = np.ones((1, 3, 30, 30), dtype=np.float32)
    acts = -rng.random((1, 3, 6, 6)).astype(np.float32)  # all negative activations
    mins, maxs = K.upsampled_min_max(acts, (30, 30))
    out = np.empty((3, 3, 30, 30), dtype=np.float32)
    K.write_channel_masked_inputs(images, acts, mins, maxs, np.zeros(3, np.int64), np.arange(3), out)
    assert np.all(out.min(axis=(1, 2, 3)) == 0) and np.all(out.max(axis=(1, 2, 3)) == 1)


def test_write_channel_masked_inputs_float16_out(rng):
    images, acts = _masked_case(rng, 2, 3, (4, 4), (13, 13))
    mins, maxs = K.upsampled_min_max(acts, (13, 13))
    image_index = np.array([1, 0, 1], dtype=np.int64)
    channel_index = np.array([2, 0, 1], dtype=np.int64)
    out = np.full((5, 3, 13, 13), 3.0, dtype=np.float16)
    K.write_channel_masked_inputs(images, acts, mins, maxs, image_index, channel_index, out, start=1)
    expected = ref_channel_masked(images, acts, mins, maxs, image_index, channel_index, (13, 13)).astype(np.float16)
    ulp = np.spacing(np.abs(expected)).astype(np.float32)
    assert np.all(np.abs(out[1:4].astype(np.float32) - expected.astype(np.float32)) <= ulp)
    assert np.all(out[0] == 3.0) and np.all(out[4] == 3.0)


def test_write_channel_masked_inputs_refuses_rows_past_the_batch(rng):
    images, acts = _masked_case(rng, 1, 2, (3, 3), (8, 8))
    mins, maxs = K.upsampled_min_max(acts, (8, 8))
    out = np.zeros((2, 3, 8, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="do not fit"):
        K.write_channel_masked_inputs(images, acts, mins, maxs, np.zeros(2, np.int64), np.arange(2), out, start=1)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_write_map_masked_inputs(rng, dtype):
    images = rng.standard_normal((3, 3, 11, 9)).astype(np.float32)
    maps = rng.random((4, 11, 9)).astype(np.float32)
    image_index = np.array([2, 0, 0, 1], dtype=np.int64)
    out = np.full((7, 3, 11, 9), 5.0, dtype=dtype)
    K.write_map_masked_inputs(images, maps, image_index, out, start=2)
    expected = np.stack([images[n].astype(np.float64) * maps[j] for j, n in enumerate(image_index)])
    if dtype == np.float32:
        close(out[2:6], expected, scale=np.abs(images).max())
    else:
        assert np.array_equal(out[2:6], (images[image_index] * maps[:, None]).astype(np.float16))
    assert np.all(out[:2] == 5.0) and np.all(out[6:] == 5.0)


# ---------------------------------------------------------------- map arithmetic


@pytest.mark.parametrize("n,k", [(1, 1), (3, 6)])
def test_weighted_channel_sum(rng, n, k):
    acts = rng.standard_normal((n, k, 7, 5)).astype(np.float32)
    weights = rng.standard_normal((n, k))
    expected = np.zeros((n, 7, 5))
    for i in range(n):
        for c in range(k):
            expected[i] += weights[i, c] * acts[i, c].astype(np.float64)
    result = K.weighted_channel_sum(acts, weights)
    assert result.dtype == np.float32
    close(result, expected, scale=np.abs(acts).max() * np.abs(weights).sum(axis=1).max())


def test_normalize(rng):
    maps = rng.standard_normal((4, 9, 8)).astype(np.float32)
    maps[1] = 2.5  # constant
    maps[2] = -np.abs(maps[2]) - 3  # all negative
    maps[3] = 0
    maps[3, 4, 4] = 1e-3  # one non-zero pixel
    result = K.normalize(maps)
    assert result.dtype == np.float32
    close(result, ref_normalize(maps))
    assert np.all(result[1] == 0) and np.all(result[3] == (maps[3] > 0))
    assert np.all(result.min(axis=(1, 2)) == 0)


@pytest.mark.parametrize("n", [1, 3])
def test_relu_upsample_normalize(rng, n):
    low = rng.standard_normal((n, 5, 4)).astype(np.float32)
    expected = ref_normalize(ref_upsample(np.maximum(low, 0), (19, 16)))
    close(K.relu_upsample_normalize(low, (19, 16)), expected)


def test_relu_upsample_normalize_all_negative_gives_zeros(rng):
    low = -rng.random((2, 7, 7)).astype(np.float32) - 0.1
    result = K.relu_upsample_normalize(low, (224, 224))
    assert result.shape == (2, 224, 224) and np.all(result == 0)




@pytest.mark.parametrize("theta", [0, 10, 10.0, 37.5, 50, 90, 100])
def test_percentile_denoise(rng, theta):
    maps = rng.random((3, 20, 17)).astype(np.float32)
    maps[1] = np.round(maps[1] * 4) / 4  # many ties at the percentile
    maps[2] = 0.5  # constant
    result = K.percentile_denoise(maps, theta)
    expected = ref_denoise(maps, theta)
    close(result, expected)
    assert np.array_equal(result == 0, expected == 0)


@pytest.mark.parametrize("theta", [0, 0.1, 10, 33.3, 49.99, 50, 50.01, 66.7, 99.9, 100])
@pytest.mark.parametrize("count", [1, 2, 7, 224 * 224])
def test_percentile_of_sorted_is_numpy_percentile_bit_for_bit(rng, theta, count):
    values = np.round(rng.standard_normal((3, count)) * 8).astype(np.float32) / 8
    expected = np.stack([np.percentile(row, theta) for row in values])
    assert np.array_equal(percentile_of_sorted(np.sort(values, axis=1), theta), expected)


def test_percentile_denoise_rejects_bad_theta(rng):
    with pytest.raises(ValueError):
        K.percentile_denoise(rng.random((1, 4, 4)).astype(np.float32), 101)


def test_softmax(rng):
    scores = np.stack(
        [rng.standard_normal(6) * 3, np.full(6, 4.0), 1e4 + rng.standard_normal(6), [1e4, 1e4 - 1, -1e4, 0, 3, 1e4]]
    )
    result = K.softmax(scores)
    assert result.dtype == np.float64 and np.all(np.isfinite(result))
    for row, expected_row in zip(result, scores):
        top = max(expected_row)
        exps = [math.exp(s - top) for s in expected_row]
        np.testing.assert_allclose(row, [e / sum(exps) for e in exps], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(result.sum(axis=1), 1, rtol=1e-12)
    assert np.all(result[1] == 1 / 6)


def test_weighted_pair(rng):
    a = rng.random((3, 10, 12)).astype(np.float32)
    b = rng.random((3, 10, 12)).astype(np.float32)
    wa, wb = np.array([0.3, 1.0, 0.0]), np.array([0.7, 0.0, 0.0])
    expected = np.zeros(a.shape)
    for n in range(3):
        for y in range(10):
            for x in range(12):
                expected[n, y, x] = wa[n] * a[n, y, x] + wb[n] * b[n, y, x]
    close(K.weighted_pair(a, b, wa, wb), ref_normalize(expected))


def test_similarity_fusion(rng):
    l_dr = rng.random((4, 8, 9)).astype(np.float32)
    l_reg = rng.random((4, 8, 9)).astype(np.float32)
    l_reg[3] = l_dr[3]  # full agreement
    b_dr = np.array([0.6, 1.5, 0.0, 0.5])
    b_reg = np.array([0.4, -0.5, 1.0, 0.5])  # image 1: |L1 - L2| > 1 somewhere, S clipped at 0
    expected = np.zeros(l_dr.shape)
    for n in range(4):
        for y in range(8):
            for x in range(9):
                l1, l2 = b_dr[n] * float(l_dr[n, y, x]), b_reg[n] * float(l_reg[n, y, x])
                s = min(max(1 - abs(l1 - l2), 0.0), 1.0)
                expected[n, y, x] = s * max(l1, l2) + (1 - s) * (l1 + l2) / 2
    assert np.any(np.abs(b_dr[1] * l_dr[1] - b_reg[1] * l_reg[1]) > 1)
    close(K.similarity_fusion(l_dr, l_reg, b_dr, b_reg), ref_normalize(expected))


def test_nonfinite_rows():
    a = np.zeros((4, 2, 3, 3), dtype=np.float32)
    b = np.zeros((4, 5), dtype=np.float16)
    a[1, 1, 2, 0] = np.nan
    b[2, 4] = np.inf
    b[1, 0] = -np.inf
    assert K.nonfinite_rows(a, b).tolist() == [False, True, True, False]
    assert K.nonfinite_rows(a).tolist() == [False, True, False, False]

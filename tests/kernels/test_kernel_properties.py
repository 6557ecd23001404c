"""Property tests (hypothesis) of the NumPy kernels against loop references, on random shapes and values.

The fixed-case tests of test_kernels.py use a few chosen shapes; here hypothesis draws the shapes (1x1 maps, a
single image, sizes that shrink as well as grow), the values (ties, constants, huge and tiny magnitudes) and the
row orders, and shrinks any failure to a minimal case. The loop references are test_kernels.py's (upsampling,
normalisation, masks, denoising) and the ones below, written from the formulas of the algorithm page.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="property tests need hypothesis (pip install -e '.[test]')")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from fusioncam.kernels import numpy_kernels as K  # noqa: E402
from fusioncam.kernels.array_math import percentile_of_sorted  # noqa: E402
from tests.support.kernel_references import (  # noqa: E402
    ref_channel_masked,
    ref_denoise,
    ref_normalize,
    ref_normalize_map,
    ref_upsample,
)

# Derandomized (the same examples on every run, so CI is reproducible) and no example database in the working tree;
# FUSIONCAM_HYPOTHESIS_EXAMPLES=1000 explores more, with fresh random examples.
EXPLORE = int(os.environ.get("FUSIONCAM_HYPOTHESIS_EXAMPLES", "0"))
SETTINGS = settings(max_examples=EXPLORE or 40, deadline=None, derandomize=not EXPLORE, database=None)
# No subnormal floats: a map spanning [0, 1e-45] upsamples in float32 to values that round to 0 or 1e-45, and
# normalising amplifies that rounding to 0.5 (hypothesis found it); the kernels' contract is float32 arithmetic.
FINITE = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=32)
UNIT = st.floats(0, 1, allow_nan=False, allow_subnormal=False, width=32)
SIDE = st.integers(1, 6)
OUT_SIDE = st.integers(1, 13)


def maps_of(shape, elements=FINITE):
    return hnp.arrays(np.float32, shape, elements=elements)


@st.composite
def low_maps(draw, lead=(1, 3)):
    """float32 [N, h, w] (N in lead) and an output size; sometimes a constant map or many ties."""
    n, h, w = draw(st.integers(*lead)), draw(SIDE), draw(SIDE)
    values = draw(st.sampled_from([FINITE, st.sampled_from([-1.0, 0.0, 0.25, 2.0])]))
    return draw(maps_of((n, h, w), values)), (draw(OUT_SIDE), draw(OUT_SIDE))


def assert_close(actual, expected, scale: float = 1.0) -> None:
    """float32 kernels against float64 loops: 1e-5 relative, and 1e-5 of the data's scale absolute."""
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * max(scale, 1e-30))


@pytest.mark.slow
@SETTINGS
@given(low_maps())
def test_upsample_is_the_loop_bilinear(case):
    maps, out_hw = case
    assert_close(K.upsample(maps, out_hw), ref_upsample(maps, out_hw), float(np.abs(maps).max()))


@SETTINGS
@given(low_maps(), st.floats(-50, 50, allow_nan=False, allow_subnormal=False, width=32))
def test_upsample_keeps_a_constant_map_exactly_constant(case, value):
    maps, out_hw = case
    constant = np.full_like(maps, np.float32(value))
    assert np.all(K.upsample(constant, out_hw) == np.float32(value))


@SETTINGS
@given(low_maps())
def test_upsampled_min_max_are_the_extremes_of_the_full_upsample(case):
    maps, out_hw = case
    acts = maps[None]  # [1, K, h, w]
    mins, maxs = K.upsampled_min_max(acts, out_hw)
    full = K.upsample(acts, out_hw)
    np.testing.assert_array_equal(mins, full.min(axis=(2, 3)))  # bit for bit, from the extreme rows only
    np.testing.assert_array_equal(maxs, full.max(axis=(2, 3)))


@SETTINGS
@given(low_maps())
def test_normalize_is_the_loop_min_max_norm(case):
    maps, _ = case
    got = K.normalize(maps)
    assert_close(got, ref_normalize(maps))
    assert got.min() >= 0 and got.max() <= 1
    for m, g in zip(maps, got):
        assert (g.max() == 1) == (m.max() > m.min())  # a varying map reaches 1, a constant one is all 0


@SETTINGS
@given(low_maps(), st.sampled_from([0.0, 10.0, 37.5, 50.0, 99.0, 100.0]))
def test_percentile_denoise_is_the_loop_reference(case, theta):
    maps, _ = case
    assert_close(K.percentile_denoise(maps, theta), ref_denoise(maps, theta))


@SETTINGS
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 30)), elements=FINITE),
       st.floats(0, 100, allow_nan=False))
def test_percentile_of_sorted_is_numpy_percentile_bit_for_bit(values, theta):
    ordered = np.sort(values, axis=1)
    expected = np.array([np.percentile(row, theta) for row in values], dtype=np.float32)
    np.testing.assert_array_equal(percentile_of_sorted(ordered, theta), expected)


@st.composite
def masked_case(draw):
    """Images [N,3,H,W], activations [N,K,h,w] and a list of (image, channel) rows, grouped by image as the
    runtime writes them."""
    n, k, h, w, height, width = (draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(SIDE), draw(SIDE),
                                 draw(OUT_SIDE), draw(OUT_SIDE))
    images = draw(maps_of((n, 3, height, width)))
    acts = draw(maps_of((n, k, h, w), draw(st.sampled_from([FINITE, st.sampled_from([0.0, 1.0])]))))
    rows = sorted(draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, k - 1)), min_size=1, max_size=8)))
    image_index = np.array([r[0] for r in rows], dtype=np.int64)
    channel_index = np.array([r[1] for r in rows], dtype=np.int64)
    return images, acts, image_index, channel_index, (height, width)


@SETTINGS
@given(masked_case(), st.integers(0, 2))
def test_channel_masked_inputs_are_the_loop_x_times_norm_up_a(case, start):
    images, acts, image_index, channel_index, out_hw = case
    mins, maxs = K.upsampled_min_max(acts, out_hw)
    out = np.full((start + len(image_index) + 1, 3, *out_hw), 7.0, dtype=np.float32)
    K.write_channel_masked_inputs(images, acts, mins, maxs, image_index, channel_index, out, start)
    expected = ref_channel_masked(images, acts, mins, maxs, image_index, channel_index, out_hw)
    assert_close(out[start:start + len(image_index)], expected, float(np.abs(images).max()))
    assert np.all(out[:start] == 7.0) and np.all(out[start + len(image_index):] == 7.0)  # other rows untouched


def ref_blend(images, baselines, masks, image_index) -> np.ndarray:
    """out[j][c, y, x] = m * x + (1 - m) * b, one pixel at a time."""
    out = np.zeros((len(image_index), *images.shape[1:]))
    for j, n in enumerate(image_index):
        for c in range(images.shape[1]):
            for y in range(images.shape[2]):
                for x in range(images.shape[3]):
                    m = float(masks[j, y, x])
                    out[j, c, y, x] = m * float(images[n, c, y, x]) + (1 - m) * float(baselines[n, c, y, x])
    return out


@SETTINGS
@given(st.data())
def test_blended_inputs_are_the_loop_blend(data):
    n, height, width = data.draw(st.integers(1, 3)), data.draw(SIDE), data.draw(SIDE)
    images = data.draw(maps_of((n, 3, height, width)))
    baselines = data.draw(maps_of((n, 3, height, width)))
    image_index = np.array(sorted(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=6))), np.int64)
    masks = data.draw(maps_of((len(image_index), height, width), UNIT))
    out = np.zeros((len(image_index), 3, height, width), dtype=np.float32)
    K.write_blended_inputs(images, baselines, masks, image_index, out)
    scale = float(max(np.abs(images).max(), np.abs(baselines).max()))
    assert_close(out, ref_blend(images, baselines, masks, image_index), scale)


F32 = np.float32  # the kernels' contract: betas and weights applied in float32 (as the reference implementation)


def ref_fusion_map(l_dr, l_reg, b_dr, b_reg) -> np.ndarray:
    """Fusion-CAM step 3 pixel by pixel, in float32 scalars: L1 = b_dr L_dr, L2 = b_reg L_reg,
    S = clip(1 - |L1 - L2|, 0, 1), S max(L1, L2) + (1 - S)(L1 + L2)/2; then norm (float64)."""
    fused = np.zeros(l_dr.shape)
    one, two = F32(1), F32(2)
    for y in range(l_dr.shape[0]):
        for x in range(l_dr.shape[1]):
            l1, l2 = F32(b_dr) * l_dr[y, x], F32(b_reg) * l_reg[y, x]
            s = min(max(one - abs(l1 - l2), F32(0)), one)
            fused[y, x] = s * max(l1, l2) + (one - s) * (l1 + l2) / two
    return ref_normalize_map(fused)


@SETTINGS
@given(st.data())
def test_similarity_fusion_is_the_pixel_loop(data):
    n, h, w = data.draw(st.integers(1, 3)), data.draw(SIDE), data.draw(SIDE)
    l_dr, l_reg = data.draw(maps_of((n, h, w), UNIT)), data.draw(maps_of((n, h, w), UNIT))
    betas = data.draw(hnp.arrays(np.float32, (2, n), elements=UNIT))
    got = K.similarity_fusion(l_dr, l_reg, betas[0], betas[1])
    expected = np.stack([ref_fusion_map(l_dr[i], l_reg[i], float(betas[0, i]), float(betas[1, i])) for i in range(n)])
    assert_close(got, expected)


@SETTINGS
@given(st.data())
def test_weighted_pair_is_the_loop_norm_of_the_weighted_sum(data):
    n, h, w = data.draw(st.integers(1, 3)), data.draw(SIDE), data.draw(SIDE)
    a, b = data.draw(maps_of((n, h, w), UNIT)), data.draw(maps_of((n, h, w), UNIT))
    weights = data.draw(hnp.arrays(np.float32, (2, n), elements=UNIT))
    expected = np.zeros((n, h, w))
    for i in range(n):
        summed = np.zeros((h, w))
        for y in range(h):
            for x in range(w):  # float32, as the contract says: 5e-7 * 0.5 + 1 is not 1 + 2.5e-7 there
                summed[y, x] = F32(weights[0, i]) * a[i, y, x] + F32(weights[1, i]) * b[i, y, x]
        expected[i] = ref_normalize_map(summed)
    assert_close(K.weighted_pair(a, b, weights[0], weights[1]), expected)


@SETTINGS
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 9)),
                  elements=st.floats(-80, 80, allow_nan=False, allow_subnormal=False, width=32)))
def test_softmax_is_the_loop_exp_over_sum(scores):
    expected = []
    for row in scores.astype(np.float64):
        exps = [math.exp(v - max(row)) for v in row]
        expected.append([e / sum(exps) for e in exps])
    got = K.softmax(scores)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-12)


@st.composite
def acts_and_grads(draw):
    n, k, h, w = draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(SIDE), draw(SIDE)
    values = st.floats(-10, 10, allow_nan=False, allow_subnormal=False, width=32)
    return draw(maps_of((n, k, h, w), values)), draw(maps_of((n, k, h, w), values))


@SETTINGS
@given(acts_and_grads())
def test_channel_weights_are_the_loop_formulas(case):
    acts, grads = (a.astype(np.float64) for a in case)
    n, k = acts.shape[:2]
    grad, plus, xgrad = np.zeros((n, k)), np.zeros((n, k)), np.zeros((n, k))
    for i in range(n):
        for c in range(k):
            a, g = acts[i, c].ravel().tolist(), grads[i, c].ravel().tolist()
            total = sum(a)
            grad[i, c] = sum(g) / len(g)
            for av, gv in zip(a, g):
                denominator = 2 * gv * gv + total * gv ** 3
                alpha = gv * gv / denominator if denominator != 0 else 0.0
                plus[i, c] += alpha * max(gv, 0.0)
                xgrad[i, c] += av / (total + 1e-7) * gv
    assert_close(K.gradcam_weights(case[1]), grad)
    assert_close(K.gradcam_plus_plus_weights(*case), plus, float(np.abs(plus).max(initial=1)))
    assert_close(K.xgradcam_weights(*case), xgrad, float(np.abs(xgrad).max(initial=1)))


@SETTINGS
@given(acts_and_grads())
def test_weighted_channel_sum_is_the_loop_sum(case):
    acts, weights4 = case
    weights = weights4[:, :, 0, 0]
    n, k, h, w = acts.shape
    expected = np.zeros((n, h, w))
    for i in range(n):
        for c in range(k):
            expected[i] += float(weights[i, c]) * acts[i, c].astype(np.float64)
    assert_close(K.weighted_channel_sum(acts, weights), expected, float(np.abs(expected).max(initial=1)))

"""Fast mode (max_channels, beyond the paper): k >= K is exact mode; a small k scores exactly the chosen channels."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

import fusioncam
from fusioncam.errors import InputError
from fusioncam.runtime.channel_selection import gradcam_contributions, top_channels
from tests.support.parity import assert_matches_reference
from tests.support.torch_reference import module_by_path, reference_fusion_cam, sample_model

SIZE = (64, 64)
KEYS = ("fusion", "gradcam", "denoised", "scorecam", "combined")
SCORER_BATCH = 64


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("fast") / "resnet18.fcam"
    return fusioncam.export_torch(sample_model("resnet18", seed=0), "layer4", out, input_size=SIZE).bundle  # K=512, 2x2


def random_images(n: int, seed: int = 11) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, *SIZE)).astype(np.float32)


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def reference_selection(acts: np.ndarray, grads: np.ndarray, k: int) -> np.ndarray:
    """[N, K] bool: the k largest relu(w_k) * mean(A_k) per image, ties to the lower channel index (lexsort)."""
    contributions = np.maximum(grads.astype(np.float64).mean(axis=(2, 3)), 0) * acts.astype(np.float64).mean(axis=(2, 3))
    selected = np.zeros(contributions.shape, dtype=bool)
    for n, row in enumerate(contributions):
        selected[n, np.lexsort((np.arange(row.size), -row))[:k]] = True
    return selected


def reference_scorecam(bundle, images, acts, classes, selected) -> np.ndarray:
    """Score-CAM with the softmax over the selected channels only, from scores of the bundle's scorer run here (the
    masked images in batches of SCORER_BATCH, a batching of its own, not the Explainer's)."""
    scorer = session(bundle.scorer_path)
    z0 = scorer.run(None, {"input": np.zeros((1, 3, *SIZE), dtype=np.float32)})[0][0]
    up = torch.nn.functional.interpolate(torch.from_numpy(acts), size=SIZE, mode="bilinear", align_corners=False).numpy()
    maps = []
    for n in range(images.shape[0]):
        channels = np.flatnonzero(selected[n])
        scores = np.full(channels.size, z0[classes[n]], dtype=np.float64)
        rows, masked = [], []
        for j, k in enumerate(channels):
            low, high = up[n, k].min(), up[n, k].max()
            if high > low:  # a constant channel's mask is all zeros: its score is the all-zeros logit
                rows.append(j)
                masked.append((images[n] * ((up[n, k] - low) / (high - low))).astype(np.float32))
        for start in range(0, len(rows), SCORER_BATCH):
            batch = np.stack(masked[start:start + SCORER_BATCH])
            scores[rows[start:start + SCORER_BATCH]] = scorer.run(None, {"input": batch})[0][:, classes[n]]
        weights = np.exp(scores - scores.max())
        weights /= weights.sum()
        summed = np.maximum(np.tensordot(weights, up[n, channels].astype(np.float64), axes=1), 0)
        summed -= summed.min()
        maps.append(summed / summed.max() if summed.max() > 0 else summed)
    return np.stack(maps)


@pytest.mark.slow
def test_max_channels_at_least_k_is_exact_mode(bundle):
    images = random_images(2)
    exact = fusioncam.Explainer(bundle, device="cpu", batch_size=64).explain(images)
    for k in (512, 2048):
        fast = fusioncam.Explainer(bundle, device="cpu", batch_size=64, max_channels=k).explain(images)
        for key in KEYS:
            np.testing.assert_array_equal(getattr(fast, key), getattr(exact, key), err_msg=f"{key}, k={k}")
        np.testing.assert_array_equal(fast.forwards_run, exact.forwards_run)
        for key in exact.betas:
            np.testing.assert_array_equal(fast.betas[key], exact.betas[key])


@pytest.mark.slow
@pytest.mark.parametrize("k", [24, 508])  # 508 of 512 must take some of the ~16 constant channels: they stay skipped
def test_small_k_scores_exactly_the_selected_channels(bundle, k):
    images = random_images(2)
    acts, grads, classes = session(bundle.explain_path).run(
        ["activations", "gradients", "target_used"], {"input": images, "target": np.full(2, -1, dtype=np.int64)})
    selected = reference_selection(acts, grads, k)
    ours = top_channels(gradcam_contributions(acts, grads.astype(np.float64).mean(axis=(2, 3))), k)
    np.testing.assert_array_equal(ours, selected)

    explanation = fusioncam.Explainer(bundle, device="cpu", batch_size=10, max_channels=k).explain(images)
    np.testing.assert_array_equal(explanation.classes, classes)
    non_constant = acts.max(axis=(2, 3)) > acts.min(axis=(2, 3))  # 2x2 -> 64x64 bilinear keeps the extremes
    np.testing.assert_array_equal(explanation.forwards_run, (selected & non_constant).sum(axis=1))
    assert (explanation.forwards_run + explanation.forwards_skipped == 512).all()
    assert (explanation.forwards_run > 0).all()
    if k == 508:
        assert (explanation.forwards_run < k).all()
    expected = reference_scorecam(bundle, images, acts, classes, selected)
    np.testing.assert_allclose(explanation.scorecam, expected, atol=1e-5, rtol=0)
    assert np.isfinite(explanation.fusion).all()
    # Every step, fusion included, against the eager reference scoring only this test's selection (parity tolerances).
    model = sample_model("resnet18", seed=0)
    layer = module_by_path(model, "layer4")
    for n in range(images.shape[0]):
        reference = reference_fusion_cam(model, layer, torch.from_numpy(images[n]), int(classes[n]),
                                         channels=selected[n])
        np.testing.assert_array_equal(reference["scorecam_weights"][~selected[n]], 0)
        np.testing.assert_allclose(reference["scorecam"], expected[n], atol=1e-5, rtol=0)
        assert_matches_reference(explanation, n, reference)


def test_top_channels_breaks_ties_by_channel_index():
    contributions = np.array([[1.0, 3.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0, 2.0]])
    np.testing.assert_array_equal(top_channels(contributions, 2),
                                  [[False, True, True, False, False], [True, True, False, False, False]])


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "64"])
def test_max_channels_must_be_a_positive_count(bundle, bad):
    with pytest.raises(InputError, match="max_channels must be a positive number"):
        fusioncam.Explainer(bundle, device="cpu", max_channels=bad)

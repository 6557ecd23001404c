"""ROAD against pytorch-grad-cam 1.5.7's own implementation: its NoisyLinearImputer on the same image and mask, and
its ROADMostRelevantFirstAverage / ROADLeastRelevantFirstAverage / ROADCombined on a seeded torch CNN exported to a
bundle, with ClassifierOutputSoftmaxTarget."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam.metrics import road as pgc_road
from pytorch_grad_cam.metrics.perturbation_confidence import (PerturbationConfidenceMetric, RemoveLeastRelevantFirst,
                                                               RemoveMostRelevantFirst)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from scipy.ndimage import gaussian_filter

import fusioncam
from fusioncam.errors import InputError
from fusioncam.metrics.evaluation import evaluate_maps, measured_metrics
from fusioncam.metrics.road import (ROAD_PERCENTILES, checked_percentiles, removed_pixels, road_scores,
                                    road_thresholds)
from fusioncam.metrics.road_imputation import image_noise_key, imputation_noise, imputed_images
from tests.support.small_cnn import SmallNet, max_diff


def smooth_maps(n: int, height: int, width: int, seed: int) -> np.ndarray:
    """float32 [n, H, W] in [0, 1]: blurred noise, min-max normalised (CAM-like blobs)."""
    raw = gaussian_filter(np.random.default_rng(seed).random((n, height, width)), (0, 1.5, 1.5))
    low = raw.min(axis=(1, 2), keepdims=True)
    return ((raw - low) / (raw.max(axis=(1, 2), keepdims=True) - low)).astype(np.float32)


def pgc_removed(map_: np.ndarray, percentile: int, least_relevant_first: bool) -> np.ndarray:
    """bool [H, W]: the pixels pytorch-grad-cam's RemoveMost/LeastRelevantFirst hands to its imputer as missing."""
    captured = {}

    def capture(image, mask):
        captured["mask"] = mask.numpy()
        return image

    remover = (RemoveLeastRelevantFirst if least_relevant_first else RemoveMostRelevantFirst)(percentile, capture)
    remover(torch.zeros(3, *map_.shape), torch.from_numpy(map_))
    return captured["mask"] == 0


@pytest.mark.parametrize("height,width", [(28, 28), (7, 5), (1, 9), (13, 1), (16, 23)])
def test_masks_and_imputation_match_pytorch_grad_cam_without_noise(height, width):
    rng = np.random.default_rng(height * 100 + width)
    images = rng.standard_normal((2, 3, height, width)).astype(np.float32)
    maps = smooth_maps(2, height, width, seed=width)
    percentiles = (10, 35, 50, 90)
    morf, lerf = road_thresholds(maps, percentiles)
    for i in range(2):
        for k, percentile in enumerate(percentiles):
            for lerf_order, thresholds in ((False, morf), (True, lerf)):
                removed = removed_pixels(maps[i], thresholds[i, k], lerf_order)
                assert np.array_equal(removed, pgc_removed(maps[i], percentile, lerf_order))
                theirs = pgc_road.NoisyLinearImputer(noise=0)(torch.from_numpy(images[i]),
                                                              torch.from_numpy((~removed).astype(np.float32)))
                ours = imputed_images(images[i:i + 1], removed[None])[0]
                assert max_diff(ours, theirs.numpy()) < 1e-4
                assert np.array_equal(ours[:, ~removed], images[i][:, ~removed])  # known pixels untouched


def test_batched_imputation_equals_one_image_at_a_time():
    rng = np.random.default_rng(3)
    images = rng.standard_normal((5, 3, 12, 10)).astype(np.float32)
    removed = rng.random((5, 12, 10)) < np.array([0.0, 0.2, 0.5, 0.9, 1.0])[:, None, None]
    together = imputed_images(images, removed)
    for i in range(5):
        assert max_diff(together[i], imputed_images(images[i:i + 1], removed[i:i + 1])[0]) < 1e-6
    assert np.array_equal(together[0], images[0])  # nothing removed: unchanged
    assert np.array_equal(together[4], np.zeros_like(images[4]))  # nothing known: 0, as pytorch-grad-cam's solve


def test_banded_cholesky_and_superlu_agree(monkeypatch):
    import fusioncam.metrics.road_imputation as imputation

    rng = np.random.default_rng(8)
    images = rng.standard_normal((3, 3, 30, 41)).astype(np.float32)
    removed = smooth_maps(3, 30, 41, seed=4) >= np.array([0.2, 0.5, 0.8])[:, None, None]
    monkeypatch.setattr(imputation, "BANDED_MAX_WIDTH", 41)
    banded = imputed_images(images, removed)
    monkeypatch.setattr(imputation, "BANDED_MAX_WIDTH", 40)
    superlu = imputed_images(images, removed)
    monkeypatch.setattr(imputation, "SOLVE_BYTES", 1)  # one image per solve
    alone = imputed_images(images, removed)
    assert max_diff(banded, superlu) < 1e-6 and max_diff(alone, superlu) < 1e-6
    assert max_diff(banded[1][:, removed[1]], images[1][:, removed[1]]) > 0.1  # the removed pixels were imputed


def test_imputation_with_noise_matches_pytorch_grad_cam_given_the_same_noise(monkeypatch):
    rng = np.random.default_rng(5)
    image = rng.standard_normal((3, 20, 17)).astype(np.float32)
    removed = smooth_maps(1, 20, 17, seed=9)[0] >= 0.4
    noise = imputation_noise(7, image_noise_key(image), 3, (3, int(removed.sum())), 0.01)
    assert noise is not None and 0.005 < float(noise.std()) < 0.02
    monkeypatch.setattr(pgc_road.torch, "randn_like", lambda tensor: torch.from_numpy(noise / np.float32(0.01)))
    theirs = pgc_road.NoisyLinearImputer(noise=0.01)(torch.from_numpy(image),
                                                     torch.from_numpy((~removed).astype(np.float32)))
    ours = imputed_images(image[None], removed[None], [noise])[0]
    assert max_diff(ours, theirs.numpy()) < 1e-4
    assert max_diff(ours, imputed_images(image[None], removed[None])[0]) > 1e-3  # the noise is there


@pytest.fixture(scope="module")
def small_cnn(tmp_path_factory):
    """A seeded SmallNet (5 classes, 32x32), its bundle's CPU Explainer, images and smooth maps."""
    torch.manual_seed(0)
    model = SmallNet().eval()
    bundle = tmp_path_factory.mktemp("road") / "s.fcam"
    fusioncam.export_torch(model, "features.2", bundle, input_size=(32, 32))
    images = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    maps = smooth_maps(4, 32, 32, seed=2)
    with fusioncam.Explainer(bundle, device="cpu", batch_size=16) as explainer:
        yield model, explainer, images, maps


def pgc_average(model, images, maps, targets, percentiles, least_relevant_first: bool, noise: float) -> np.ndarray:
    """pytorch-grad-cam's ROAD average with its own classes, its imputer's noise set to `noise`."""
    remover = RemoveLeastRelevantFirst if least_relevant_first else RemoveMostRelevantFirst
    metric = pgc_road.AveragerAcrossThresholds(
        lambda p: PerturbationConfidenceMetric(remover(p, pgc_road.NoisyLinearImputer(noise=noise))), percentiles)
    return metric(torch.from_numpy(images), maps, [ClassifierOutputSoftmaxTarget(int(t)) for t in targets], model)


@pytest.mark.slow
def test_road_scores_match_pytorch_grad_cam_without_noise(small_cnn):
    model, explainer, images, maps = small_cnn
    targets = np.array([0, 3, 1, 4])
    ours = road_scores(explainer, images, maps, targets, noise=0)
    morf = pgc_average(model, images, maps, targets, list(ROAD_PERCENTILES), False, 0.0)
    lerf = pgc_average(model, images, maps, targets, list(ROAD_PERCENTILES), True, 0.0)
    assert max_diff(ours.morf, morf) < 1e-4 and max_diff(ours.lerf, lerf) < 1e-4
    assert max_diff(ours.combined, (lerf - morf) / 2) < 1e-4
    assert ours.morf_differences.shape == (4, 9) and float(np.abs(ours.morf - ours.lerf).max()) > 1e-3


def test_road_classes_default_to_the_arg_max_and_percentiles_are_honoured(small_cnn, monkeypatch):
    model, explainer, images, maps = small_cnn
    class Noiseless(pgc_road.NoisyLinearImputer):
        def __init__(self, noise: float = 0.01):
            super().__init__(noise=0.0)

    monkeypatch.setattr(pgc_road, "NoisyLinearImputer", Noiseless)  # what ROADCombined constructs
    with torch.no_grad():
        top = model(torch.from_numpy(images)).argmax(dim=1).numpy()
    ours = road_scores(explainer, images, maps, percentiles=(25, 75), noise=0)
    theirs = pgc_road.ROADCombined(percentiles=[25, 75])(
        torch.from_numpy(images), maps, [ClassifierOutputSoftmaxTarget(int(t)) for t in top], model)
    assert max_diff(ours.combined, theirs) < 1e-4


def test_road_scores_with_noise_match_pytorch_grad_cam_given_the_same_noise(small_cnn, monkeypatch):
    model, explainer, images, maps = small_cnn
    targets = np.array([2, 2, 0, 1])
    percentiles = (30, 60)
    ours = road_scores(explainer, images, maps, targets, percentiles=percentiles, noise=0.05, seed=11)
    # pytorch-grad-cam's loop: percentile outer, image inner; each call's randn_like gets that row's noise.
    order = [(d, p, i) for d in (0, 1) for p in percentiles for i in range(4)]
    keys = [image_noise_key(image) for image in images]
    draws = iter(order)

    def same_noise(tensor):
        direction, percentile, i = next(draws)
        noise = imputation_noise(11, keys[i], direction * 100 + percentile, tuple(tensor.shape), 0.05)
        return torch.from_numpy(noise / np.float32(0.05))

    monkeypatch.setattr(pgc_road.torch, "randn_like", same_noise)
    morf = pgc_average(model, images, maps, targets, list(percentiles), False, 0.05)
    lerf = pgc_average(model, images, maps, targets, list(percentiles), True, 0.05)
    assert next(draws, None) is None
    assert max_diff(ours.morf, morf) < 1e-4 and max_diff(ours.lerf, lerf) < 1e-4
    noiseless = road_scores(explainer, images, maps, targets, percentiles=percentiles, noise=0)
    assert max_diff(ours.morf, noiseless.morf) > 1e-6  # the noise reached the scores
    again = road_scores(explainer, images[::-1].copy(), maps[::-1].copy(), targets[::-1].copy(),
                        percentiles=percentiles, noise=0.05, seed=11)
    assert max_diff(again.morf[::-1], ours.morf) < 1e-9  # an image's noise does not depend on its place


@pytest.mark.parametrize("percentiles,words", [
    ((), "empty"), ((0, 50), "outside (0, 100)"), ((50, 100), "outside (0, 100)"), ((10.5,), "not an int"),
    ((10, 10), "repeat"), ("10,20", "sequence of ints"), ((True,), "not an int"),
])
def test_bad_percentiles_are_refused(percentiles, words):
    with pytest.raises(InputError, match=words.replace("(", r"\(").replace(")", r"\)")):
        checked_percentiles(percentiles)


def test_bad_noise_and_seed_and_non_classification_bundles_are_refused(small_cnn, monkeypatch):
    _, explainer, images, maps = small_cnn
    with pytest.raises(InputError, match="noise"):
        road_scores(explainer, images, maps, noise=-0.1)
    with pytest.raises(InputError, match="seed"):
        road_scores(explainer, images, maps, seed=-1)
    with pytest.raises(InputError, match="shape"):
        road_scores(explainer, images, maps[:, :16])
    monkeypatch.setattr(explainer.task, "name", "segmentation", raising=False)
    with pytest.raises(InputError, match="segmentation bundle"):
        road_scores(explainer, images, maps)


def test_evaluate_maps_adds_road_columns_equal_to_road_scores(small_cnn):
    _, explainer, images, maps = small_cnn
    other = smooth_maps(4, 32, 32, seed=8)
    targets = np.array([1, 0, 4, 2])
    evaluation = evaluate_maps(explainer, images, {"a": maps, "b": other}, targets, step=256,
                               road_percentiles=(20, 70))
    assert measured_metrics(evaluation)[-3:] == ("road_morf", "road_lerf", "road_combined")
    for name, method_maps in (("a", maps), ("b", other)):
        expected = road_scores(explainer, images, method_maps, targets, percentiles=(20, 70))
        got = evaluation.scores[name].per_image
        assert max_diff(got["road_morf"], expected.morf) < 1e-12
        assert max_diff(got["road_lerf"], expected.lerf) < 1e-12
        assert max_diff(got["road_combined"], expected.combined) < 1e-12
    plain = evaluate_maps(explainer, images, {"a": maps}, targets, step=256)
    assert "road_morf" not in plain.scores["a"].per_image and plain.road_percentiles is None
    with pytest.raises(InputError, match="outside"):
        evaluate_maps(explainer, images, {"a": maps}, targets, road_percentiles=(0, 50))


def test_a_constant_map_removes_every_pixel_at_every_percentile(small_cnn):
    model, explainer, images, _ = small_cnn
    flat = np.zeros((4, 32, 32), dtype=np.float32)  # nothing lies below the threshold: all pixels go, both orders
    targets = np.array([0, 1, 2, 3])
    ours = road_scores(explainer, images, flat, targets, percentiles=(10, 90), noise=0)
    with torch.no_grad():
        on_image = torch.softmax(model(torch.from_numpy(images)), dim=1).numpy()[np.arange(4), targets]
        on_zeros = torch.softmax(model(torch.zeros(1, 3, 32, 32)), dim=1).numpy()[0, targets]
    assert max_diff(ours.morf, on_zeros - on_image) < 1e-5 and max_diff(ours.lerf, on_zeros - on_image) < 1e-5
    assert max_diff(ours.combined, 0 * ours.combined) < 1e-12

"""Parity assertions against the eager references (maps, betas, probabilities) and the models and inputs they run on."""

from __future__ import annotations

import numpy as np
import torch
from tests.support.torch_reference import efficientnet_lite0_pretrained, sample_model


MAP_TOLERANCE = 1e-4


BETA_TOLERANCE = 1e-5


BETA_KEYS = ("b_den", "b_reg", "b_dr", "b_reg2", "b0")


def assert_matches_reference(explanation, index: int, reference: dict) -> None:
    """Maps within 1e-4 max abs, betas within 1e-5, same class and degenerate flag."""
    assert int(explanation.classes[index]) == reference["class"]
    assert bool(explanation.degenerate[index]) == reference["degenerate"]
    for key in ("gradcam", "denoised", "scorecam", "combined", "fusion"):
        diff = float(np.abs(getattr(explanation, key)[index] - reference[key]).max())
        assert diff <= MAP_TOLERANCE, f"{key}: max abs diff {diff:.2e}"
    for key in BETA_KEYS:
        diff = abs(float(explanation.betas[key][index]) - float(reference["betas"][key]))
        assert diff <= BETA_TOLERANCE, f"{key}: diff {diff:.2e}"
    assert abs(float(explanation.probabilities[index]) - float(reference["probability"])) <= BETA_TOLERANCE


# d_g are probabilities of blends far from natural images; ORT and eager logits differ by ~5e-5 there.
GROUP_SCORE_TOLERANCE = 1e-4


GRADIENT_METHODS = ("gradcam++", "xgradcam")


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def assert_methods_match(explanation, i: int, reference: dict) -> None:
    """Every method the reference computed, for image i: maps within 1e-4, betas within 1e-5, same choices."""
    assert int(explanation.classes[i]) == reference["class"]
    for method in GRADIENT_METHODS:
        if method in reference:
            assert max_diff(explanation.maps[method][i], reference[method]) <= MAP_TOLERANCE, method
    if "groupcam" in reference:
        group = reference["groupcam"]
        assert explanation.group_scores.shape[1] == group["groups"]
        assert max_diff(explanation.maps["groupcam"][i], group["map"]) <= MAP_TOLERANCE, "groupcam"
        assert max_diff(explanation.group_scores[i], group["scores"]) <= GROUP_SCORE_TOLERANCE
    if "unioncam" in reference:
        union = reference["unioncam"]
        assert bool(explanation.union_kept_combined[i]) == union["kept_combined"]
        assert max_diff(explanation.maps["unioncam"][i], union["map"]) <= MAP_TOLERANCE, "unioncam"
        for name, value in explanation.union_beta_row(i).items():
            assert abs(value - union["betas"][name]) <= BETA_TOLERANCE, name
        assert_matches_reference(explanation, i, reference["fusion_reference"])  # the shared sweep's other users
        assert max_diff(explanation.maps["scorecam"][i], reference["fusion_reference"]["scorecam"]) <= MAP_TOLERANCE


_models: dict[str, torch.nn.Module] = {}


def model_named(name: str) -> torch.nn.Module:
    """Each architecture built once per test session (seeded random, or the real EfficientNet weights)."""
    if name not in _models:
        _models[name] = efficientnet_lite0_pretrained() if name == "efficientnet_lite0" else sample_model(name, seed=0)
    return _models[name]


def images_for(size: int, n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)

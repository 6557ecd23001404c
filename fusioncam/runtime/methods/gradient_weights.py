"""Grad-CAM, Grad-CAM++ and XGrad-CAM: channel weights from A and G, then norm(up(relu(sum_k w_k A_k)))."""

from __future__ import annotations

from .engine import Engine, MethodOutput


def gradcam(engine: Engine) -> MethodOutput:
    """Grad-CAM: w_k = mean over (i, j) of G_k."""
    return MethodOutput(engine.gradcam)


def gradcam_plus_plus(engine: Engine) -> MethodOutput:
    """Grad-CAM++: w_k = sum_ij alpha_k[i,j] * relu(G_k[i,j]), alpha 0 where its denominator is 0 (or, with
    compat="pytorch-grad-cam", 1e-6 added to that denominator)."""
    return MethodOutput(engine.channel_weighted_map(engine.gradcam_plus_plus_weights))


def xgradcam(engine: Engine) -> MethodOutput:
    """XGrad-CAM: w_k = sum_ij A_k[i,j] / (sum_ab A_k[a,b] + 1e-7) * G_k[i,j]."""
    return MethodOutput(engine.channel_weighted_map(engine.kernels.xgradcam_weights(engine.acts, engine.grads)))

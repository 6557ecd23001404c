"""Fusion-CAM (the algorithm page, steps 1 to 3) as a method that asks for two rounds of probes."""

from __future__ import annotations

from typing import Generator

from ..betas import normalized_pair
from .engine import Engine, MethodOutput
from .probes import MapProbe, Probe

SCORECAM_KEY = "scorecam"  # p(x * L_reg): one probe that Fusion-CAM and Union-CAM share


def scorecam_probe(engine: Engine) -> MapProbe:
    """p(x * L_reg) for every image."""
    return MapProbe(SCORECAM_KEY, engine.scorecam, engine.every_image)


def fusion(engine: Engine) -> Generator[list[Probe], list, MethodOutput]:
    """Denoise L_grad, weigh it against L_reg by normalised betas, fuse L_dr and L_reg pixel by pixel."""
    kernels, scorecam, b0 = engine.kernels, engine.scorecam, engine.b0
    denoised = kernels.percentile_denoise(engine.gradcam, engine.theta)
    p_den, p_reg = yield [MapProbe("fusion/denoised", denoised, engine.every_image), scorecam_probe(engine)]
    b_den, b_reg, degenerate_1 = normalized_pair(p_den - b0, p_reg - b0)
    combined = kernels.weighted_pair(denoised, scorecam, engine.as_weights(b_den), engine.as_weights(b_reg))
    (p_dr,) = yield [MapProbe("fusion/combined", combined, engine.every_image)]
    b_dr, b_reg2, degenerate_2 = normalized_pair(p_dr - b0, b_reg)
    fused = kernels.similarity_fusion(combined, scorecam, engine.as_weights(b_dr), engine.as_weights(b_reg2))
    return MethodOutput(
        fused,
        maps={"denoised": denoised, "combined": combined},
        facts={"betas": {"b_den": b_den, "b_reg": b_reg, "b_dr": b_dr, "b_reg2": b_reg2, "b0": b0},
               "degenerate": degenerate_1 | degenerate_2},
    )

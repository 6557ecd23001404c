"""Union-CAM: per-channel denoised gradients, un-normalised betas, and the better of L_dr and L_reg."""

from __future__ import annotations

from typing import Generator

from .engine import Engine, MethodOutput
from .fusion import scorecam_probe
from .probes import MapProbe, Probe


def unioncam(engine: Engine) -> Generator[list[Probe], list, MethodOutput]:
    """L_den from G' (each channel's values below its theta-th percentile zeroed), then b_dr * L_dr if b_dr > b_reg,
    else b_reg * L_reg, normalised."""
    kernels, scorecam, b0 = engine.kernels, engine.scorecam, engine.b0
    low = kernels.union_gradient_map(engine.acts, engine.grads, engine.theta)
    denoised = kernels.normalize(kernels.upsample(low, engine.out_hw))
    p_den, p_reg = yield [MapProbe("unioncam/denoised", denoised, engine.every_image), scorecam_probe(engine)]
    b_den, b_reg = p_den - b0, p_reg - b0
    combined = kernels.weighted_pair(denoised, scorecam, engine.as_weights(b_den), engine.as_weights(b_reg))
    (p_dr,) = yield [MapProbe("unioncam/combined", combined, engine.every_image)]
    b_dr = p_dr - b0
    keep_combined = b_dr > b_reg
    # norm(b * L) of the kept map: the other weight is 0, and 0 * L adds exactly nothing.
    xp = engine.xp
    chosen = kernels.weighted_pair(combined, scorecam, engine.as_weights(xp.where(keep_combined, b_dr, 0.0)),
                                   engine.as_weights(xp.where(keep_combined, 0.0, b_reg)))
    return MethodOutput(
        chosen,
        facts={"betas": {"b_den": b_den, "b_reg": b_reg, "b_dr": b_dr, "b0": b0}, "kept_combined": keep_combined},
    )

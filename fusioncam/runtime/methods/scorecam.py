"""Score-CAM: the engine's one shared sweep, softmax-weighted (the algorithm page, step 0)."""

from __future__ import annotations

from .engine import Engine, MethodOutput


def scorecam(engine: Engine) -> MethodOutput:
    """L_reg, from the sweep that Union-CAM and Fusion-CAM share."""
    return MethodOutput(engine.scorecam)

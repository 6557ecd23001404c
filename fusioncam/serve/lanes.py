"""Lanes: which queue and worker a request waits for, so cheap requests never wait behind Score-CAM sweeps.

A request whose methods all need only the explain pass (one forward and one backward: Grad-CAM, Grad-CAM++,
XGrad-CAM, or predictions alone) goes to the gradient lane; a request with any method that runs masked forwards
(the Score-CAM sweep, or probe rounds: Score-CAM, Group-CAM, Union-CAM, Fusion-CAM) goes to the sweep lane. Each
lane has its own workers and Explainers (batching.py), so a Grad-CAM request is answered while a sweep runs.
Which methods are cheap is read from the method registry, not listed here.
"""

from __future__ import annotations

import inspect

from ..runtime.methods.registry import REGISTRY

GRADIENT = "gradient"
SWEEP = "sweep"
SHARED = "shared"  # the one lane of a server started with --gradient-workers 0


def _needs_masked_forwards(name: str) -> bool:
    """True when the method reads the Score-CAM sweep, yields probe rounds (each a batch of masked forwards) or runs
    the head graph per channel or position (AblationCAM, ReciproCAM)."""
    method = REGISTRY[name]
    return (any(need in method.needs for need in ("scorecam", "sweep", "head"))
            or inspect.isgeneratorfunction(method.run))


GRADIENT_METHODS: frozenset[str] = frozenset(name for name in REGISTRY if not _needs_masked_forwards(name))


def lane_of(methods: tuple[str, ...], separate_lanes: bool = True) -> str:
    """The lane of a request asking for `methods` (() = predictions only)."""
    if not separate_lanes:
        return SHARED
    return GRADIENT if all(name in GRADIENT_METHODS for name in methods) else SWEEP


__all__ = ["GRADIENT", "GRADIENT_METHODS", "SHARED", "SWEEP", "lane_of"]

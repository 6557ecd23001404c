"""Step 2 of the algorithm page: class probabilities and contribution weights, with the degenerate rule."""

from __future__ import annotations

from ..kernels.array_math import array_module

PAIR_EPS = 1e-8
DEGENERATE_SUM = 1e-6


def normalized_pair(a, b):
    """(a, b) / (a + b + 1e-8); where a + b <= 1e-6 the pair is (0.5, 0.5) and flagged degenerate.

    Float64 [N] NumPy or CuPy arrays (the result stays where they are): (a', b', degenerate)."""
    xp = array_module(a, b)
    a = xp.asarray(a, dtype=xp.float64)
    b = xp.asarray(b, dtype=xp.float64)
    total = a + b
    degenerate = total <= DEGENERATE_SUM
    safe = xp.where(degenerate, 1.0, total + PAIR_EPS)
    return xp.where(degenerate, 0.5, a / safe), xp.where(degenerate, 0.5, b / safe), degenerate


def class_probabilities(xp, logits, classes):
    """softmax(logits)[row, classes[row]] in float64 with the max subtracted; stays on the logits' device."""
    logits = logits.astype(xp.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = xp.exp(shifted)
    return exp[xp.arange(logits.shape[0]), classes] / exp.sum(axis=1)

"""Step 2 of the algorithm page: class probabilities and contribution weights, with the degenerate rule."""

from __future__ import annotations

import numpy as np

PAIR_EPS = 1e-8
DEGENERATE_SUM = 1e-6


def normalized_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b) / (a + b + 1e-8); where a + b <= 1e-6 the pair is (0.5, 0.5) and flagged degenerate."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    total = a + b
    degenerate = total <= DEGENERATE_SUM
    safe = np.where(degenerate, 1.0, total + PAIR_EPS)
    return np.where(degenerate, 0.5, a / safe), np.where(degenerate, 0.5, b / safe), degenerate


def class_probabilities(xp, logits, classes):
    """softmax(logits)[row, classes[row]] in float64 with the max subtracted; stays on the logits' device."""
    logits = logits.astype(xp.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = xp.exp(shifted)
    return exp[xp.arange(logits.shape[0]), classes] / exp.sum(axis=1)

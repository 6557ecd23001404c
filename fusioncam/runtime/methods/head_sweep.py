"""Rows of perturbed target-layer activations through the head graph, batched like the Score-CAM sweep."""

from __future__ import annotations

from typing import Callable

import numpy as np

from ...errors import InputError
from ..batch_plan import row_ranges
from .engine import Engine

RowWriter = Callable[[int, int, np.ndarray], None]  # (start, stop, buffer): rows start .. stop-1 into buffer[:stop-start]


def head_logits(engine: Engine, total: int, write: RowWriter, method: str) -> np.ndarray:
    """float32 [total, classes] (host): the head graph's logits for `total` rows of activations that `write` puts
    into a [batch, K, h, w] buffer, run by run (the Explainer's batch size; one exact remainder)."""
    if engine.head is None or engine.logits is None or engine.logits.ndim != 2:
        raise InputError(f"{method} runs on a classifier bundle's head graph; this bundle's task has none (use the "
                         f"other methods for segmentation and detection bundles)")
    batch = max(1, int(engine.scorer.backend.batch_size))
    buffer = np.empty((min(batch, max(total, 1)), *engine.acts.shape[1:]), dtype=np.float32)
    out = np.empty((total, int(engine.logits.shape[1])), dtype=np.float32)
    for start, stop in row_ranges(total, buffer.shape[0], padded=False):
        engine.clock.start("mask_generation")
        write(start, stop, buffer)
        engine.clock.stop("mask_generation")
        engine.clock.start("scorer_forwards")
        out[start:stop] = engine.head.logits(buffer[: stop - start])
        engine.clock.stop("scorer_forwards")
    return out

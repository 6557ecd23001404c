"""Recipro-CAM (Byun and Lee, 2022) on the head graph: for each spatial position (i, j) of the target layer, the
activations kept at that position only (every channel, zeros elsewhere: OpenVINO XAI's ReciproCAM mosaic for CNNs,
the paper's plain mosaic) go through the head; the target class's softmax probability per position (the paper's
scores; OpenVINO XAI takes the model's own output, its softmax when the graph has one) is the h x w map, then
norm(up(.)). h * w head-graph forwards per image, none through the backbone.

Positions whose activations are all zero give the same all-zeros mosaic: one forward serves them all.
The paper's Gaussian-neighbourhood variant (a 3 x 3 Gaussian around the kept position) is not offered yet.
"""

from __future__ import annotations

import numpy as np

from .engine import Engine, MethodOutput
from .head_sweep import head_logits


def softmax_at(logits: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """float64 [rows]: softmax(logits)[row, classes[row]], computed stably."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp[np.arange(logits.shape[0]), classes] / exp.sum(axis=1)


def position_scores(engine: Engine) -> np.ndarray:
    """float32 [N, h, w] (host): the target probability with the activations kept at each position alone."""
    scorer = engine.scorer
    acts = np.ascontiguousarray(scorer.to_host(engine.acts), dtype=np.float32)
    classes = scorer.to_host(engine.explained_classes).astype(np.int64)
    n, _, h, w = acts.shape
    flat = acts.reshape(n, acts.shape[1], h * w)
    active = np.ones((n, h * w), dtype=bool)
    if engine.skip_constant:
        active = (flat != 0).any(axis=1)
    images, positions = np.nonzero(active)
    empty = np.nonzero(~active.all(axis=1))[0]  # images with an all-zeros position: one zero mosaic each
    row_images = np.concatenate([images, empty])

    def write(start: int, stop: int, buffer: np.ndarray) -> None:
        view = buffer[: stop - start].reshape(stop - start, acts.shape[1], h * w)
        view[:] = 0
        for row in range(start, stop):
            if row < images.shape[0]:
                view[row - start, :, positions[row]] = flat[images[row], :, positions[row]]

    logits = head_logits(engine, int(row_images.shape[0]), write, "ReciproCAM")
    probabilities = softmax_at(logits, classes[row_images])
    scores = np.empty((n, h * w), dtype=np.float64)
    scores[empty] = probabilities[images.shape[0]:, None]
    scores[images, positions] = probabilities[: images.shape[0]]
    return scores.reshape(n, h, w).astype(np.float32)


def reciprocam(engine: Engine) -> MethodOutput:
    """The Recipro-CAM map: per-position target probabilities, upsampled and normalised."""
    low = engine.scorer.asarray(position_scores(engine))
    return MethodOutput(engine.low_resolution_map(low))

"""Recipro-CAM (Byun and Lee, 2022) on the head graph: for each spatial position (i, j) of the target layer, the
activations kept at that position only (every channel, zeros elsewhere: OpenVINO XAI's ReciproCAM mosaic for CNNs,
the paper's plain mosaic) go through the head; the target class's softmax probability per position (the paper's
scores; OpenVINO XAI takes the model's own output, its softmax when the graph has one) is the h x w map, then
norm(up(.)). h * w head-graph forwards per image, none through the backbone.

`reciprocam-gaussian` is the paper's Gaussian variant (its code's `is_gaussian`, OpenVINO XAI's ViT `use_gaussian`):
the kept position's 3 x 3 neighbourhood, weighted by [[1, 2, 1], [2, 4, 2], [1, 2, 1]] / 16, positions outside the
map dropped. A mosaic whose kept positions are all zero is the all-zeros one: one forward serves them all.
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


GAUSSIAN = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float32) / 16


def mosaic_weights(h: int, w: int, gaussian: bool) -> np.ndarray:
    """float32 [h*w, h*w]: row p weighs each position of the mosaic that keeps position p (the identity, or the
    3 x 3 Gaussian around p clipped to the map)."""
    if not gaussian:
        return np.eye(h * w, dtype=np.float32)
    weights = np.zeros((h * w, h + 2, w + 2), dtype=np.float32)
    for p in range(h * w):
        weights[p, p // w : p // w + 3, p % w : p % w + 3] = GAUSSIAN
    return weights[:, 1:-1, 1:-1].reshape(h * w, h * w)


def position_scores(engine: Engine, gaussian: bool = False) -> np.ndarray:
    """float32 [N, h, w] (host): the target probability with the activations kept at each position alone (with
    `gaussian`, at its Gaussian-weighted 3 x 3 neighbourhood)."""
    scorer = engine.scorer
    acts = np.ascontiguousarray(scorer.to_host(engine.acts), dtype=np.float32)
    classes = scorer.to_host(engine.explained_classes).astype(np.int64)
    n, _, h, w = acts.shape
    flat = acts.reshape(n, acts.shape[1], h * w)
    weights = mosaic_weights(h, w, gaussian)
    active = np.ones((n, h * w), dtype=bool)
    if engine.skip_constant:  # a mosaic that keeps only all-zero positions is all zeros
        active = ((flat != 0).any(axis=1).astype(np.float32) @ (weights != 0).T.astype(np.float32)) > 0
    images, positions = np.nonzero(active)
    empty = np.nonzero(~active.all(axis=1))[0]  # images with an all-zeros mosaic: one forward each
    row_images = np.concatenate([images, empty])

    def write(start: int, stop: int, buffer: np.ndarray) -> None:
        view = buffer[: stop - start].reshape(stop - start, acts.shape[1], h * w)
        kept = min(stop, images.shape[0]) - start  # rows before `kept` are mosaics, the rest all-zeros rows
        if kept > 0:
            np.multiply(flat[images[start : start + kept]], weights[positions[start : start + kept]][:, None, :],
                        out=view[:kept])
        view[max(kept, 0):] = 0

    logits = head_logits(engine, int(row_images.shape[0]), write, "ReciproCAM")
    probabilities = softmax_at(logits, classes[row_images])
    scores = np.empty((n, h * w), dtype=np.float64)
    scores[empty] = probabilities[images.shape[0]:, None]
    scores[images, positions] = probabilities[: images.shape[0]]
    return scores.reshape(n, h, w).astype(np.float32)


def reciprocam(engine: Engine) -> MethodOutput:
    """The Recipro-CAM map: per-position target probabilities, upsampled and normalised."""
    return MethodOutput(engine.low_resolution_map(engine.scorer.asarray(position_scores(engine))))


def reciprocam_gaussian(engine: Engine) -> MethodOutput:
    """The Recipro-CAM map with the Gaussian-weighted neighbourhood mosaic."""
    return MethodOutput(engine.low_resolution_map(engine.scorer.asarray(position_scores(engine, gaussian=True))))

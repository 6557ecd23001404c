"""Ablation-CAM (Desai and Ramaswamy, WACV 2020) on the head graph: channel k's weight is the relative drop of the
target logit when channel k of the target layer's activations is ablated, w_k = (y_c - y_c^k) / y_c; the map is
norm(up(relu(sum_k w_k A_k))). Each ablation is one head-graph forward, not a whole-network one.

The ablated value is 0 (the paper). compat="pytorch-grad-cam" follows pytorch-grad-cam 1.5.7's AblationLayer: 0 when
the image's smallest activation is 0, else that minimum - 1e7 (its in-place loop lowers the minimum again for each
further row of a batch; that cascade, which depends on its batch size, is not reproduced). A channel whose values all
equal the ablated value changes nothing: its score is the unablated logit exactly, and no forward runs for it.
"""

from __future__ import annotations

import numpy as np

from .compat import PYTORCH_GRAD_CAM
from .engine import Engine, MethodOutput
from .head_sweep import head_logits

PYTORCH_GRAD_CAM_ABLATION_OFFSET = 1e7  # pytorch-grad-cam's ABLATION_VALUE for activations that go below 0


def ablation_values(acts: np.ndarray, compat: str | None) -> np.ndarray:
    """float32 [N]: the value an ablated channel of each image is set to (see the module docstring)."""
    if compat != PYTORCH_GRAD_CAM:
        return np.zeros(acts.shape[0], dtype=np.float32)
    lowest = acts.reshape(acts.shape[0], -1).min(axis=1)
    return np.where(lowest == 0, 0, lowest - np.float32(PYTORCH_GRAD_CAM_ABLATION_OFFSET)).astype(np.float32)


def ablation_weights(engine: Engine) -> np.ndarray:
    """float32 [N, K] (host): (y_c - y_c^k) / y_c for every channel k of every image."""
    scorer = engine.scorer
    acts = np.ascontiguousarray(scorer.to_host(engine.acts), dtype=np.float32)
    classes = scorer.to_host(engine.explained_classes).astype(np.int64)
    n, k = acts.shape[:2]
    original = scorer.to_host(engine.logits)[np.arange(n), classes].astype(np.float32)
    values = ablation_values(acts, engine.compat)
    active = np.ones((n, k), dtype=bool)
    if engine.skip_constant:
        active = ~(acts == values[:, None, None, None]).all(axis=(2, 3))
    images, channels = np.nonzero(active)

    def write(start: int, stop: int, buffer: np.ndarray) -> None:
        rows = np.arange(stop - start)
        buffer[rows] = acts[images[start:stop]]
        buffer[rows, channels[start:stop]] = values[images[start:stop], None, None]

    ablated = np.repeat(original[:, None], k, axis=1)
    logits = head_logits(engine, int(images.shape[0]), write, "AblationCAM")
    ablated[images, channels] = logits[np.arange(images.shape[0]), classes[images]]
    return (original[:, None] - ablated) / original[:, None]


def ablationcam(engine: Engine) -> MethodOutput:
    """The Ablation-CAM map from the head graph's channel ablations."""
    weights = ablation_weights(engine)
    return MethodOutput(engine.channel_weighted_map(engine.as_weights(weights)))

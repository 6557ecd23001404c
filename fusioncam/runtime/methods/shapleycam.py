"""ShapleyCAM (Cai et al., 2025): Grad-CAM with channel weights w_k = mean_ij (G - 0.5 * H A)_k.

G = dy_c/dA and H A, the Hessian of y_c with respect to the target layer's activations A times A, both from the
bundle's ShapleyCAM graph (export/hessian_vector.py: the explain graph differentiated a second time, built on first
use by runtime/derived_graphs.py): one more explain pass of the N images for their explained classes. Where the
network between the target layer and the logits is piecewise linear (ReLU, max-pool, convolutions, a linear head:
a ResNet's), H A is exactly 0, no pass runs, and the map is Grad-CAM's, as pytorch-grad-cam 1.5.7's autograd gives.
The map is norm(up(relu(sum_k w_k A_k))), the same with compat="pytorch-grad-cam".
"""

from __future__ import annotations

import numpy as np

from ...errors import InputError
from .engine import Engine, MethodOutput


def shapleycam(engine: Engine) -> MethodOutput:
    """ShapleyCAM's map [N, H, W] (device); facts["hessian_vector_zero"] says whether H A was exactly 0."""
    if engine.derived is None or engine.logits is None or engine.logits.ndim != 2:  # class scores [N, C]
        raise InputError("shapleycam runs on a classifier bundle's second-derivative graph; this bundle's task has "
                         "none (use the other methods for segmentation and detection bundles)")
    scorer = engine.scorer
    classes = scorer.to_host(engine.explained_classes).astype(np.int64)
    passed = engine.derived.hessian_vector(scorer.to_host(engine.images), classes)
    if passed is None:
        weights = engine.gradcam_weights
    else:
        grads, product = passed
        weights = scorer.asarray((grads - np.float32(0.5) * product).mean(axis=(2, 3), dtype=np.float64))
    zero = np.full(classes.shape[0], passed is None)
    return MethodOutput(engine.channel_weighted_map(weights), facts={"hessian_vector_zero": scorer.asarray(zero)})

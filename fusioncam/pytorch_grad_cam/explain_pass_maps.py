"""pytorch-grad-cam's low-resolution layer maps computed from the explain pass alone, for the methods whose weights
come from activations and gradients: the channel sum of the method's weighted activations, or with eigen_smooth
their first principal component (pytorch-grad-cam's get_2d_projection: channels centred, NumPy's SVD and its sign).

One explain pass per layer, no method run; the weighted activations are each method's as pytorch-grad-cam forms them
(weights from fusioncam's kernels). cam_classes.py uses them for eigen_smooth, and for several target layers, where
pytorch-grad-cam scales each layer's low-resolution map before upsampling it (the engine's maps are scaled after).
Eigen-CAM, EigenGrad-CAM and KPCA-CAM are projections already and pytorch-grad-cam ignores eigen_smooth for them.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..graph_names import ACTIVATIONS, GRADIENTS, LOGITS
from ..kernels.array_math import gradcam_weights, xgradcam_weights
from ..kernels.pytorch_grad_cam_math import lapack_centered_projection, plus_plus_weights
from ..runtime import Explainer
from ..runtime.several_layers import extra_output_names

WEIGHTED_ACTIVATIONS = {
    "gradcam": lambda a, g: gradcam_weights(g).astype(np.float32)[:, :, None, None] * a,
    "gradcam++": lambda a, g: plus_plus_weights(a, g).astype(np.float32)[:, :, None, None] * a,
    "xgradcam": lambda a, g: xgradcam_weights(a, g).astype(np.float32)[:, :, None, None] * a,
    "hirescam": lambda a, g: g * a,
    "gradcam-elementwise": lambda a, g: np.maximum(g * a, 0),
    "layercam": lambda a, g: np.maximum(g, 0) * a,
}
PROJECTIONS_ALREADY = ("eigencam", "eigengradcam", "kpcacam")
GRADIENT_PROJECTIONS = {"eigengradcam": lambda a, g: a * g}  # projected as they are (no eigen_smooth: one already)


def check_eigen_smooth(method: str, class_name: str) -> None:
    """An InputError for a class whose eigen_smooth fusioncam does not compute (Score-CAM's and the sweep methods'
    weights come from scorer runs, not from the explain pass)."""
    if method not in WEIGHTED_ACTIVATIONS and method not in PROJECTIONS_ALREADY:
        supported = ", ".join(sorted(WEIGHTED_ACTIVATIONS))
        raise InputError(f"eigen_smooth=True is not available for {class_name} (method '{method}'); it is for the "
                         f"methods whose weights come from the explain pass alone: {supported}")


def explain_pass(explainer: Explainer, images: np.ndarray, classes, regions, seeded=None, seeds=None
                 ) -> dict[str, np.ndarray]:
    """The explain graph's logits, activations [N, K, h, w] and gradients for these targets, on the host; with
    `seeded` (a target_seed_graph.SeededExplain) and seed weights [N, 3], the gradients of those targets. A
    several-layer bundle's further layers come from the same pass (activations/1, ...; several_layers.layer_view)."""
    names = (LOGITS, ACTIVATIONS, GRADIENTS, *extra_output_names(explainer.bundle))
    if seeded is not None:
        n = int(images.shape[0])
        target = np.full(n, -1, np.int64) if classes is None else np.asarray(classes, np.int64)
        return {name: np.asarray(value, dtype=np.float32) for name, value in seeded.run(images, target, seeds).items()
                if name in names}
    manifest = explainer.bundle.manifest
    feed = explainer.task.explain_feed(manifest, int(images.shape[0]), classes, regions, explainer.class_names)
    backend = explainer.backend
    with explainer._in_use("explain"):
        graph = backend.explain(backend.asarray(images), explainer._device_feed(feed))
        return {name: np.asarray(backend.to_host(graph[name]), dtype=np.float32) for name in names}


def layer_map(method: str, outputs: dict[str, np.ndarray], eigen_smooth: bool) -> np.ndarray:
    """The low-resolution map [N, h, w] before the ReLU: the channel sum of the method's weighted activations, or
    with eigen_smooth their first principal component (EigenGrad-CAM: always the projection of A * dy/dA)."""
    if method in GRADIENT_PROJECTIONS:
        products = GRADIENT_PROJECTIONS[method](outputs[ACTIVATIONS], outputs[GRADIENTS])
        return np.asarray(lapack_centered_projection(products), dtype=np.float32)
    weighted = WEIGHTED_ACTIVATIONS[method](outputs[ACTIVATIONS], outputs[GRADIENTS])
    if eigen_smooth:
        return np.asarray(lapack_centered_projection(weighted), dtype=np.float32)
    return weighted.sum(axis=1, dtype=np.float32)

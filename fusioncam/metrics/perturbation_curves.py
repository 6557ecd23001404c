"""Deletion and insertion (the RISE protocol): class probability as the map's top pixels are removed or revealed."""

from __future__ import annotations

import numpy as np

from .inputs import checked_inputs, checked_step
from .perturbation_batches import row_probabilities, target_classes

DEFAULT_STEP = 224
BLUR_KSIZE, BLUR_SIGMA = 51, 50.0  # insertion's baseline: the blurred image


def step_counts(plane: int, step: int) -> np.ndarray:
    """Pixels changed at each step: 0, step, 2*step, ... and finally all `plane` pixels."""
    return np.append(np.arange(0, plane, step), plane).astype(np.int64)


def pixel_ranks(xp, maps):
    """int32 [N, H*W]: each pixel's place in its map's descending order (0 = highest), ties in row-major order."""
    n = maps.shape[0]
    flat = maps.reshape(n, -1)
    stable = {"kind": "stable"} if xp is np else {}  # CuPy's argsort is always stable and takes no kind
    order = xp.argsort(-flat, axis=1, **stable)
    ranks = xp.empty(flat.shape, dtype=xp.int32)
    ranks[xp.arange(n)[:, None], order] = xp.arange(flat.shape[1], dtype=xp.int32)[None, :]
    return ranks


def trapezoid_auc(x: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Area under each row of p [N, S] over x [S] by the trapezoid rule."""
    return ((p[:, 1:] + p[:, :-1]) * 0.5 * np.diff(x)).sum(axis=1)


def _curve(explainer, images, maps, targets, step, insertion: bool) -> tuple[np.ndarray, np.ndarray]:
    """(x [S], p [N, S]): the fraction of pixels changed and the class probability after each step."""
    backend = explainer.backend
    xp, kernels = backend.xp, backend.kernels
    with backend.context():
        images, maps, targets = checked_inputs(explainer, images, maps, targets)
        n, _, height, width = images.shape
        counts = step_counts(height * width, checked_step(step, height * width))
        steps = len(counts)
        classes = target_classes(backend, images, targets)
        ranks = pixel_ranks(xp, maps)
        device_counts = backend.asarray(counts.astype(np.int32))
        baselines = kernels.gaussian_blurred_images(images, BLUR_KSIZE, BLUR_SIGMA) if insertion else None

        def write(rows, buffer) -> None:
            image_index = rows // steps
            changed = (ranks[image_index] < device_counts[rows % steps][:, None]).reshape(-1, height, width)
            if insertion:
                kernels.write_blended_inputs(images, baselines, changed.astype(xp.float32), image_index, buffer, 0)
            else:
                kernels.write_map_masked_inputs(images, (~changed).astype(xp.float32), image_index, buffer, 0)

        p = row_probabilities(backend, n * steps, xp.repeat(classes, steps), write)
        return counts / (height * width), backend.to_host(p).reshape(n, steps)


def deletion_curve(explainer, images, maps, targets=None, step: int = DEFAULT_STEP) -> tuple[np.ndarray, np.ndarray]:
    """(x [S], p [N, S]): probability as the map's top pixels are set to 0 (the mean colour), `step` at a time."""
    return _curve(explainer, images, maps, targets, step, insertion=False)


def insertion_curve(explainer, images, maps, targets=None, step: int = DEFAULT_STEP) -> tuple[np.ndarray, np.ndarray]:
    """(x [S], p [N, S]): probability as the map's top pixels are revealed on a blurred copy (51x51, sigma 50)."""
    return _curve(explainer, images, maps, targets, step, insertion=True)


def deletion_auc(explainer, images, maps, targets=None, step: int = DEFAULT_STEP) -> np.ndarray:
    """float64 [N]: area under each image's deletion curve (lower is better)."""
    return trapezoid_auc(*deletion_curve(explainer, images, maps, targets, step))


def insertion_auc(explainer, images, maps, targets=None, step: int = DEFAULT_STEP) -> np.ndarray:
    """float64 [N]: area under each image's insertion curve (higher is better)."""
    return trapezoid_auc(*insertion_curve(explainer, images, maps, targets, step))

"""Deletion and insertion (the RISE protocol): class probability as the map's top pixels are removed or revealed."""

from __future__ import annotations

import numpy as np

from ..kernels import Array
from ..runtime.scorer import Scorer
from .inputs import checked_inputs, checked_step
from .perturbation_batches import target_classes

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


def insertion_baselines(scorer: Scorer, images: Array) -> Array:
    """Insertion's starting point: each image Gaussian-blurred (51x51, sigma 50), on the device."""
    return scorer.kernels.gaussian_blurred_images(images, BLUR_KSIZE, BLUR_SIGMA)


def curve_probabilities(scorer: Scorer, images: Array, maps: Array, classes: Array, counts: np.ndarray,
                        baselines: Array | None = None) -> np.ndarray:
    """p [N, S] on the host: each image's class probability after its map's top counts[s] pixels are deleted (set
    to 0), or, given insertion `baselines`, revealed on the baseline. Call inside scorer.in_use()."""
    xp, kernels = scorer.xp, scorer.kernels
    n, _, height, width = images.shape
    steps = len(counts)
    ranks = pixel_ranks(xp, maps)
    device_counts = scorer.asarray(counts.astype(np.int32))

    def write(start: int, stop: int, buffer) -> None:
        rows = xp.arange(start, stop, dtype=xp.int64)
        image_index = rows // steps
        changed = (ranks[image_index] < device_counts[rows % steps][:, None]).reshape(-1, height, width)
        if baselines is not None:
            kernels.write_blended_inputs(images, baselines, changed.astype(xp.float32), image_index, buffer, 0)
        else:
            kernels.write_map_masked_inputs(images, (~changed).astype(xp.float32), image_index, buffer, 0)

    p = scorer.class_probabilities(n * steps, classes[xp.repeat(xp.arange(n), steps)], write)
    return scorer.to_host(p).reshape(n, steps)


def _curve(explainer, images, maps, targets, step, insertion: bool) -> tuple[np.ndarray, np.ndarray]:
    """(x [S], p [N, S]): the fraction of pixels changed and the class probability after each step."""
    with explainer.scorer.in_use("score perturbed images") as scorer:
        images, maps, targets = checked_inputs(explainer, images, maps, targets)
        plane = int(images.shape[2] * images.shape[3])
        counts = step_counts(plane, checked_step(step, plane))
        classes = target_classes(scorer, images, targets)
        baselines = insertion_baselines(scorer, images) if insertion else None
        return counts / plane, curve_probabilities(scorer, images, maps, classes, counts, baselines)


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

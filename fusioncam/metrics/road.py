"""ROAD, RemOve And Debias (Rong et al., ICML 2022), as pytorch-grad-cam 1.5.7 computes it with
ClassifierOutputSoftmaxTarget: how a class probability changes when a map's most (MoRF) or least (LeRF) relevant
pixels are removed and filled in by noisy linear imputation (fusioncam/metrics/road_imputation.py).

At percentile p the threshold is np.percentile(map, p) (float32), the pixels kept are those with map < threshold
and the others are imputed; LeRF does the same on 1 - map. Each score is P(imputed) - P(image); MoRF and LeRF are
their means over the percentiles (default 10, 20, ..., 90), and combined = (LeRF - MoRF) / 2. Lower MoRF, higher
LeRF and higher combined are better. Note pytorch-grad-cam's strict `<`: where more than p % of a map's pixels tie
at its minimum, MoRF removes every pixel, and the image becomes 0 + noise.

The noise (noise * a standard normal, absolute, in the model's normalised input space) comes from a NumPy Generator
seeded by `seed` and a hash of the image's bytes, so one image gets the same noise in `fusioncam evaluate` and in
`fusioncam explain-dataset`, whatever else is in its batch.

Cost: 2 * len(percentiles) imputed images per image and method, each one sparse solve on the host and one scorer
row. benchmarks/road_imputation.py measures the solve per image (half of the pixels removed as a smooth blob, 3
channels) side by side with pytorch-grad-cam's lil_matrix + spsolve; benchmarks/results/road-imputation-cpu-2cores.md
was measured on 2026-12-07 on the shared 2-core development machine at a load average near 30, so its absolute
times are several times an idle machine's: 28x28, banded Cholesky 5.0 ms, SuperLU 8.9 ms, pytorch-grad-cam 27 ms;
64x64: 32 / 46 / 155 ms; 224x224 (25,088 unknowns): 3.0 / 4.6 / 11.7 s. (An earlier run of the same comparison at
a load average near 18 gave 1.7 / 3.9 / 11 ms at 28x28.) A direct solve is feasible at every size; a
Jacobi-preconditioned conjugate gradient on the stencil (1e-9: 75 iterations at 28x28, 525 at 224x224) took 4-9x
as long as SuperLU, so the imputation is exact to float64 rounding (banded and SuperLU agree to 1e-7).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..kernels import Array
from ..runtime.scorer import Scorer
from .inputs import checked_inputs
from .perturbation_batches import image_predictions
from .road_imputation import image_noise_key, imputation_noise, imputed_images

ROAD_PERCENTILES: tuple[int, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90)
ROAD_NOISE = 0.01


@dataclass
class RoadScores:
    """Per image float64: P(imputed) - P(image) at each percentile [N, P] for MoRF and LeRF, their means [N] and
    combined = (LeRF - MoRF) / 2 [N]."""

    percentiles: tuple[int, ...]
    morf_differences: np.ndarray
    lerf_differences: np.ndarray
    morf: np.ndarray
    lerf: np.ndarray
    combined: np.ndarray


def checked_percentiles(percentiles) -> tuple[int, ...]:
    """The percentiles as a tuple of distinct ints strictly between 0 and 100, in the order given."""
    if isinstance(percentiles, (str, bytes)) or not isinstance(percentiles, Sequence):
        raise InputError(f"ROAD percentiles must be a sequence of ints between 1 and 99, e.g. {list(ROAD_PERCENTILES)}; "
                         f"got {percentiles!r}")
    if len(percentiles) == 0:
        raise InputError(f"ROAD percentiles are empty; give at least one int between 1 and 99, e.g. "
                         f"{list(ROAD_PERCENTILES)}")
    for value in percentiles:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise InputError(f"ROAD percentile {value!r} is not an int; give ints between 1 and 99, e.g. "
                             f"{list(ROAD_PERCENTILES)}")
        if not 0 < int(value) < 100:
            raise InputError(f"ROAD percentile {value} is outside (0, 100): at 0 or 100 no pixel or every pixel "
                             f"is removed; give ints between 1 and 99")
    result = tuple(int(value) for value in percentiles)
    if len(set(result)) != len(result):
        raise InputError(f"ROAD percentiles {list(result)} repeat a value; give each percentile once")
    return result


def checked_noise(noise) -> float:
    """The imputation noise: a finite float >= 0 (0 gives the pure linear imputation)."""
    if isinstance(noise, (bool, np.bool_)) or not isinstance(noise, (int, float, np.integer, np.floating)):
        raise InputError(f"ROAD noise must be a number >= 0 (the default is {ROAD_NOISE}); got {noise!r}")
    if not np.isfinite(noise) or noise < 0:
        raise InputError(f"ROAD noise must be finite and >= 0 (the default is {ROAD_NOISE}); got {noise}")
    return float(noise)


def checked_seed(seed) -> int:
    """The noise seed: an int >= 0."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"ROAD seed must be an int >= 0; got {seed!r}")
    return int(seed)


def road_thresholds(maps: np.ndarray, percentiles: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(MoRF, LeRF) float32 thresholds [N, P] of host float32 maps [N, H, W]: np.percentile of each map and of
    1 - map, as pytorch-grad-cam takes them."""
    flat = maps.reshape(maps.shape[0], -1)
    morf = np.percentile(flat, percentiles, axis=1).T.astype(np.float32)
    lerf = np.percentile(np.float32(1) - flat, percentiles, axis=1).T.astype(np.float32)
    return morf, lerf


def removed_pixels(map_: np.ndarray, threshold: np.float32, least_relevant_first: bool) -> np.ndarray:
    """bool [H, W]: the pixels one ROAD perturbation imputes, those not below the threshold (of 1 - map for LeRF)."""
    ranked = np.float32(1) - map_ if least_relevant_first else map_
    return ~(ranked < threshold)


def road_probabilities(scorer: Scorer, images: Array, maps: Array, classes: Array, percentiles: Sequence[int],
                       noise: float, seed: int) -> np.ndarray:
    """float64 [N, 2, P] on the host: each image's class probability after the MoRF ([:, 0]) and LeRF ([:, 1])
    imputation at each percentile. The imputation runs on the host one scorer batch at a time (so host memory
    stays one batch of images), and the imputed images go to the scorer's device. Call inside scorer.in_use()."""
    host_images = scorer.to_host(images)
    host_maps = scorer.to_host(maps).astype(np.float32)
    n, channels = host_images.shape[:2]
    count = len(percentiles)
    thresholds = road_thresholds(host_maps, percentiles)
    keys = [image_noise_key(image) for image in host_images] if noise > 0 else [0] * n
    per_image = 2 * count

    def write(start: int, stop: int, buffer) -> None:
        rows = np.arange(start, stop)
        image_index, direction, which = rows // per_image, (rows % per_image) // count, rows % count
        removed = np.stack([removed_pixels(host_maps[i], thresholds[d][i, k], bool(d))
                            for i, d, k in zip(image_index, direction, which)])
        noises = [imputation_noise(seed, keys[i], d * 100 + percentiles[k], (channels, int(mask.sum())), noise)
                  for i, d, k, mask in zip(image_index, direction, which, removed)]
        buffer[: stop - start] = scorer.asarray(imputed_images(host_images[image_index], removed, noises))

    row_classes = classes[scorer.xp.repeat(scorer.xp.arange(n), per_image)]
    p = scorer.class_probabilities(n * per_image, row_classes, write)
    return scorer.to_host(p).reshape(n, 2, count)


def scores_from_probabilities(after: np.ndarray, on_image: np.ndarray, percentiles: tuple[int, ...]) -> RoadScores:
    """RoadScores from road_probabilities' [N, 2, P] and the unperturbed probabilities Y [N]."""
    differences = after - on_image[:, None, None]
    morf, lerf = differences[:, 0].mean(axis=1), differences[:, 1].mean(axis=1)
    return RoadScores(percentiles, differences[:, 0], differences[:, 1], morf, lerf, (lerf - morf) / 2)


def checked_classification(explainer) -> None:
    """ROAD reads class probabilities: another task's bundle is refused, naming its task."""
    task = explainer.task.name
    if task != "classification":
        raise InputError(f"ROAD scores image classes (softmax probabilities after imputation); "
                         f"{explainer.bundle.path} is a {task} bundle, which ROAD does not cover: use a "
                         f"classification bundle")


def road_scores(explainer, images, maps, targets=None, percentiles: Sequence[int] = ROAD_PERCENTILES,
                noise: float = ROAD_NOISE, seed: int = 0) -> RoadScores:
    """ROAD MoRF, LeRF and combined per image for maps [N, H, W] of preprocessed images [N, 3, H, W] (targets as the
    other metrics take them: None or -1 is the image's arg-max class), scored by the explainer's batched scorer."""
    checked_classification(explainer)
    percentiles = checked_percentiles(percentiles)
    noise, seed = checked_noise(noise), checked_seed(seed)
    with explainer.scorer.in_use("score ROAD imputations") as scorer:
        images, maps, targets = checked_inputs(explainer, images, maps, targets)
        classes, on_image = image_predictions(scorer, images, targets)
        after = road_probabilities(scorer, images, maps, classes, percentiles, noise, seed)
        return scores_from_probabilities(after, scorer.to_host(on_image), percentiles)


def refuse_road(task: str, road_percentiles) -> None:
    """An InputError where ROAD is asked of a task it does not cover (every task but classification)."""
    if road_percentiles is not None:
        raise InputError(f"ROAD (--road) scores image classes: it applies to classification bundles only; this model "
                         f"explains a {task} task, so leave ROAD off")

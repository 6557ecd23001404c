"""Bootstrap intervals for per-image metric values, and paired comparisons of two methods on the same images.

A mean over images is reported with a 95% percentile-bootstrap interval: the images are resampled with
replacement `resamples` times (a fixed seed, so a rerun gives the same interval) and the interval is the 2.5th and
97.5th percentiles of the resampled means. A comparison of two methods is paired: the per-image difference
(method A minus method B on the same image and class) is bootstrapped, which removes the image-to-image spread that
makes two methods' unpaired intervals overlap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InputError

DEFAULT_RESAMPLES = 10_000
_CHUNK = 500  # resamples drawn at once: 500 x n int64 indices (40 MB at n = 10,000)


@dataclass(frozen=True)
class Interval:
    """A mean and its bootstrap interval (`level`, e.g. 0.95), over n values."""

    mean: float
    low: float
    high: float
    n: int
    level: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PairedDifference:
    """Method A minus method B per image: the mean difference with its interval, and how often A is ahead.

    `a_better` / `b_better` count images where A's value is better / worse than B's in the metric's own direction
    (lower for Average Drop and deletion, higher for the others); ties are neither. `separates` is True when the
    interval excludes 0."""

    difference: Interval
    a_better: int
    b_better: int
    separates: bool

    def as_dict(self) -> dict:
        return {"difference": self.difference.as_dict(), "a_better": self.a_better, "b_better": self.b_better,
                "separates": self.separates}


def bootstrap_mean(values, resamples: int = DEFAULT_RESAMPLES, level: float = 0.95, seed: int = 0) -> Interval:
    """The mean of `values` (finite numbers, NaN rows dropped) with its percentile-bootstrap interval."""
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[~np.isnan(values)]
    if values.size == 0:
        raise InputError("no values to bootstrap: every value is NaN or the list is empty")
    if not 0.0 < level < 1.0:
        raise InputError(f"level must lie between 0 and 1; got {level}")
    if int(resamples) < 1:
        raise InputError(f"resamples must be at least 1; got {resamples}")
    mean = float(values.mean())
    if values.size == 1:
        return Interval(mean, mean, mean, 1, level)
    rng = np.random.default_rng(seed)
    means = np.empty(int(resamples), dtype=np.float64)
    for start in range(0, int(resamples), _CHUNK):
        stop = min(start + _CHUNK, int(resamples))
        picks = rng.integers(0, values.size, size=(stop - start, values.size))
        means[start:stop] = values[picks].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return Interval(mean, float(low), float(high), int(values.size), level)


def paired_difference(a, b, higher_is_better: bool, resamples: int = DEFAULT_RESAMPLES, level: float = 0.95,
                      seed: int = 0) -> PairedDifference:
    """A minus B on the same images (rows where either is NaN dropped), bootstrapped as pairs."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise InputError(f"paired values need one value per image for both methods; got {a.size} and {b.size}")
    both = ~(np.isnan(a) | np.isnan(b))
    difference = a[both] - b[both]
    interval = bootstrap_mean(difference, resamples, level, seed)
    ahead = difference > 0 if higher_is_better else difference < 0
    behind = difference < 0 if higher_is_better else difference > 0
    separates = interval.low > 0.0 or interval.high < 0.0
    return PairedDifference(interval, int(ahead.sum()), int(behind.sum()), bool(separates))


def paired_against(reference: str, per_method: Mapping[str, np.ndarray], higher_is_better: bool,
                   resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict[str, PairedDifference]:
    """`reference` minus every other method in `per_method` (method -> per-image values of one metric)."""
    if reference not in per_method:
        raise InputError(f"{reference!r} has no values here; methods: {', '.join(per_method)}")
    return {method: paired_difference(per_method[reference], values, higher_is_better, resamples, seed=seed)
            for method, values in per_method.items() if method != reference}

"""Bootstrap intervals against scipy.stats.bootstrap (percentile method) and paired differences by hand."""

import numpy as np
import pytest
from scipy import stats

from fusioncam.errors import InputError
from fusioncam.report.bootstrap import bootstrap_mean, paired_against, paired_difference


def test_interval_matches_scipy_percentile_bootstrap():
    values = np.random.default_rng(3).gamma(2.0, 1.5, size=400)
    ours = bootstrap_mean(values, resamples=20_000, seed=1)
    theirs = stats.bootstrap((values,), np.mean, n_resamples=20_000, method="percentile", confidence_level=0.95,
                             random_state=np.random.default_rng(7)).confidence_interval
    assert ours.mean == pytest.approx(values.mean())
    # two independent Monte Carlo estimates of the same percentiles: within a few percent of the interval's width
    width = theirs.high - theirs.low
    assert abs(ours.low - theirs.low) < 0.03 * width
    assert abs(ours.high - theirs.high) < 0.03 * width
    # and the normal approximation agrees for a mean of 400 values
    half = 1.96 * values.std(ddof=1) / np.sqrt(values.size)
    assert ours.high - ours.low == pytest.approx(2 * half, rel=0.06)


def test_same_seed_same_interval_and_nan_rows_dropped():
    values = np.array([1.0, 2.0, np.nan, 4.0, 8.0])
    first, second = bootstrap_mean(values, seed=5), bootstrap_mean(values, seed=5)
    assert first == second and first.n == 4 and first.mean == pytest.approx(3.75)
    assert first.low >= 1.0 and first.high <= 8.0


def test_paired_difference_separates_what_unpaired_intervals_cannot():
    rng = np.random.default_rng(0)
    image_effect = rng.normal(0.0, 1.0, size=300)   # large spread between images
    a = image_effect + 0.1 + rng.normal(0.0, 0.05, size=300)
    b = image_effect
    ia, ib = bootstrap_mean(a), bootstrap_mean(b)
    assert ia.low < ib.high  # the unpaired intervals overlap
    paired = paired_difference(a, b, higher_is_better=True)
    assert paired.separates and paired.difference.low > 0.05
    assert paired.a_better == int(((a - b) > 0).sum()) and paired.b_better == int(((a - b) < 0).sum())
    lower = paired_difference(a, b, higher_is_better=False)
    assert lower.a_better == paired.b_better and lower.b_better == paired.a_better


def test_paired_against_and_bad_input():
    per = {"fusion": np.array([1.0, 2.0, 3.0]), "gradcam": np.array([1.0, 1.0, 1.0])}
    got = paired_against("fusion", per, higher_is_better=True)
    assert list(got) == ["gradcam"] and got["gradcam"].difference.mean == pytest.approx(1.0)
    with pytest.raises(InputError, match="'scorecam' has no values"):
        paired_against("scorecam", per, True)
    with pytest.raises(InputError, match="one value per image"):
        paired_difference([1.0], [1.0, 2.0], True)
    with pytest.raises(InputError, match="every value is NaN"):
        bootstrap_mean([np.nan])

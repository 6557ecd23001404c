"""The markdown tables (and their JSON) of a faithfulness study, from per-method per-image metric values.

Input: {method: {metric: float64 [N]}}, every method measured on the same N images (NaN where a value is missing).
Out come two tables and one JSON-able dict holding the same numbers:

- the method table: one row per method, one column per metric present, each cell "mean [low, high]" with the 95%
  percentile-bootstrap interval of `fusioncam.report.bootstrap.bootstrap_mean`; the header gives the metric's
  direction (↓ lower is better, ↑ higher is better) and the best mean of each column is bold;
- the paired table: the reference method (Fusion-CAM) minus each other method, image by image
  (`paired_against`): "difference [low, high]" marked ✓ where the interval excludes 0, and "a / b of n": the images
  where the reference is better / worse than that method in the metric's direction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fusioncam.errors import InputError
from fusioncam.report.bootstrap import DEFAULT_RESAMPLES, Interval, PairedDifference, bootstrap_mean, paired_against
from fusioncam.report.evaluation import method_title


@dataclass(frozen=True)
class MetricColumn:
    """How a metric is shown: its column title, whether higher is better, and the decimals of its cells."""

    title: str
    higher_is_better: bool
    decimals: int

    @property
    def header(self) -> str:
        return f"{self.title} {'↑' if self.higher_is_better else '↓'}"


# Every metric a study may report, in the order the columns appear.
METRIC_COLUMNS: dict[str, MetricColumn] = {
    "average_drop": MetricColumn("Average Drop (%)", False, 2),
    "increase_in_confidence": MetricColumn("Increase in Confidence (%)", True, 2),
    "deletion_auc": MetricColumn("Deletion AUC", False, 4),
    "insertion_auc": MetricColumn("Insertion AUC", True, 4),
    "road_morf": MetricColumn("ROAD MoRF", False, 4),
    "road_lerf": MetricColumn("ROAD LeRF", True, 4),
    "road_combined": MetricColumn("ROAD combined", True, 4),
}

SEPARATES_MARK = "✓"
REFERENCE_METHOD = "fusion"


@dataclass(frozen=True)
class FaithfulnessTables:
    """The method table, the paired table ('' without the reference method) and the JSON-able record of both."""

    method_table: str
    paired_table: str
    record: dict


def study_metrics(per_method: Mapping[str, Mapping[str, np.ndarray]]) -> tuple[list[str], int]:
    """The metrics present (in column order) and the number of images, or an InputError saying what does not fit."""
    if not per_method:
        raise InputError("no methods to tabulate: per_method is empty")
    first_method, first = next(iter(per_method.items()))
    unknown = sorted(set(first) - set(METRIC_COLUMNS))
    if unknown:
        raise InputError(f"unknown metric(s) {', '.join(unknown)} for {first_method!r}; known: "
                         f"{', '.join(METRIC_COLUMNS)}")
    if not first:
        raise InputError(f"{first_method!r} has no metric values")
    metrics = [m for m in METRIC_COLUMNS if m in first]
    sizes = set()
    for method, values in per_method.items():
        if set(values) != set(metrics):
            raise InputError(f"every method needs the same metrics: {method!r} has {', '.join(sorted(values))}, "
                             f"{first_method!r} has {', '.join(metrics)}")
        for metric in metrics:
            sizes.add((method, metric, np.asarray(values[metric]).size))
    counts = {size for _, _, size in sizes}
    if len(counts) != 1:
        detail = ", ".join(f"{method}/{metric}: {size}" for method, metric, size in sorted(sizes))
        raise InputError(f"every method and metric needs one value per image of the same images; got {detail}")
    return metrics, counts.pop()


def _number(value: float, decimals: int) -> str:
    """The value with `decimals` decimals, never '-0.00' (a rounded -1e-17 prints as 0.00)."""
    return f"{round(value, decimals) + 0.0:.{decimals}f}"


def _cell(interval: Interval, decimals: int) -> str:
    return (f"{_number(interval.mean, decimals)} [{_number(interval.low, decimals)}, "
            f"{_number(interval.high, decimals)}]")


def _best_methods(intervals: Mapping[str, Interval], higher_is_better: bool) -> set[str]:
    """The methods whose mean is the best of the column (all of them on a tie)."""
    means = {method: interval.mean for method, interval in intervals.items()}
    best = max(means.values()) if higher_is_better else min(means.values())
    return {method for method, mean in means.items() if mean == best}


def method_table(intervals: Mapping[str, Mapping[str, Interval]], metrics: list[str]) -> str:
    """One row per method, cells 'mean [low, high]', the best mean of each column in bold."""
    best = {metric: _best_methods({m: row[metric] for m, row in intervals.items()},
                                  METRIC_COLUMNS[metric].higher_is_better) for metric in metrics}
    lines = ["| method | " + " | ".join(METRIC_COLUMNS[m].header for m in metrics) + " |",
             "| --- | " + " | ".join("---:" for _ in metrics) + " |"]
    for method, row in intervals.items():
        cells = []
        for metric in metrics:
            text = _cell(row[metric], METRIC_COLUMNS[metric].decimals)
            cells.append(f"**{text}**" if method in best[metric] else text)
        lines.append(f"| {method_title(method)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _paired_cell(paired: PairedDifference, decimals: int) -> str:
    mark = f" {SEPARATES_MARK}" if paired.separates else ""
    return (f"{_cell(paired.difference, decimals)}{mark}; "
            f"{paired.a_better} / {paired.b_better} of {paired.difference.n}")


def paired_table(paired: Mapping[str, Mapping[str, PairedDifference]], metrics: list[str], reference: str) -> str:
    """One row per other method: reference minus it, 'difference [low, high]' (✓: excludes 0) and 'a / b of n'."""
    title = method_title(reference)
    lines = [f"| {title} minus | " + " | ".join(METRIC_COLUMNS[m].header for m in metrics) + " |",
             "| --- | " + " | ".join("---:" for _ in metrics) + " |"]
    for method, row in paired.items():
        cells = [_paired_cell(row[metric], METRIC_COLUMNS[metric].decimals) for metric in metrics]
        lines.append(f"| {method_title(method)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_legend(reference: str = REFERENCE_METHOD) -> str:
    """The sentence that reads the paired table's cells."""
    title = method_title(reference)
    return (f"Each cell: {title} minus the method, image by image, the mean difference with its 95% paired-bootstrap "
            f"interval ({SEPARATES_MARK}: the interval excludes 0, the two methods separate on these images); "
            f"then a / b of n: the images where {title} is better / worse than the method in the metric's direction "
            f"(ties are neither).")


def faithfulness_tables(per_method: Mapping[str, Mapping[str, np.ndarray]], reference: str = REFERENCE_METHOD,
                        resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> FaithfulnessTables:
    """Both tables and their record from {method: {metric: per-image values}} (same images for every method).

    The paired table is empty ('') when `reference` is not among the methods or is the only one."""
    metrics, n = study_metrics(per_method)
    values = {method: {metric: np.asarray(row[metric], dtype=np.float64).ravel() for metric in metrics}
              for method, row in per_method.items()}
    intervals = {method: {metric: bootstrap_mean(row[metric], resamples, seed=seed) for metric in metrics}
                 for method, row in values.items()}
    paired: dict[str, dict[str, PairedDifference]] = {}
    if reference in values and len(values) > 1:
        for metric in metrics:
            against = paired_against(reference, {m: row[metric] for m, row in values.items()},
                                     METRIC_COLUMNS[metric].higher_is_better, resamples, seed)
            for method, difference in against.items():
                paired.setdefault(method, {})[metric] = difference
    record = {
        "images": n,
        "resamples": int(resamples),
        "seed": int(seed),
        "level": 0.95,
        "metrics": {m: {"title": METRIC_COLUMNS[m].title, "higher_is_better": METRIC_COLUMNS[m].higher_is_better}
                    for m in metrics},
        "methods": {method: {metric: interval.as_dict() for metric, interval in row.items()}
                    for method, row in intervals.items()},
        "best": {metric: sorted(_best_methods({m: row[metric] for m, row in intervals.items()},
                                              METRIC_COLUMNS[metric].higher_is_better)) for metric in metrics},
        "paired": ({"reference": reference,
                    "against": {method: {metric: d.as_dict() for metric, d in row.items()}
                                for method, row in paired.items()}} if paired else None),
    }
    return FaithfulnessTables(method_table(intervals, metrics),
                              paired_table(paired, metrics, reference) if paired else "", record)

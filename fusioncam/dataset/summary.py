"""The summary of a dataset run, from all its part files (so a resumed run summarises every image): `summary.json`,
`summary.md` and, with evaluation, `metrics.csv` and `curves.png`, each metric's mean and 95% interval computed by
the same functions as `fusioncam evaluate` (evaluation_report)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..atomic import write_bytes_atomic, write_text_atomic
from ..report.evaluation import (CURVES_PNG, METRICS_CSV, curves_image, mean_interval, method_title, metrics_csv,
                                 metrics_table)
from ..metrics.evaluation import Evaluation, MethodScores, measured_metrics
from ..metrics.perturbation_curves import step_counts
from ..report.explain_folder import _png_bytes
from .output import part_files, read_part, read_results
from .rows import RowLayout, curve_column, metric_column

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
ERRORS_LISTED = 1000  # error rows named in summary.json (all of them are in the table)


def results_evaluation(out: Path, layout: RowLayout, step: int) -> tuple[Evaluation | None, object]:
    """(the Evaluation of every explained row, sorted by source, or None without evaluation; the light table).

    Per-image metrics are the table's; each method's curves are the mean curve over the images (summed one part
    file at a time, so a million rows never sit in memory), which is all that curves.png and the tables use."""
    light = [name for name in layout.schema().names if name not in layout.heavy_columns()]
    table = read_results(out, light)
    if not layout.evaluate:
        return None, table
    explained = table.filter(table.column("error").is_null())
    if "instance" in explained.schema.names:  # detection: the rows of instances (an image without any has no metrics)
        explained = explained.filter(explained.column("instance").is_valid())
    height, width = layout.map_size
    x = step_counts(height * width, step) / (height * width)
    mean_curves = _mean_curves(out, layout, set(_row_keys(explained)))
    scores = {}
    for method in layout.methods:
        per_image = {m: explained.column(metric_column(method, m)).to_numpy().astype(np.float64)
                     for m in layout.metrics()}
        scores[method] = MethodScores(per_image, (x, mean_curves[method]["deletion"][None]),
                                      (x, mean_curves[method]["insertion"][None]))
    evaluation = Evaluation(scores, explained.column("source").to_pylist(),
                            explained.column("class_index").to_numpy().astype(np.int64), int(step),
                            layout.road_percentiles)
    return evaluation, table


def _row_keys(table) -> list:
    """Each row's identity: its source, or (source, instance) for a detection run's rows."""
    sources = table.column("source").to_pylist()
    if "instance" not in table.schema.names:
        return sources
    return list(zip(sources, table.column("instance").to_pylist()))


def _mean_curves(out: Path, layout: RowLayout, wanted: set) -> dict[str, dict[str, np.ndarray]]:
    """Each method's mean deletion and insertion curve over the `wanted` rows (sources, or (source, instance) for a
    detection run; each counted once)."""
    columns = [curve_column(m, kind) for m in layout.methods for kind in ("deletion", "insertion")]
    import pyarrow.parquet as pq

    sums: dict[str, np.ndarray] = {}
    seen: set = set()
    for path in part_files(out):
        keyed = ["instance"] if "instance" in pq.read_schema(path).names else []  # detection: per instance
        part = read_part(path, ["source", *keyed, *columns])
        sources = _row_keys(part)
        rows = [i for i, s in enumerate(sources) if s in wanted and s not in seen]
        seen.update(sources[i] for i in rows)
        for column in columns:
            values = part.column(column).to_pylist()
            for i in rows:
                curve = np.asarray(values[i], dtype=np.float64)
                sums[column] = sums[column] + curve if column in sums else curve
    count = max(len(seen), 1)
    return {m: {kind: sums.get(curve_column(m, kind), np.zeros(1)) / count for kind in ("deletion", "insertion")}
            for m in layout.methods}


def metric_summary(evaluation: Evaluation) -> dict[str, dict[str, dict[str, float]]]:
    """{method: {metric: mean, ci95_half_width, ci95_low, ci95_high, n}} as metrics.csv has them (NaN -> null)."""
    summary = {}
    for method, scores in evaluation.scores.items():
        summary[method] = {}
        for metric in measured_metrics(evaluation):
            mean, half = mean_interval(scores.per_image[metric])
            summary[method][metric] = {"mean": _finite(mean), "ci95_half_width": _finite(half),
                                       "ci95_low": _finite(mean - half), "ci95_high": _finite(mean + half),
                                       "n": int(scores.per_image[metric].size)}
    return summary


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def write_summary(out: Path, layout: RowLayout, step: int, run: dict[str, object],
                  score_name: str = "class probability") -> tuple[dict[str, object], str]:
    """Write summary.json and summary.md (and metrics.csv, curves.png with evaluation) atomically; return the
    summary and summary.md's text as this run wrote it (another run into the same folder may replace the file
    later). `run` holds this run's own facts (seconds, images/s, workers, model, ...); `score_name` is what the
    metrics score, the task's (tasks/*_payloads.py: a classifier's class probability, a segmentation model's
    region probability)."""
    evaluation, table = results_evaluation(out, layout, step)
    errors = table.filter(table.column("error").is_valid())
    summary: dict[str, object] = {
        "images": table.num_rows,
        "explained": table.num_rows - errors.num_rows,
        "errors": errors.num_rows,
        "error_rows": [{"source": s, "error": e} for s, e in zip(errors.column("source").to_pylist()[:ERRORS_LISTED],
                                                                 errors.column("error").to_pylist()[:ERRORS_LISTED])],
        "methods": list(layout.methods),
        "evaluate": layout.evaluate,
        "step": step if layout.evaluate else None,
        **({"road_percentiles": list(layout.road_percentiles)} if layout.road_percentiles is not None else {}),
        "score": score_name if layout.evaluate else None,
        "run": run,
    }
    if evaluation is not None and len(evaluation.names):
        summary["metrics"] = metric_summary(evaluation)
        write_text_atomic(out / METRICS_CSV, metrics_csv(evaluation))
        write_bytes_atomic(out / CURVES_PNG, _png_bytes(curves_image(evaluation, score_name)))
    write_text_atomic(out / SUMMARY_JSON, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    markdown = summary_markdown(summary, evaluation)
    write_text_atomic(out / SUMMARY_MD, markdown)
    return summary, markdown


def summary_markdown(summary: dict[str, object], evaluation: Evaluation | None) -> str:
    """summary.md: what ran, how fast, and (with evaluation) each metric's mean ± 95% half-width per method."""
    run = summary["run"]
    lines = ["# fusioncam explain-dataset", "",
             f"{summary['images']} images: {summary['explained']} explained, {summary['errors']} error rows. "
             f"Methods: {', '.join(method_title(m) for m in summary['methods'])}. Model `{run.get('model')}`, "
             f"device {run.get('device')}, {run.get('workers')} worker(s), {run.get('batch_images')} images per block.",
             "",
             f"This run: {run.get('images_this_run')} images in {run.get('seconds', 0.0):.1f} s, "
             f"{run.get('images_per_second', 0.0):.3f} images/s ({run.get('skipped_as_done')} skipped as already done)."]
    if evaluation is not None and len(evaluation.names):
        n = len(evaluation.names)
        lines += ["", f"Each cell: mean ± the half-width of a 95% interval over the n = {n} explained images, "
                      f"mean ± 1.96·sd/√n (sd: sample standard deviation; n/a for one image); deletion/insertion "
                      f"step {evaluation.step} pixels; the score is the "
                      f"{summary.get('score') or 'class probability'}{_road_words(evaluation)}. ↓ lower is better, "
                      f"↑ higher is better.", "",
                  metrics_table(evaluation)]
    return "\n".join(lines) + "\n"


def _road_words(evaluation: Evaluation) -> str:
    """summary.md's note of ROAD's settings where it was measured."""
    if evaluation.road_percentiles is None:
        return ""
    return (f"; ROAD at percentiles {', '.join(str(p) for p in evaluation.road_percentiles)} (noise 0.01, seed 0; "
            f"combined = (LeRF − MoRF)/2)")

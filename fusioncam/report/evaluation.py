"""Writing an evaluation: `metrics.md` and `metrics.csv` (method x metric, mean and 95% interval) and `curves.png`.

The interval is mean ± 1.96·sd/sqrt(n) over the n images, sd the sample standard deviation (n - 1 in the
denominator); with one image it is undefined (n/a). Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..interrupts import Interrupted, active
from ..metrics.evaluation import Evaluation, MethodScores, measured_metrics
from ..output_guard import RECORD, check_output_folder, create_folder, record_files
from .explain_folder import _png_bytes, _write
from ..runtime.methods import METHOD_TITLES
from ..tasks.payloads import payloads_for

METRICS_MD = "metrics.md"
METRICS_CSV = "metrics.csv"
CURVES_PNG = "curves.png"
Z_95 = 1.96

METRIC_HEADERS = {
    "average_drop": "Average Drop (%) ↓",
    "increase_in_confidence": "Increase in Confidence (%) ↑",
    "deletion_auc": "Deletion AUC ↓",
    "insertion_auc": "Insertion AUC ↑",
    "road_morf": "ROAD MoRF ↓",
    "road_lerf": "ROAD LeRF ↑",
    "road_combined": "ROAD combined ↑",
}
METRIC_DECIMALS = {"average_drop": 2, "increase_in_confidence": 2, "deletion_auc": 4, "insertion_auc": 4,
                   "road_morf": 4, "road_lerf": 4, "road_combined": 4}

# Plot geometry and colours (RGB).
PANEL_SIZE = (560, 420)  # width, height of one panel
PLOT_BOX = (78, 44, 20, 62)  # left, top, right, bottom margins of the plotting area inside a panel
LINE_COLORS = [(31, 119, 180), (255, 127, 14), (214, 39, 40), (44, 160, 44), (148, 103, 189), (140, 86, 75),
               (227, 119, 194), (127, 127, 127)]
INK = (20, 20, 20)
GRID = (225, 225, 225)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def method_title(method: str) -> str:
    """The readable name of a method (Grad-CAM for gradcam), or the name itself."""
    return METHOD_TITLES.get(method, method)


def mean_interval(values: np.ndarray) -> tuple[float, float]:
    """(mean, half-width of the 95% interval 1.96·sd/sqrt(n)); the half-width is NaN for a single value."""
    values = np.asarray(values, dtype=np.float64)
    n = values.size
    half = Z_95 * float(values.std(ddof=1)) / float(np.sqrt(n)) if n > 1 else float("nan")
    return float(values.mean()), half


def _cell(values: np.ndarray, metric: str) -> str:
    """'mean ± half-width' with the metric's decimals."""
    mean, half = mean_interval(values)
    digits = METRIC_DECIMALS[metric]
    return f"{mean:.{digits}f} ± {'n/a' if np.isnan(half) else f'{half:.{digits}f}'}"


def metrics_table(evaluation: Evaluation) -> str:
    """The markdown table: one row per method, one column per metric, cells 'mean ± 95% half-width'."""
    metrics = measured_metrics(evaluation)
    lines = ["| method | " + " | ".join(METRIC_HEADERS[m] for m in metrics) + " |",
             "| --- | " + " | ".join("---:" for _ in metrics) + " |"]
    for method, scores in evaluation.scores.items():
        cells = " | ".join(_cell(scores.per_image[m], m) for m in metrics)
        lines.append(f"| {method_title(method)} | {cells} |")
    return "\n".join(lines)


def metrics_markdown(evaluation: Evaluation, setup: str, class_names: Sequence[str] | None = None,
                     score_name: str = "class probability") -> str:
    """metrics.md: what was measured and how, the summary table, and every image's values. `score_name` is what
    the protocols score (the task's: a classifier's class probability, a segmentation model's region probability)."""
    n = len(evaluation.names)
    names = [_class_label(int(c), class_names) for c in evaluation.classes]
    metrics = measured_metrics(evaluation)
    per_image = ["| image | class | method | " + " | ".join(METRIC_HEADERS[m] for m in metrics) + " |",
                 "| --- | --- | --- | " + " | ".join("---:" for _ in metrics) + " |"]
    for i, image in enumerate(evaluation.names):
        for method, scores in evaluation.scores.items():
            values = " | ".join(f"{scores.per_image[m][i]:.{METRIC_DECIMALS[m]}f}" for m in metrics)
            per_image.append(f"| {image} | {names[i]} | {method_title(method)} | {values} |")
    return (
        "# Faithfulness metrics\n\n"
        f"{setup}\n\n"
        f"Each cell: mean ± the half-width of a 95% interval over the n = {n} images, mean ± 1.96·sd/√n "
        "(sd: sample standard deviation, n − 1 in its denominator; n/a for one image). "
        "↓ lower is better, ↑ higher is better.\n\n"
        f"- Average Drop and Increase in Confidence (Grad-CAM++ / Score-CAM protocol): Y = {score_name} on the "
        "image, O = on the image times the map; AD = 100·mean(max(0, Y − O)/Y), IC = 100·mean([O > Y]).\n"
        f"- Deletion and insertion AUC (RISE protocol): pixels ranked by the map, {evaluation.step} per step; deletion "
        "sets them to 0 in normalised space (the mean colour), insertion reveals them on a Gaussian-blurred copy "
        f"(51×51, σ = 50); area under the {score_name} over the fraction of pixels changed (trapezoid rule).\n"
        f"{_road_line(evaluation, score_name)}\n"
        f"{metrics_table(evaluation)}\n\n"
        "## Per image\n\n" + "\n".join(per_image) + "\n"
    )


def _road_line(evaluation: Evaluation, score_name: str) -> str:
    """metrics.md's description of ROAD where it was measured (else nothing)."""
    if evaluation.road_percentiles is None:
        return ""
    percentiles = ", ".join(str(p) for p in evaluation.road_percentiles)
    return (f"- ROAD (RemOve And Debias, as pytorch-grad-cam computes it): at each percentile p of the map ({percentiles})"
            " the pixels at or above it (MoRF), or those of 1 − map (LeRF), are replaced by the mean of their 8 "
            f"neighbours (noisy linear imputation, noise 0.01, seed 0); score = {score_name} after − before, averaged "
            "over the percentiles; combined = (LeRF − MoRF)/2.\n")


def _class_label(index: int, class_names: Sequence[str] | None) -> str:
    """'name (index)' or 'class index'."""
    if class_names and 0 <= index < len(class_names):
        return f"{class_names[index]} ({index})"
    return f"class {index}"


def metrics_csv(evaluation: Evaluation) -> str:
    """metrics.csv: one row per (method, metric) with the mean and the 95% interval, full precision."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "metric", "mean", "ci95_low", "ci95_high", "ci95_half_width", "n"])
    for method, scores in evaluation.scores.items():
        for metric in measured_metrics(evaluation):
            mean, half = mean_interval(scores.per_image[metric])
            writer.writerow([method, metric, *(repr(float(v)) for v in (mean, mean - half, mean + half, half)),
                             len(scores.per_image[metric])])
    return buffer.getvalue()


def curves_image(evaluation: Evaluation, score_name: str = "class probability") -> np.ndarray:
    """uint8 RGB: the mean deletion (left) and insertion (right) curves of each method, with a legend of mean AUCs."""
    panels = []
    for kind in ("deletion", "insertion"):
        curves = {m: (getattr(s, kind)[0], getattr(s, kind)[1].mean(axis=0)) for m, s in evaluation.scores.items()}
        aucs = {m: float(s.per_image[f"{kind}_auc"].mean()) for m, s in evaluation.scores.items()}
        verb = "deleted" if kind == "deletion" else "inserted"
        better = "lower" if kind == "deletion" else "higher"
        panels.append(_curve_panel(curves, aucs, f"{kind.capitalize()} ({better} AUC is better)",
                                   f"fraction of pixels {verb}", legend_top=kind == "deletion",
                                   y_label=f"mean {score_name}"))
    return np.concatenate(panels, axis=1)


def _curve_panel(curves: dict[str, tuple[np.ndarray, np.ndarray]], aucs: dict[str, float], title: str,
                 x_label: str, legend_top: bool, y_label: str = "mean class probability") -> np.ndarray:
    """One plot: axes with ticks and labels, a line per method, a legend."""
    width, height = PANEL_SIZE
    left, top, right, bottom = PLOT_BOX
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    x0, x1, y0, y1 = left, width - right, height - bottom, top  # pixel corners: (x0, y0) is the origin
    y_ticks = _probability_ticks(max(float(p.max()) for _, p in curves.values()))
    y_max = float(y_ticks[-1])
    for tick in np.linspace(0, 1, 6):
        x = round(x0 + tick * (x1 - x0))
        cv2.line(canvas, (x, y0), (x, y1), GRID, 1)
        _text(canvas, f"{tick:.1f}", (x, y0 + 18), 0.42, centre=True)
    for tick in y_ticks:
        y = round(y0 - tick / y_max * (y0 - y1))
        cv2.line(canvas, (x0, y), (x1, y), GRID, 1)
        _text(canvas, f"{tick:.2f}", (x0 - 40, y + 5), 0.42)
    cv2.rectangle(canvas, (x0, y1), (x1, y0), INK, 1)
    _text(canvas, title, (width // 2, 26), 0.55, centre=True)
    _text(canvas, x_label, ((x0 + x1) // 2, height - 18), 0.5, centre=True)
    _vertical_text(canvas, y_label, (12, (y0 + y1) // 2))
    legend_y = y1 + 20 if legend_top else y0 - 14 - 20 * (len(curves) - 1)
    for index, (method, (x, p)) in enumerate(curves.items()):
        color = LINE_COLORS[index % len(LINE_COLORS)]
        points = np.stack([x0 + x * (x1 - x0), y0 - p / y_max * (y0 - y1)], axis=1)
        cv2.polylines(canvas, [np.round(points).astype(np.int32)], False, color, 2, cv2.LINE_AA)
        y = legend_y + 20 * index
        cv2.line(canvas, (x1 - 200, y - 4), (x1 - 176, y - 4), color, 3, cv2.LINE_AA)
        _text(canvas, f"{method_title(method)}  AUC {aucs[method]:.3f}", (x1 - 170, y), 0.42)
    return canvas


def _probability_ticks(peak: float) -> np.ndarray:
    """Round tick values from 0 to just above `peak` (at most 8 intervals, the top no higher than 1)."""
    spacing = next(s for s in (0.02, 0.05, 0.1, 0.2) if min(peak, 1.0) <= 8 * s)
    top = min(1.0, max(spacing, float(np.ceil(peak / spacing - 1e-9)) * spacing))
    return np.arange(0.0, top + spacing / 2, spacing)


def _text(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float, centre: bool = False) -> None:
    """One line of ASCII text at origin (its baseline start, or its baseline centre)."""
    text = text.encode("ascii", "replace").decode("ascii")
    x, y = origin
    if centre:
        x -= cv2.getTextSize(text, FONT, scale, 1)[0][0] // 2
    cv2.putText(canvas, text, (int(x), int(y)), FONT, scale, INK, 1, cv2.LINE_AA)


def _vertical_text(canvas: np.ndarray, text: str, centre_left: tuple[int, int]) -> None:
    """Text turned 90 degrees anticlockwise, its left edge at x and its middle at y."""
    (width, height), baseline = cv2.getTextSize(text, FONT, 0.5, 1)
    strip = np.full((height + baseline + 4, width + 4, 3), 255, dtype=np.uint8)
    _text(strip, text, (2, height + 2), 0.5)
    turned = cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE)
    x, y = centre_left
    top = max(0, y - turned.shape[0] // 2)
    canvas[top : top + turned.shape[0], x : x + turned.shape[1]] = turned


EVALUATION_FILES = (METRICS_MD, METRICS_CSV, CURVES_PNG)
# How files an older fusioncam wrote (before results.json recorded them) begin; metrics.md is the anchor.
LEGACY_HEADS = {METRICS_MD: b"# Faithfulness metrics\n", METRICS_CSV: b"method,metric,mean,ci95_low,",
                CURVES_PNG: b"\x89PNG\r\n\x1a\n"}


@dataclass
class EvaluationRun:
    """What an evaluate run finished: the evaluation of its first images (None if none), and why it stopped early."""

    evaluation: Evaluation | None
    names: list[str]
    interrupted: str | None = None  # SIGINT or SIGTERM
    not_evaluated: list[str] = field(default_factory=list)  # the images an interrupted run did not reach
    facts: list[dict] = field(default_factory=list)  # per finished row, the task's facts (segmentation: region)
    score_name: str = "class probability"  # what the protocols scored (the task's payloads)
    row_images: list[int] = field(default_factory=list)  # each row's image (detection: a row per instance)


def check_evaluation_folder(out: str | os.PathLike, inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """Refuse an output folder where the report would replace an input image or a file fusioncam did not write
    (output_guard.check_output_folder); nothing is created here."""
    real_inputs = {os.path.realpath(p): str(p) for p in inputs}
    check_output_folder(out, (*EVALUATION_FILES, RECORD), real_inputs, LEGACY_HEADS)
    return Path(out)


def evaluate_images(explainer, images: np.ndarray, methods: Sequence[str], names: Sequence[str],
                    step: int, region=None, road_percentiles: Sequence[int] | None = None) -> EvaluationRun:
    """Explain and evaluate the images one at a time (the metrics are per image), so a stop signal ends the run at the
    next scorer batch, method or image with every finished image's scores kept (interrupts.active).

    What is explained and scored is the task's (tasks/*_payloads.py): a classifier's top class by its probability, a
    segmentation model's class on most pixels over `region` (None: where it is predicted) by the region
    probability P; `region` is refused for a classifier. `road_percentiles` (classifiers only) adds ROAD."""
    payloads = payloads_for(explainer.bundle.manifest)
    stop = active()
    parts: list[Evaluation] = []
    facts: list[dict] = []
    row_images: list[int] = []
    with stop.deferred():
        try:
            for index, name in enumerate(names):
                stop.check()
                image = images[index : index + 1]
                explanation, evaluation = payloads.evaluate(explainer, image, tuple(methods), name, step, region,
                                                            on_batch=stop.check, before_method=stop.check,
                                                            road_percentiles=road_percentiles)
                parts.append(evaluation)
                row_facts = payloads.evaluation_facts(explanation)  # one dict, or (detection) one per instance row
                facts.extend(row_facts if isinstance(row_facts, list) else [row_facts])
                row_images.extend([index] * len(evaluation.names))
        except Interrupted:
            pass
    evaluation = _join_images(parts) if any(part.names for part in parts) else None
    finished = [row for part in parts for row in part.names]  # the images (detection: the instances) measured
    pending = list(names[len(parts):])
    return EvaluationRun(evaluation, finished, stop.received if pending else None, pending, facts, payloads.score_name,
                         row_images)


def _join_images(parts: Sequence[Evaluation]) -> Evaluation:
    """Evaluations of consecutive images (same methods, same step) as one: per-image values and curves stacked."""
    first = parts[0]
    scores = {}
    for method in first.scores:
        each = [part.scores[method] for part in parts]
        scores[method] = MethodScores(
            per_image={metric: np.concatenate([s.per_image[metric] for s in each]) for metric in measured_metrics(first)},
            deletion=(each[0].deletion[0], np.concatenate([s.deletion[1] for s in each])),
            insertion=(each[0].insertion[0], np.concatenate([s.insertion[1] for s in each])),
        )
    return Evaluation(scores, [n for part in parts for n in part.names], np.concatenate([p.classes for p in parts]),
                      first.step, first.road_percentiles)


def write_evaluation_record(out: str | os.PathLike, run: EvaluationRun, setup: str, manifest,
                            inputs: Sequence[str], skipped: Sequence[dict]) -> list[Path]:
    """Write the report of the finished images (metrics.md, metrics.csv, curves.png: none when no image finished)
    and results.json, the record: per-image values, skipped inputs, completeness, and every file fusioncam wrote."""
    from .. import __version__

    out = Path(out)
    earlier = check_output_folder(out, (*EVALUATION_FILES, RECORD), {}, LEGACY_HEADS)
    create_folder(out)
    written = list(write_evaluation(out, run.evaluation, setup, manifest.class_names,
                                    run.score_name).values()) if run.evaluation else []
    evaluation = run.evaluation
    images = []
    for i, name in enumerate(run.names):
        image = run.row_images[i] if i < len(run.row_images) else i
        images.append({
            "name": name, "input": inputs[image] if image < len(inputs) else name, "class_index": int(evaluation.classes[i]),
            **(run.facts[i] if i < len(run.facts) else {}),
            "metrics": {method: {metric: float(scores.per_image[metric][i]) for metric in measured_metrics(evaluation)}
                        for method, scores in evaluation.scores.items()},
        })
    document = {
        "fusioncam_version": __version__,
        "command": "evaluate",
        "model": {"source": manifest.source, "target_layer": manifest.target_layer,
                  "input_size": list(manifest.input_size)},
        "step": evaluation.step if evaluation else None,
        **({"road_percentiles": list(evaluation.road_percentiles)} if evaluation and evaluation.road_percentiles else {}),
        "score": run.score_name,
        "complete": run.interrupted is None,
        "interrupted_by": run.interrupted,
        "images": images,
        "failed": list(skipped),
        "not_evaluated": run.not_evaluated,
        "written_files": record_files(out, earlier, [path.name for path in written]),
    }
    _write(out / RECORD, (json.dumps(document, indent=2) + "\n").encode("utf-8"))
    return written + [out / RECORD]


def write_evaluation(out: str | os.PathLike, evaluation: Evaluation, setup: str,
                     class_names: Sequence[str] | None = None, score_name: str = "class probability") -> dict[str, Path]:
    """Encode metrics.md, metrics.csv and curves.png in memory, then write each atomically; return their paths."""
    out = Path(out)
    encoded = {
        METRICS_MD: metrics_markdown(evaluation, setup, class_names, score_name).encode("utf-8"),
        METRICS_CSV: metrics_csv(evaluation).encode("utf-8"),
        CURVES_PNG: _png_bytes(curves_image(evaluation, score_name)),
    }
    for name, data in encoded.items():
        _write(out / name, data)
    return {name: out / name for name in encoded}

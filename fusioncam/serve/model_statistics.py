"""Per-model request statistics in the form of Triton's statistics extension (REST `/v2/models/NAME/stats`,
gRPC `ModelStatistics`).

Recorded for each answered or failed request (`recorded`, around FusionCamModel._run): its count and duration
in nanoseconds under `success` or `fail`, the images it brought (`inference_count`) and when it finished
(`last_inference`, ms since the epoch). `execution_count` (Explainer calls, the batches formed) is read from
fusioncam's `fusioncam_batch_images` histogram. Queue, compute and per-batch-size times are not measured
separately: they are reported as zero, and `batch_stats` is empty. A method view (method_views.py) reports its
model's statistics.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Awaitable

from . import metrics
from .model_versions import SERVED_VERSION

TRITON_DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit",
                    "cache_miss")


@dataclass
class _Counts:
    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    inference_count: int = 0
    last_inference_ms: int = 0


_lock = threading.Lock()
_counts: dict[str, _Counts] = {}


def record_request(model_name: str, images: int, succeeded: bool, seconds: float) -> None:
    """One request's outcome: `images` images, answered (succeeded) or failed after `seconds`."""
    nanoseconds = max(0, int(seconds * 1e9))
    with _lock:
        counts = _counts.setdefault(model_name, _Counts())
        if succeeded:
            counts.success_count += 1
            counts.success_ns += nanoseconds
            counts.inference_count += int(images)
        else:
            counts.fail_count += 1
            counts.fail_ns += nanoseconds
        counts.last_inference_ms = int(time.time() * 1000)


def _executions(model_name: str) -> int:
    """Explainer calls of a model so far (the count of its fusioncam_batch_images histogram)."""
    for family in metrics.BATCH_IMAGES.collect():
        for sample in family.samples:
            label = sample.labels.get("model_name", sample.labels.get("model"))  # KServe's label name, or the old one
            if sample.name.endswith("_count") and label == model_name:
                return int(sample.value)
    return 0


def model_statistics(name: str, recorded_as: str | None = None) -> dict:
    """Triton's ModelStatistics of one model, as JSON (recorded_as: the model whose numbers it reports)."""
    source = recorded_as or name
    with _lock:
        counts = _counts.get(source, _Counts())
        durations = {key: {"count": 0, "ns": 0} for key in TRITON_DURATIONS}
        durations["success"] = {"count": counts.success_count, "ns": counts.success_ns}
        durations["fail"] = {"count": counts.fail_count, "ns": counts.fail_ns}
        return {"name": name, "version": SERVED_VERSION, "last_inference": counts.last_inference_ms,
                "inference_count": counts.inference_count, "execution_count": _executions(source),
                "inference_stats": durations, "batch_stats": []}


async def recorded(model_name: str, run: Awaitable[tuple[Any, Any]]) -> tuple[Any, Any]:
    """Await a model's (parsed request, result) and record the request: success with its images, or failure."""
    started = time.monotonic()
    try:
        parsed, result = await run
    except BaseException:
        record_request(model_name, 0, False, time.monotonic() - started)
        raise
    record_request(model_name, len(parsed.images), True, time.monotonic() - started)
    return parsed, result

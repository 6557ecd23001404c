"""fusioncam's Prometheus metrics, beside KServe's own on the same /metrics endpoint (the default registry).

Per model and method: requests (by outcome) and their latency; per model: the batch sizes formed, the images
waiting in the queue, and the masked forwards the Score-CAM sweep and the methods' probes ran or skipped.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PREDICT = "predict"  # the method label of a request that asks for predictions only

REQUESTS = Counter("fusioncam_requests", "Requests by model, method and outcome (ok, bad_request, busy, error)",
                   ["model", "method", "outcome"])
LATENCY = Histogram("fusioncam_request_latency_seconds", "Seconds from a request's arrival to its answer, by model and method",
                    ["model", "method"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120))
BATCH_IMAGES = Histogram("fusioncam_batch_images", "Images per Explainer.explain call (the batches formed)", ["model"],
                         buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128))
QUEUE_DEPTH = Gauge("fusioncam_queue_images", "Images waiting for an inference worker", ["model"])
MASKED_FORWARDS = Counter("fusioncam_masked_forwards", "Masked forwards of the scorer, run or skipped (answered exactly "
                          "from the cached all-zeros logit)", ["model", "kind"])


def method_labels(methods: tuple[str, ...]) -> tuple[str, ...]:
    """The method labels of a request: its methods, or 'predict' when it asks for predictions only."""
    return methods or (PREDICT,)


def count_request(model: str, methods: tuple[str, ...], outcome: str, seconds: float | None = None) -> None:
    """One request's outcome (and latency when answered) under each of its methods."""
    for method in method_labels(methods):
        REQUESTS.labels(model=model, method=method, outcome=outcome).inc()
        if seconds is not None:
            LATENCY.labels(model=model, method=method).observe(seconds)


def count_batch(model: str, images: int, forwards_run: int, forwards_skipped: int) -> None:
    """One Explainer call: its batch size and the masked forwards it ran and skipped."""
    BATCH_IMAGES.labels(model=model).observe(images)
    if forwards_run:
        MASKED_FORWARDS.labels(model=model, kind="run").inc(forwards_run)
    if forwards_skipped:
        MASKED_FORWARDS.labels(model=model, kind="skipped").inc(forwards_skipped)


def set_queue_depth(model: str, images: int) -> None:
    QUEUE_DEPTH.labels(model=model).set(images)

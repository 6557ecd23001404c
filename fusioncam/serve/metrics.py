"""fusioncam's Prometheus metrics, beside KServe's own on the same /metrics endpoint (the default registry).

Per model and method: requests (by outcome) and their latency; per model: the batch sizes formed, the images
waiting in the queue, and the masked forwards the Score-CAM sweep and the methods' probes ran or skipped.
The model label is `model_name`, as in KServe's own metrics (request_predict_seconds and the others), so one
query selects a model in both. The method label is each CAM method a request asked for, or the request's verb
(`predict`, `explain`, `infer`) when it names none or failed before its methods were read (a busy or bad request
is counted under what it asked, not always under `predict`).
"""

from __future__ import annotations

from contextvars import ContextVar

from prometheus_client import Counter, Gauge, Histogram

PREDICT = "predict"  # the method label of a v1 :predict request (predictions only)
# The verb of the request being answered (predict, explain, infer): set by the model's entry points, read in the
# same asyncio task when the request is counted
REQUEST_VERB: ContextVar[str] = ContextVar("fusioncam_request_verb", default=PREDICT)

# Up to 600 s: past the default --timeout-s (300 s, Knative's default revision timeout), so a request answered
# just before its deadline still lands in a bucket of its own
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 180, 300, 600)
REQUESTS = Counter("fusioncam_requests", "Requests by model, method and outcome (ok, bad_request, busy, deadline, cancelled, "
                   "out_of_memory, error)",
                   ["model_name", "method", "outcome"])
LATENCY = Histogram("fusioncam_request_latency_seconds", "Seconds from a request's arrival to its answer, by model and method",
                    ["model_name", "method"], buckets=LATENCY_BUCKETS)
BATCH_IMAGES = Histogram("fusioncam_batch_images", "Images per Explainer.explain call (the batches formed)", ["model_name"],
                         buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128))
QUEUE_DEPTH = Gauge("fusioncam_queue_images", "Images waiting for an inference worker", ["model_name"])
MASKED_FORWARDS = Counter("fusioncam_masked_forwards", "Masked forwards of the scorer, run or skipped (answered exactly "
                          "from the cached all-zeros logit)", ["model_name", "kind"])


def method_labels(methods: tuple[str, ...]) -> tuple[str, ...]:
    """The method labels of a request: its methods, or its verb (REQUEST_VERB) when it names none or failed before
    they were read."""
    return methods or (REQUEST_VERB.get(),)


def count_request(model: str, methods: tuple[str, ...], outcome: str, seconds: float | None = None) -> None:
    """One request's outcome (and latency when answered) under each of its methods."""
    for method in method_labels(methods):
        REQUESTS.labels(model_name=model, method=method, outcome=outcome).inc()
        if seconds is not None:
            LATENCY.labels(model_name=model, method=method).observe(seconds)


def count_batch(model: str, images: int, forwards_run: int, forwards_skipped: int) -> None:
    """One Explainer call: its batch size and the masked forwards it ran and skipped."""
    BATCH_IMAGES.labels(model_name=model).observe(images)
    if forwards_run:
        MASKED_FORWARDS.labels(model_name=model, kind="run").inc(forwards_run)
    if forwards_skipped:
        MASKED_FORWARDS.labels(model_name=model, kind="skipped").inc(forwards_skipped)


def set_queue_depth(model: str, images: int) -> None:
    QUEUE_DEPTH.labels(model_name=model).set(images)

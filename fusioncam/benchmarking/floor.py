"""The forward-pass floor of an explanation, measured on the explainer's own sessions in the same run: the explain
graph alone on the same images, plus the scorer forwards the explanation ran at the scorer's measured throughput.
No explanation of those images can run its model passes faster; the ratio to it is what the methods add."""

from __future__ import annotations

import time

import numpy as np

from .latency import latency_samples, latency_summary


def scorer_throughput(explainer, seconds: float = 3.0, min_runs: int = 3) -> float:
    """Images per second of the bundle's scorer at the explainer's batch size (full batches of zeros, warm)."""
    backend = explainer.backend
    with explainer.scorer.in_use("measure the scorer"), backend.context():
        backend.input_buffer()[:] = 0
        backend.score_rows(backend.batch_size)
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or runs < min_runs:
            logits = backend.score_rows(backend.batch_size)
            runs += 1
        backend.to_host(logits[:1])
        return runs * backend.batch_size / (time.perf_counter() - start)


def explain_pass_seconds(explainer, images: np.ndarray, seconds: float = 1.0, min_runs: int = 3) -> float:
    """Median seconds of the explain graph alone (logits, activations and gradients) on `images`, top-class targets,
    outputs waited for on the host."""
    manifest = explainer.bundle.manifest
    feed = explainer.task.explain_feed(manifest, int(images.shape[0]), None, None, explainer.class_names)
    backend = explainer.backend
    with explainer.scorer.in_use("measure the explain pass"), backend.context():
        device_images = backend.asarray(images)
        device_feed = {name: backend.asarray(value) for name, value in feed.items()}

        def run() -> None:
            outputs = backend.explain(device_images, device_feed)
            for value in outputs.values():
                backend.to_host(value.ravel()[:1])

        return latency_summary(latency_samples(run, seconds, min_runs=min_runs))["p50_s"]


def forward_floor(explain_s: float, forwards: int, images_per_s: float) -> float:
    """Seconds no explanation can beat: one explain pass plus `forwards` scorer images at `images_per_s`."""
    return explain_s + forwards / images_per_s

"""Dynamic batching: requests of one model gathered into one Explainer.explain call per compatible group.

Requests wait in one bounded queue per model (counted in images). Each inference worker is a thread that owns
its own Explainer, so the event loop never runs a model: health, metadata and metrics answer while a long
Fusion-CAM runs. A worker takes the oldest request, waits up to max_latency_ms for more requests with the same
methods (or until max_batch_size images are ready), explains them in one call (one explain pass, shared scorer
batches) and hands each request back exactly its own rows. A request that would overflow the queue is refused at
once with ServerBusy (HTTP 429). When a batch fails on something one image brought (a non-finite value), its
requests are explained again one by one, so the others never see the failure.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import FusionCamError
from ..runtime import Explainer
from ..runtime.input_checks import ARGMAX
from . import metrics
from .request_errors import BadRequest, ServerBusy

log = logging.getLogger("fusioncam.serve")


@dataclass
class Job:
    """One request's images, targets and methods (methods = () asks for predictions only)."""

    images: np.ndarray  # float32 [n, 3, H, W], already decoded and checked
    targets: np.ndarray  # int64 [n]: a class index, or -1 for the top class
    methods: tuple[str, ...]
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def count(self) -> int:
        return int(self.images.shape[0])


@dataclass
class JobResult:
    """One request's share of a batch: its own rows of every output."""

    logits: np.ndarray  # float32 [n, classes]
    classes: np.ndarray | None  # int64 [n]: the explained classes (None for predictions only)
    probabilities: np.ndarray | None  # float64 [n]: the explained classes' probabilities
    maps: dict[str, np.ndarray]  # method -> float32 [n, H, W]
    batch_images: int  # how many images shared the Explainer call


class DynamicBatcher:
    """A bounded queue and `workers` inference threads, each with its own Explainer, for one model."""

    def __init__(self, model_name: str, make_explainer: Callable[[], Explainer], max_batch_size: int,
                 max_latency_ms: float, max_queue: int, workers: int = 1) -> None:
        self.model_name = model_name
        self.max_batch_size = int(max_batch_size)
        self.max_latency = float(max_latency_ms) / 1000.0
        self.max_queue = int(max_queue)
        self._pending: collections.deque[Job] = collections.deque()
        self._queued_images = 0
        self._closed = False
        self._condition = threading.Condition()
        self.explainers = [make_explainer() for _ in range(int(workers))]
        self._threads = [threading.Thread(target=self._work, args=(explainer,), daemon=True,
                                          name=f"fusioncam-{model_name}-worker-{i}")
                         for i, explainer in enumerate(self.explainers)]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Job) -> concurrent.futures.Future:
        """Queue a job; ServerBusy at once when its images would overflow the queue or the batcher is closed."""
        with self._condition:
            if self._closed:
                raise ServerBusy(f"model {self.model_name} is shutting down; retry on another replica")
            if self._queued_images + job.count > self.max_queue:
                raise ServerBusy(
                    f"model {self.model_name} is busy: {self._queued_images} image(s) already wait and the queue holds "
                    f"{self.max_queue} (--max-queue); retry later")
            self._pending.append(job)
            self._queued_images += job.count
            metrics.set_queue_depth(self.model_name, self._queued_images)
            self._condition.notify()
        return job.future

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new jobs, let the workers finish the queued ones, then close the Explainers."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    def _next_batch(self) -> list[Job] | None:
        """The next compatible group, FIFO, up to max_batch_size images; None once closed and drained."""
        with self._condition:
            while True:
                batch = self._gather()
                if batch is None or batch:
                    return batch

    def _gather(self) -> list[Job] | None:
        """One group taken off the queue (empty when all its requests were abandoned); call holding the condition."""
        while True:
            while not self._pending and not self._closed:
                self._condition.wait()
            if not self._pending:
                return None
            first = self._pending[0]
            ready = sum(job.count for job in self._pending if job.methods == first.methods)
            wait = first.enqueued + self.max_latency - time.monotonic()
            if ready >= self.max_batch_size or wait <= 0 or self._closed:
                break
            self._condition.wait(wait)
        batch, images = [], 0
        for job in self._pending:
            if job.methods != first.methods:
                continue
            if batch and images + job.count > self.max_batch_size:
                break
            batch.append(job)
            images += job.count
        for job in batch:
            self._pending.remove(job)
        self._queued_images -= images
        metrics.set_queue_depth(self.model_name, self._queued_images)
        return [job for job in batch if job.future.set_running_or_notify_cancel()]  # drop abandoned requests

    def _work(self, explainer: Explainer) -> None:
        """One inference thread: its own Explainer, batches until the batcher is closed."""
        try:
            while (batch := self._next_batch()) is not None:
                self._run(explainer, batch)
        finally:
            explainer.close()

    def _run(self, explainer: Explainer, batch: list[Job]) -> None:
        """Explain a batch and hand each job its rows; on a failure one image caused, retry the jobs one by one."""
        try:
            results = self._explain(explainer, batch)
        except FusionCamError as exc:
            if len(batch) > 1:
                for job in batch:
                    self._run(explainer, [job])
                return
            batch[0].future.set_exception(BadRequest(str(exc)))
            return
        except Exception as exc:  # a bug or a runtime failure: each waiting request gets it (HTTP 500), none hangs
            log.exception("inference failed for model %s", self.model_name)
            for job in batch:
                job.future.set_exception(exc)
            return
        for job, result in zip(batch, results):
            job.future.set_result(result)

    def _explain(self, explainer: Explainer, batch: list[Job]) -> list[JobResult]:
        """One Explainer call for the whole batch, split back into per-job results."""
        images = np.concatenate([job.images for job in batch]) if len(batch) > 1 else batch[0].images
        methods = batch[0].methods
        total = int(images.shape[0])
        if methods:
            targets = np.concatenate([job.targets for job in batch])  # resolved: -1 (ARGMAX) is the top class
            explanation = explainer.explain(images, [None if t == ARGMAX else int(t) for t in targets], methods=methods)
            logits, classes, probabilities = explanation.logits, explanation.classes, explanation.probabilities
            maps = explanation.maps
            timings = explanation.timings
            forwards_run = int(timings.get("scorer_forwards_run", 0)) + int(timings.get("method_forwards_run", 0))
            forwards_skipped = int(timings.get("scorer_forwards_skipped", 0))
        else:
            logits, classes, probabilities, maps = predicted_logits(explainer, images), None, None, {}
            forwards_run = forwards_skipped = 0
        metrics.count_batch(self.model_name, total, forwards_run, forwards_skipped)
        results, start = [], 0
        for job in batch:
            rows = slice(start, start + job.count)
            start += job.count
            results.append(JobResult(
                logits=np.array(logits[rows]),
                classes=None if classes is None else np.array(classes[rows]),
                probabilities=None if probabilities is None else np.array(probabilities[rows]),
                maps={name: np.array(array[rows]) for name, array in maps.items()},
                batch_images=total,
            ))
        return results


def predicted_logits(explainer: Explainer, images: np.ndarray) -> np.ndarray:
    """float32 [N, classes]: the scorer's logits of preprocessed images (predictions without an explanation).
    Called only from the Explainer's own worker thread."""
    backend = explainer.backend
    with backend.context():
        return np.asarray(backend.to_host(backend.score(backend.asarray(images))), dtype=np.float32)

"""Dynamic batching: requests of one model gathered into one Explainer.explain call per compatible group.

Requests wait in a bounded queue per model (counted in images), split into lanes (lanes.py): gradient-only
requests and predictions in the gradient lane, requests with a Score-CAM sweep or probe rounds in the sweep lane,
each lane with its own inference workers, so a Grad-CAM request never waits behind a sweep (and the sweep
lane's threads run at a lower CPU priority, thread_priority.py, so sweeps slow it little). Each worker is a
thread that owns its own Explainer, so the event loop never runs a model: health, metadata and metrics answer
while a long Fusion-CAM runs. A worker takes its lane's oldest request, waits up to max_latency_ms for more
requests with the same methods (or until max_batch_size images are ready), explains them in one call (one
explain pass, shared scorer batches) and hands each request back exactly its own rows. A request that would
overflow the queue is refused at once with ServerBusy (HTTP 429). When a batch fails on something one image
brought (a non-finite value), its requests are explained again one by one, so the others never see the failure.

Deadlines and disconnects (deadlines.py): a request abandoned while it waits (its deadline passed, or its client
disconnected) is taken off the queue and never computed. A batch keeps running while any of its requests still
waits for it: the requests still waiting get exactly the rows the whole batch computed, as if nothing had been
abandoned (the batch is not split, so no finished scorer batches are thrown away). Once every request of a batch
has been abandoned, the batch stops at its next scorer batch (the Explainer's on_batch callback, the same point
where a command-line run stops on Ctrl-C).
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..batch_retry import each_alone_on_failure
from ..errors import FusionCamError
from ..runtime import Explainer
from ..tasks.payloads import payloads_for
from ..runtime.input_checks import ARGMAX
from . import metrics
from .deadlines import DeadlineExceeded, RequestAbandoned
from .lanes import GRADIENT, SHARED, SWEEP, lane_of
from .request_errors import BadRequest, ServerBusy
from .thread_priority import lower_this_thread, made_at_lower_priority

log = logging.getLogger("fusioncam.serve")


@dataclass(eq=False)  # compared by identity: the queue finds and removes this very job
class Job:
    """One request's images, targets and methods (methods = () asks for predictions only)."""

    images: np.ndarray  # float32 [n, 3, H, W], already decoded and checked
    targets: np.ndarray  # int64 [n]: a class index, or -1 for the top class
    methods: tuple[str, ...]
    regions: list | None = None  # segmentation: one region per image (Explainer.explain's regions=)
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    enqueued: float = field(default_factory=time.monotonic)
    deadline: float = math.inf  # time.monotonic() after which nobody waits for the answer
    abandoned: bool = False  # set by the waiting side when its client is gone (deadline passed, disconnected)

    @property
    def count(self) -> int:
        return int(self.images.shape[0])

    def gone(self, now: float | None = None) -> bool:
        """True once nobody waits for this job's answer: abandoned, or past its deadline."""
        return self.abandoned or (now if now is not None else time.monotonic()) >= self.deadline

    def drop(self) -> None:
        """Settle the future of a job that will not be computed (a no-op when it is settled already): an abandoned
        job's is cancelled (nobody waits for it), an expired one's gets DeadlineExceeded (its waiter answers 504)."""
        future = self.future
        if future.done() or (self.abandoned and future.cancel()):
            return
        if not future.running() and not future.set_running_or_notify_cancel():
            return
        future.set_exception(RequestAbandoned("the client is gone") if self.abandoned else
                             DeadlineExceeded("the request's deadline passed before its batch finished"))


@dataclass
class JobResult:
    """One request's share of a batch: its own rows of every output."""

    logits: np.ndarray  # float32 [n, classes]
    classes: np.ndarray | None  # int64 [n]: the explained classes (None for predictions only)
    probabilities: np.ndarray | None  # float64 [n]: the explained classes' probabilities
    maps: dict[str, np.ndarray]  # method -> float32 [n, H, W]
    batch_images: int  # how many images shared the Explainer call
    facts: dict[str, np.ndarray] = field(default_factory=dict)  # the task's per-image facts (segmentation: region)


class DynamicBatcher:
    """A bounded queue for one model, in lanes: `workers` inference threads for the sweep lane and
    `gradient_workers` for the gradient lane (0: one shared lane of `workers` threads), each with its own Explainer."""

    def __init__(self, model_name: str, make_explainer: Callable[[], Explainer], max_batch_size: int,
                 max_latency_ms: float, max_queue: int, workers: int = 1, gradient_workers: int = 0) -> None:
        self.model_name = model_name
        self.max_batch_size = int(max_batch_size)
        self.max_latency = float(max_latency_ms) / 1000.0
        self.max_queue = int(max_queue)
        self.separate_lanes = int(gradient_workers) > 0
        counts = {SWEEP: int(workers), GRADIENT: int(gradient_workers)} if self.separate_lanes else {SHARED: int(workers)}
        self._pending: dict[str, collections.deque[Job]] = {lane: collections.deque() for lane in counts}
        self._queued_images = 0
        self._closed = False
        self._condition = threading.Condition()
        lanes = [lane for lane, count in counts.items() for _ in range(count)]
        # the sweep lane's Explainers (and ONNX Runtime's threads) at a lower CPU priority: gradient work goes first
        self.explainers = [made_at_lower_priority(make_explainer) if lane == SWEEP else make_explainer()
                           for lane in lanes]
        self._threads = [threading.Thread(target=self._work, args=(explainer, lane), daemon=True,
                                          name=f"fusioncam-{model_name}-{lane}-worker-{i}")
                         for i, (explainer, lane) in enumerate(zip(self.explainers, lanes))]
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
            self._pending[lane_of(job.methods, self.separate_lanes)].append(job)
            self._queued_images += job.count
            metrics.set_queue_depth(self.model_name, self._queued_images)
            self._condition.notify_all()
        return job.future

    def withdraw(self, job: Job) -> None:
        """Take an abandoned job off the queue at once (its images no longer count against --max-queue); a job a
        worker already took stays with its batch, which stops at its next scorer batch once all its jobs are gone."""
        job.abandoned = True
        with self._condition:
            queue = self._pending[lane_of(job.methods, self.separate_lanes)]
            if job in queue:
                queue.remove(job)
                self._queued_images -= job.count
                metrics.set_queue_depth(self.model_name, self._queued_images)
                job.drop()
                self._condition.notify_all()

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new jobs, let the workers finish the queued ones, then close the Explainers."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    def _next_batch(self, lane: str) -> list[Job] | None:
        """The lane's next compatible group, FIFO, up to max_batch_size images; None once closed and drained."""
        with self._condition:
            while True:
                batch = self._gather(self._pending[lane])
                if batch is None or batch:
                    return batch

    def _drop_gone(self, pending: collections.deque[Job]) -> None:
        """Remove the jobs nobody waits for any more (never computed); call holding the condition."""
        now = time.monotonic()
        gone = [job for job in pending if job.gone(now)]
        for job in gone:
            pending.remove(job)
            self._queued_images -= job.count
            job.drop()
        if gone:
            metrics.set_queue_depth(self.model_name, self._queued_images)

    def _gather(self, pending: collections.deque[Job]) -> list[Job] | None:
        """One group taken off the queue (empty when all its requests were abandoned); call holding the condition."""
        while True:
            self._drop_gone(pending)
            while not pending and not self._closed:
                self._condition.wait()
                self._drop_gone(pending)
            if not pending:
                return None
            first = pending[0]
            ready = sum(job.count for job in pending if job.methods == first.methods)
            wait = min(first.enqueued + self.max_latency, first.deadline) - time.monotonic()
            if ready >= self.max_batch_size or wait <= 0 or self._closed:
                break
            self._condition.wait(wait)
        self._drop_gone(pending)
        if not pending:
            return []
        first = pending[0]
        batch, images = [], 0
        for job in pending:
            if job.methods != first.methods:
                continue
            if batch and images + job.count > self.max_batch_size:
                break
            batch.append(job)
            images += job.count
        for job in batch:
            pending.remove(job)
        self._queued_images -= images
        metrics.set_queue_depth(self.model_name, self._queued_images)
        return [job for job in batch if job.future.set_running_or_notify_cancel()]  # drop abandoned requests

    def _work(self, explainer: Explainer, lane: str) -> None:
        """One inference thread of a lane: its own Explainer, batches until the batcher is closed."""
        if lane == SWEEP:
            lower_this_thread()
        try:
            while (batch := self._next_batch(lane)) is not None:
                self._run(explainer, batch)
        finally:
            explainer.close()

    def _run(self, explainer: Explainer, batch: list[Job]) -> None:
        """Explain a batch and hand each job its rows as soon as they exist; on a failure one image caused
        (a FusionCamError), the jobs are explained again one by one (batch_retry) and a job that fails alone is
        answered BadRequest (HTTP 400)."""
        for job, outcome in each_alone_on_failure(batch, lambda jobs: self._outcomes(explainer, jobs),
                                                  lambda _job, exc: BadRequest(str(exc))):
            if outcome is None:
                job.drop()
            elif isinstance(outcome, Exception):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)

    def _outcomes(self, explainer: Explainer, jobs: list[Job]) -> list[JobResult | Exception | None]:
        """Each job's rows from one Explainer call, or what ends every job of the call alike: None when all were
        abandoned (the call stopped at a scorer batch; each job is dropped), the exception of a bug or a runtime
        failure (each waiting request gets it, HTTP 500, none hangs). A FusionCamError is raised on, to be retried."""
        try:
            return self._explain(explainer, jobs)
        except RequestAbandoned:
            log.info("model %s: a batch of %d request(s) stopped at a scorer batch: all were abandoned",
                     self.model_name, len(jobs))
            return [None] * len(jobs)
        except FusionCamError:
            raise
        except Exception as exc:
            log.exception("inference failed for model %s", self.model_name)
            return [exc] * len(jobs)

    def _explain(self, explainer: Explainer, batch: list[Job]) -> list[JobResult]:
        """One Explainer call for the whole batch, split back into per-job results."""
        images = np.concatenate([job.images for job in batch]) if len(batch) > 1 else batch[0].images
        methods = batch[0].methods
        total = int(images.shape[0])
        payloads = payloads_for(explainer.bundle.manifest)
        if hasattr(payloads, "serve_batch"):  # several rows per image (detection): the task's payloads pad per image
            specs = None if batch[0].regions is None else [r for job in batch for r in job.regions]
            logits, classes, probabilities, maps, facts, timings = payloads.serve_batch(
                explainer, images, methods, specs, _stop_when_all_gone(batch))
            forwards_run = int(timings.get("scorer_forwards_run", 0)) + int(timings.get("method_forwards_run", 0))
            forwards_skipped = int(timings.get("scorer_forwards_skipped", 0))
        elif methods:
            targets = np.concatenate([job.targets for job in batch])  # resolved: -1 (ARGMAX) is the top class
            regions = None if batch[0].regions is None else [r for job in batch for r in job.regions]
            explanation = explainer.explain(images, [None if t == ARGMAX else int(t) for t in targets], methods=methods,
                                            regions=regions, on_batch=_stop_when_all_gone(batch))
            logits, classes, probabilities = explanation.logits, explanation.classes, explanation.probabilities
            facts = payloads_for(explainer.bundle.manifest).explained_facts(explanation)
            maps = explanation.maps
            timings = explanation.timings
            forwards_run = int(timings.get("scorer_forwards_run", 0)) + int(timings.get("method_forwards_run", 0))
            forwards_skipped = int(timings.get("scorer_forwards_skipped", 0))
        else:
            logits, classes, probabilities, maps = predicted_logits(explainer, images), None, None, {}
            facts = {}
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
                batch_images=total, facts={name: np.array(array[rows]) for name, array in facts.items()},
            ))
        return results


def _stop_when_all_gone(batch: list[Job]) -> Callable[[int, int], None]:
    """An on_batch callback (called after every scorer batch) that stops the call once no job of the batch is
    waited for any more."""
    def check(_done: int, _total: int) -> None:
        now = time.monotonic()
        if all(job.gone(now) for job in batch):
            raise RequestAbandoned(f"all {len(batch)} request(s) of the batch were abandoned")

    return check


def predicted_logits(explainer: Explainer, images: np.ndarray) -> np.ndarray:
    """float32: what the task predicts for preprocessed images without an explanation (a classifier's logits
    [N, classes], a segmentation model's class scores [N, C, H', W']). Called only from the Explainer's own worker
    thread."""
    return payloads_for(explainer.bundle.manifest).predict(explainer, images)

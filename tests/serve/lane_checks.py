"""The batcher checks of test_lanes.py, run as `python -m tests.serve.lane_checks FOLDER` in a child process:
real Explainers on a tiny wide bundle; any failed check raises AssertionError (exit 1)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np

import fusioncam
from fusioncam.serve.batching import DynamicBatcher, Job
from fusioncam.serve.deadlines import DeadlineExceeded
from fusioncam.serve.thread_priority import thread_nice
from tests.serve.slow_models import wide_bundle

SIZE = 16


class CountingExplainer:
    """A real Explainer whose explain calls are counted and can be held at their first scorer batch."""

    def __init__(self, bundle) -> None:
        self.inner = fusioncam.Explainer(bundle, device="cpu", batch_size=1)
        self.calls, self.scorer_batches = 0, 0
        self.hold = threading.Event()
        self.holding = threading.Event()
        self.backend = self.inner.backend
        self.bundle = self.inner.bundle

    def explain(self, images, targets=None, methods=("fusion",), on_batch=None, **kwargs):
        self.calls += 1

        def counted(done: int, total: int) -> None:
            self.scorer_batches += 1
            if self.hold.is_set():
                self.holding.set()
                while self.hold.is_set():
                    time.sleep(0.01)
            if on_batch is not None:
                on_batch(done, total)

        return self.inner.explain(images, targets, methods=methods, on_batch=counted, **kwargs)

    def close(self) -> None:
        self.inner.close()


def job(methods, deadline=float("inf"), seed=0) -> Job:
    images = np.random.default_rng(seed).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    return Job(images=images, targets=np.array([-1]), methods=tuple(methods), deadline=deadline)


def check_lanes_deadlines_and_abandoned_work(bundle: Path) -> None:
    made: list[CountingExplainer] = []

    def make():
        made.append(CountingExplainer(bundle))
        return made[-1]

    batcher = DynamicBatcher("wide", make, max_batch_size=4, max_latency_ms=0, max_queue=16, workers=1,
                             gradient_workers=1)
    try:
        sweep_explainer, gradient_explainer = made  # lanes in order: sweep, gradient
        if sys.platform == "linux":  # the sweep lane's worker runs at a lower CPU priority, the gradient lane's not
            deadline = time.monotonic() + 20  # the worker lowers its own priority when it starts running
            while True:
                nice = {thread.name.split("-")[2]: thread_nice(thread.native_id) for thread in batcher._threads}
                if nice["sweep"] >= nice["gradient"] + 5 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert nice["sweep"] >= nice["gradient"] + 5, nice
        sweep_explainer.hold.set()
        long_job = job(("fusion",))
        batcher.submit(long_job)
        assert sweep_explainer.holding.wait(30), "the sweep never reached a scorer batch"
        quick = job(("gradcam",), seed=1)
        answer = batcher.submit(quick).result(timeout=60)
        assert gradient_explainer.calls == 1
        want = gradient_explainer.inner.explain(quick.images, methods=("gradcam",)).maps["gradcam"]
        np.testing.assert_array_equal(answer.maps["gradcam"], want)

        expired = job(("scorecam",), deadline=time.monotonic() + 0.2, seed=2)  # waits behind the held sweep
        batcher.submit(expired)
        time.sleep(0.3)  # its deadline passes in the queue
        batcher.withdraw(long_job)  # its client is gone: the running batch stops at its next scorer batch
        batches_when_abandoned = sweep_explainer.scorer_batches
        sweep_explainer.hold.clear()
        try:  # the worker, free again, drops it instead of computing it
            expired.future.result(timeout=30)
        except DeadlineExceeded:
            pass
        else:
            raise AssertionError("the expired job was answered")
        assert long_job.future.cancelled() or long_job.future.exception(timeout=30) is not None
        assert sweep_explainer.scorer_batches <= batches_when_abandoned + 1, "the sweep ran on after it was abandoned"
        assert sweep_explainer.calls == 1, "the expired job was computed"
    finally:
        batcher.close()


if __name__ == "__main__":
    check_lanes_deadlines_and_abandoned_work(wide_bundle(Path(sys.argv[1]), "wide", 64, SIZE))
    print("all lane checks passed")

"""The batcher's lanes and deadlines with real Explainers on a tiny bundle, without a server: which lane a request
takes (from the method registry), a Grad-CAM job answered while the sweep lane is held, an expired job dropped
without an Explainer call, and a running batch stopped at a scorer batch once all its jobs are abandoned."""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("kserve", reason="the serve extra (kserve) is not installed: pip install 'fusioncam[serve]'")

import fusioncam  # noqa: E402
from fusioncam.runtime.methods.registry import METHODS  # noqa: E402
from fusioncam.serve.batching import DynamicBatcher, Job  # noqa: E402
from fusioncam.serve.deadlines import DeadlineExceeded  # noqa: E402
from fusioncam.serve.lanes import GRADIENT, GRADIENT_METHODS, SHARED, SWEEP, lane_of  # noqa: E402
from fusioncam.serve.thread_priority import thread_nice  # noqa: E402
from tests.serve.slow_models import wide_bundle  # noqa: E402

SIZE = 16


def test_lanes_follow_the_registry():
    assert GRADIENT_METHODS == {"gradcam", "gradcam++", "xgradcam"}
    assert lane_of(()) == GRADIENT and lane_of(("gradcam", "xgradcam")) == GRADIENT
    for method in set(METHODS) - GRADIENT_METHODS:
        assert lane_of((method,)) == SWEEP and lane_of(("gradcam", method)) == SWEEP
    assert lane_of(("gradcam",), separate_lanes=False) == SHARED


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return wide_bundle(tmp_path_factory.mktemp("lanes"), "wide", 64, SIZE)


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


@pytest.mark.slow  # two Explainers and a Fusion-CAM: several seconds on a loaded machine
def test_a_gradient_job_is_answered_while_the_sweep_lane_is_held_and_abandoned_work_stops(bundle):
    made: list[CountingExplainer] = []

    def make():
        made.append(CountingExplainer(bundle))
        return made[-1]

    batcher = DynamicBatcher("wide", make, max_batch_size=4, max_latency_ms=0, max_queue=16, workers=1,
                             gradient_workers=1)
    try:
        sweep_explainer, gradient_explainer = made  # lanes in order: sweep, gradient
        if sys.platform == "linux":  # the sweep lane's worker runs at a lower CPU priority, the gradient lane's not
            time.sleep(0.2)
            nice = {thread.name.split("-")[2]: thread_nice(thread.native_id) for thread in batcher._threads}
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
        with pytest.raises(DeadlineExceeded):  # the worker, free again, drops it instead of computing it
            expired.future.result(timeout=30)
        assert long_job.future.cancelled() or long_job.future.exception(timeout=30) is not None
        assert sweep_explainer.scorer_batches <= batches_when_abandoned + 1, "the sweep ran on after it was abandoned"
        assert sweep_explainer.calls == 1, "the expired job was computed"
    finally:
        batcher.close()

"""An Explainer's lifecycle: what construction runs, close() and `with`, and one Explainer shared by threads."""

from __future__ import annotations

import gc
import threading
import weakref

import numpy as np
import pytest
import torch

import fusioncam
from fusioncam.errors import ClosedError
from fusioncam.runtime.cpu_backend import CpuBackend
from fusioncam.runtime.methods import METHODS

SIZE = (32, 32)
THREADS = 4
# Each thread explains its own images with its own methods: together they cover every method.
THREAD_METHODS = [("fusion",), ("gradcam++", "groupcam"), ("unioncam", "scorecam"), METHODS]


class SmallNet(torch.nn.Module):
    """Two convolutions (the second is the target layer, 16 channels at 8x8), pooling and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
        )
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(16, 10)
        with torch.no_grad():
            self.fc.weight.mul_(8.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("small") / "small.fcam"
    fusioncam.export_torch(SmallNet().eval(), "features.3", out, input_size=SIZE)
    return out


def images_of(seed: int, n: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, *SIZE)).astype(np.float32)


def assert_same_explanation(got, want) -> None:
    """Every map and every per-image fact equal, bit for bit."""
    assert got.methods == want.methods
    for name in want.methods:
        np.testing.assert_array_equal(got.maps[name], want.maps[name], err_msg=name)
    np.testing.assert_array_equal(got.classes, want.classes)
    np.testing.assert_array_equal(got.probabilities, want.probabilities)
    for key in ("betas", "union_betas"):
        for name, values in (getattr(want, key) or {}).items():
            np.testing.assert_array_equal(getattr(got, key)[name], values, err_msg=f"{key}[{name}]")
    for key in ("group_scores", "forwards_run", "degenerate", "union_kept_combined"):
        if getattr(want, key) is not None:
            np.testing.assert_array_equal(getattr(got, key), getattr(want, key), err_msg=key)


def test_construction_scores_z0_once_and_runs_nothing_else(bundle, monkeypatch):
    calls = []
    for name in ("explain", "score_rows", "warm_up"):
        original = getattr(CpuBackend, name)
        monkeypatch.setattr(CpuBackend, name, lambda self, *args, _n=name, _f=original: calls.append(
            (_n, tuple(getattr(a, "shape", a) for a in args))) or _f(self, *args))
    explainer = fusioncam.Explainer(bundle, device="cpu", batch_size=8)
    assert [(name, args[0], dict(args[1])) for name, args in calls] == [("score_rows", 1, {})]  # z0, one row
    assert not explainer.backend.input_buffer()[:1].any()  # the row it scored: the all-zeros image
    explainer.close()


def test_close_releases_the_sessions_and_refuses_later_calls(bundle):
    explainer = fusioncam.Explainer(bundle, device="cpu", batch_size=8)
    explainer.explain(images_of(0, 1))
    backend = explainer.backend
    sessions = [weakref.ref(backend._explain), weakref.ref(backend._scorer)]
    buffer = weakref.ref(backend.input_buffer().base if backend.input_buffer().base is not None
                         else backend.input_buffer())
    explainer.close()
    gc.collect()
    assert explainer.closed
    assert [ref() for ref in sessions] == [None, None]  # no reference left: ONNX Runtime freed them
    assert buffer() is None
    with pytest.raises(ClosedError, match="closed.*create a new Explainer"):
        explainer.explain(images_of(0, 1))
    with pytest.raises(ClosedError, match="warm up"):
        explainer.warm_up()
    explainer.close()  # idempotent


def test_with_block_closes_and_gives_the_same_maps(bundle):
    images = images_of(1)
    open_one = fusioncam.Explainer(bundle, device="cpu", batch_size=8)
    want = open_one.explain(images, methods=METHODS)
    with fusioncam.Explainer(bundle, device="cpu", batch_size=8) as explainer:
        assert not explainer.closed
        got = explainer.explain(images, methods=METHODS)
    assert explainer.closed
    assert_same_explanation(got, want)
    open_one.close()


def test_four_threads_sharing_one_explainer_get_the_sequential_maps_bit_for_bit(bundle):
    explainer = fusioncam.Explainer(bundle, device="cpu", batch_size=8)  # small batches: many interleaving points
    work = [(images_of(10 + i, n=2 + i % 2), THREAD_METHODS[i]) for i in range(THREADS)]
    sequential = [explainer.explain(images, methods=methods) for images, methods in work]

    rounds = 6
    results: list[list] = [[] for _ in range(THREADS)]
    failures: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def worker(i: int) -> None:
        try:
            start.wait(timeout=30)
            images, methods = work[i]
            for _ in range(rounds):
                results[i].append(explainer.explain(images, methods=methods))
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert not failures, failures
    for i in range(THREADS):
        assert len(results[i]) == rounds
        for got in results[i]:
            assert_same_explanation(got, sequential[i])
    explainer.close()

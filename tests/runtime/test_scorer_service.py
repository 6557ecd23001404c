"""The scoring service: rows written run by run, scored, read back; checked against the bundle's scorer graph run
directly by ONNX Runtime on the same rows, and shared safely by the metrics and explanations of several threads."""

from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort
import pytest

import fusioncam
from fusioncam.errors import ClosedError
from fusioncam.graph_names import INPUT, LOGITS
from fusioncam.metrics import deletion_auc, insertion_auc
from tests.support.tiny_models import save, tiny_classifier

SIZE, CLASSES = 8, 5


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    model = save(tiny_classifier(size=SIZE, classes=CLASSES, seed=2), folder / "tiny.onnx")
    fusioncam.export_onnx(model, folder / "tiny.bundle", "feat")
    return folder / "tiny.bundle"


def rows_of(total: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((total, 3, SIZE, SIZE)).astype(np.float32)


def direct_logits(bundle, rows: np.ndarray) -> np.ndarray:
    """The scorer graph's logits for each row, one row per run, by ONNX Runtime itself."""
    session = ort.InferenceSession(str(bundle / "scorer.onnx"), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run([LOGITS], {INPUT: rows[i : i + 1]})[0] for i in range(len(rows))])


@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_run_writes_every_row_once_in_order_and_reads_its_logits(bundle, batch_size):
    rows = rows_of(11)
    explainer = fusioncam.Explainer(bundle, device="cpu", batch_size=batch_size)
    written, read, progress = [], np.full((11, CLASSES), np.nan, dtype=np.float32), []

    def write(start, stop, buffer):
        written.append((start, stop))
        buffer[: stop - start] = rows[start:stop]

    def keep(start, stop, logits):
        read[start:stop] = logits

    with explainer.scorer.in_use("test") as scorer:
        scorer.run(11, write, keep, on_batch=lambda done, runs: progress.append((done, runs)))
    runs = -(-11 // batch_size)
    assert written == [(s, min(s + batch_size, 11)) for s in range(0, 11, batch_size)]
    assert progress == [(i, runs) for i in range(1, runs + 1)]
    np.testing.assert_allclose(read, direct_logits(bundle, rows), rtol=1e-5, atol=1e-6)


def test_class_probabilities_and_target_logits_pick_each_rows_class(bundle):
    rows = rows_of(9, seed=1)
    classes = np.arange(9) % CLASSES
    want = direct_logits(bundle, rows).astype(np.float64)
    softmax = np.exp(want - want.max(axis=1, keepdims=True))
    softmax /= softmax.sum(axis=1, keepdims=True)

    def write(start, stop, buffer):
        buffer[: stop - start] = rows[start:stop]

    explainer = fusioncam.Explainer(bundle, device="cpu", batch_size=4)
    with explainer.scorer.in_use("test") as scorer:
        probabilities = scorer.class_probabilities(9, classes, write)
        logits = scorer.target_logits(9, classes, write)
    assert probabilities.dtype == np.float64 and logits.dtype == np.float32
    np.testing.assert_allclose(probabilities, softmax[np.arange(9), classes], rtol=1e-5)
    np.testing.assert_allclose(logits, want[np.arange(9), classes], rtol=1e-5, atol=1e-6)


def test_a_closed_scorer_refuses_the_metrics(bundle):
    explainer = fusioncam.Explainer(bundle, device="cpu", batch_size=4)
    images, maps = rows_of(2), np.random.default_rng(3).random((2, SIZE, SIZE)).astype(np.float32)
    explainer.close()
    with pytest.raises(ClosedError, match="score perturbed images"):
        deletion_auc(explainer, images, maps, 0, step=8)


def test_metrics_and_explanations_from_threads_equal_the_sequential_ones(bundle):
    explainer = fusioncam.Explainer(bundle, device="cpu", batch_size=3)
    images = rows_of(4, seed=4)
    maps = np.random.default_rng(5).random((4, SIZE, SIZE)).astype(np.float32)
    jobs = [lambda: deletion_auc(explainer, images, maps, [0, 1, 2, 3], step=5),
            lambda: insertion_auc(explainer, images, maps, None, step=7),
            lambda: explainer.explain(images, methods=("fusion", "groupcam")).maps["fusion"],
            lambda: explainer.explain(images[:2], methods="scorecam").maps["scorecam"]]
    want = [job() for job in jobs]
    got: dict[int, list] = {i: [] for i in range(len(jobs))}
    failures: list[BaseException] = []
    start = threading.Barrier(len(jobs))

    def worker(i: int) -> None:
        try:
            start.wait(timeout=30)
            for _ in range(5):
                got[i].append(jobs[i]())
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads) and not failures, failures
    for i, expected in enumerate(want):
        for value in got[i]:
            np.testing.assert_array_equal(value, expected)

"""The scoring service: the one loop that turns rows of masked or perturbed images into the scorer's logits.

The Score-CAM sweep, the methods' probes and the faithfulness metrics all do the same thing: write N rows into
the scorer's input buffer run by run (the backend's batch_ranges), run the scorer, read its output. `Scorer` is
that loop, written once; each caller gives a row writer (what row j is), the rows' targets where the task's scorer
needs them per row (class and region for segmentation), and a reader (what to keep of the output). The bundle's
task (fusioncam/tasks/) says what a row's explained score is; nothing here depends on which task it is.
It is also what an Explainer shares with the metrics instead of its backend: the device context, the array
module and kernels, host/device copies, and the lock that serialises every use of the one input buffer.
"""

from __future__ import annotations

import contextlib
import threading
from types import ModuleType
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import ClosedError
from ..kernels import Array, KernelSet
from .backend import EMPTY_INPUTS, Backend
from .stage_clock import NullClock, StageClock

RowWriter = Callable[[int, int, Array], None]  # (start, stop, buffer): rows start .. stop-1 into buffer[:stop-start]
LogitReader = Callable[[int, int, Array], None]  # (start, stop, the scorer's float32 output for those rows, on the device)
ProgressCallback = Callable[[int, int], None]  # (scorer runs done, scorer runs in all)


class Scorer:
    """The batched scorer of one bundle on one backend, shared by an Explainer and the metrics that use it.

    Every use goes through `in_use()`: it holds a re-entrant lock (the input buffer, the CUDA backend's bound
    buffers and stream exist once, so concurrent users are serialised), makes the device current, and refuses
    a closed scorer with ClosedError.
    """

    def __init__(self, backend: Backend, owner: str, task=None) -> None:
        self.backend = backend
        if task is None:
            from ..tasks.classification import CLASSIFICATION

            task = CLASSIFICATION
        self.task = task  # the bundle's Task: the rows' extra inputs and how a row's score is read
        self._owner = owner  # named in ClosedError messages
        self._lock = threading.RLock()
        self._closed = False

    @property
    def xp(self) -> ModuleType:
        """numpy or cupy: the array module of the backend's device."""
        return self.backend.xp

    @property
    def kernels(self) -> KernelSet:
        """The backend's kernels (row writers use them)."""
        return self.backend.kernels

    def asarray(self, array: Any) -> Array:
        """A host or device array on the scorer's device."""
        return self.backend.asarray(array)

    def to_host(self, array: Array) -> np.ndarray:
        """A device array copied to the host, after the scorer's work."""
        return self.backend.to_host(array)

    @property
    def closed(self) -> bool:
        return self._closed

    @contextlib.contextmanager
    def in_use(self, action: str) -> Iterator["Scorer"]:
        """Hold the lock and make the device current for `action` (named in the error if the scorer is closed)."""
        with self._lock:
            if self._closed:
                raise ClosedError(f"cannot {action}: the {self._owner} was closed, which released its ONNX Runtime "
                                  f"sessions and buffers; create a new Explainer")
            with self.backend.context():
                yield self

    def close(self) -> None:
        """Release the backend's sessions and buffers once a use in progress ends; later uses raise ClosedError."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self.backend.close()

    def run(self, total: int, write_rows: RowWriter, read_logits: LogitReader, clock: StageClock | None = None,
            on_batch: ProgressCallback | None = None, rows=None) -> None:
        """Score `total` rows: for each scorer run (start, stop), write_rows fills the buffer's first stop - start
        rows (timed as mask_generation), the scorer runs with the task's row inputs of `rows[start:stop]` (the rows'
        targets; None: rows without extra inputs, as a classifier's) and read_logits gets its output
        (scorer_forwards); on_batch(done, runs) follows each run. Call inside in_use()."""
        clock = clock or NullClock()
        backend, task = self.backend, self.task
        buffer = backend.input_buffer()
        ranges = backend.batch_ranges(total)
        for done, (start, stop) in enumerate(ranges, 1):
            clock.start("mask_generation")
            write_rows(start, stop, buffer)
            inputs = task.row_feed(rows[start:stop]) if rows is not None else EMPTY_INPUTS
            clock.stop("mask_generation")
            clock.start("scorer_forwards")
            read_logits(start, stop, backend.score_rows(stop - start, inputs))
            clock.stop("scorer_forwards")
            if on_batch is not None:
                on_batch(done, len(ranges))

    def class_probabilities(self, total: int, classes_of_row: Array, write_rows: RowWriter,
                            clock: StageClock | None = None) -> Array:
        """float64 [total] on the device: each row's explained probability for its target classes_of_row[row] (a
        classifier's softmax at the class; a segmentation model's region probability P): Task.row_probabilities.
        classes_of_row are the rows' targets: Task.image_targets(...) indexed by each row's image."""
        xp, task = self.xp, self.task
        out = xp.empty((total,), dtype=xp.float64)

        def read(start: int, stop: int, outputs: Array) -> None:
            out[start:stop] = task.row_probabilities(xp, outputs, classes_of_row[start:stop])

        self.run(total, write_rows, read, clock, rows=classes_of_row)
        return out

    def target_logits(self, total: int, classes_of_row: Array, write_rows: RowWriter,
                      clock: StageClock | None = None, on_batch: ProgressCallback | None = None) -> Array:
        """float32 [total] on the device: each row's raw explained score for its target classes_of_row[row] (a
        classifier's logit at the class; P for segmentation): Task.row_scores."""
        xp, task = self.xp, self.task
        out = xp.empty((total,), dtype=xp.float32)

        def read(start: int, stop: int, outputs: Array) -> None:
            out[start:stop] = task.row_scores(xp, outputs, classes_of_row[start:stop])

        self.run(total, write_rows, read, clock, on_batch, rows=classes_of_row)
        return out

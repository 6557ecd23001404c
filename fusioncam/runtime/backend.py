"""The `Backend` protocol: exactly what the runtime asks of a device (CpuBackend, CudaBackend conform to it).

Like Polygraphy's BaseRunner, it makes the duck typing explicit: a new device is one class with these members,
and a test checks that both backends have every one of them.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, ContextManager, Protocol, runtime_checkable

import numpy as np

from ..kernels import Array, KernelSet
from .stage_clock import StageClock


@runtime_checkable
class Backend(Protocol):
    """The explain graph and the scorer of one bundle on one device, with that device's array module and kernels.

    The scorer has one input buffer of `batch_size` rows that callers write masked images into and then run;
    `batch_ranges` says how rows are cut into runs on this device. Not thread-safe by itself: the Explainer
    serialises every use of one backend.
    """

    xp: ModuleType  # numpy or cupy: the array module of every array this backend takes and returns
    kernels: KernelSet
    batch_size: int  # rows of the scorer's input buffer

    def context(self) -> ContextManager[Any]:
        """Make this backend's device (and stream) current for array work."""

    def explain(self, images: Array, targets: Array) -> dict[str, Array]:
        """One explain pass: the graph_names.EXPLAIN_OUTPUTS of each image for its target (-1: the arg-max)."""

    def input_buffer(self) -> Array:
        """The scorer's [batch_size, 3, H, W] input buffer that the mask kernels write into."""

    def batch_ranges(self, total: int) -> list[tuple[int, int]]:
        """(start, stop) of the scorer runs covering `total` rows."""

    def score_rows(self, count: int) -> Array:
        """float32 logits [count, classes] of the input buffer's first `count` rows."""

    def score(self, images: Array) -> Array:
        """float32 logits of arbitrary inputs (the all-zeros baseline)."""

    def warm_up(self) -> None:
        """Run the scorer at every run size this backend uses, so later runs pay no first-run cost."""

    def asarray(self, array: Any) -> Array:
        """A host or device array as an array of this backend's device."""

    def to_host(self, array: Array) -> np.ndarray:
        """A device array copied to the host, ordered after this backend's work."""

    def clock(self) -> StageClock:
        """A fresh per-stage timer for one call."""

    def close(self) -> None:
        """Release the sessions and buffers; the backend is unusable afterwards."""

"""The `Backend` protocol: exactly what the runtime asks of a device (CpuBackend, CudaBackend conform to it).

Like Polygraphy's BaseRunner, it makes the duck typing explicit: a new device is one class with these members,
and a test checks that both backends have every one of them.
"""

from __future__ import annotations

from types import MappingProxyType, ModuleType
from typing import Any, ContextManager, Mapping, Protocol, runtime_checkable

import numpy as np

from ..kernels import Array, KernelSet
from .stage_clock import StageClock

EMPTY_INPUTS: Mapping[str, Any] = MappingProxyType({})  # a scorer run whose rows need nothing beside the image


@runtime_checkable
class Backend(Protocol):
    """The explain graph and the scorer of one bundle on one device, with that device's array module and kernels.

    The scorer has one input buffer of `batch_size` rows that callers write masked images into and then run;
    `batch_ranges` says how rows are cut into runs on this device. Not thread-safe by itself: the Explainer
    serialises every use of one backend.

    Task-agnostic: the bundle's Task (fusioncam/tasks/) names the explain graph's target inputs and outputs and the
    scorer's per-row inputs and output; the backend feeds whatever inputs it is given by name and returns the
    outputs, with no knowledge of what they mean. Every member holds for every task.
    """

    xp: ModuleType  # numpy or cupy: the array module of every array this backend takes and returns
    kernels: KernelSet
    batch_size: int  # rows of the scorer's input buffer

    def context(self) -> ContextManager[Any]:
        """Make this backend's device (and stream) current for array work."""

    def explain(self, images: Array, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """One explain pass of images [N,3,H,W] with the task's target inputs (Task.explain_feed, on this device):
        the task's explain_outputs by name."""

    def input_buffer(self) -> Array:
        """The scorer's [batch_size, 3, H, W] input buffer that the mask kernels write into."""

    def batch_ranges(self, total: int) -> list[tuple[int, int]]:
        """(start, stop) of the scorer runs covering `total` rows."""

    def score_rows(self, count: int, inputs: Mapping[str, Array] = EMPTY_INPUTS) -> Array:
        """The scorer's output (the task's scorer_output, as float32) for the input buffer's first `count` rows, each
        row with its `inputs` (the task's row_inputs, `count` rows each; none for a classifier): logits
        [count, classes], or one score per row [count]."""

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

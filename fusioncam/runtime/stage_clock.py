"""Per-stage wall time of an explanation: host clocks on CPU, CUDA events on the GPU (no extra syncs)."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Protocol


class StageClock(Protocol):
    """Accumulates time per named stage of one explanation; `totals()` reads the seconds at the end."""

    def start(self, stage: str) -> None: ...

    def stop(self, stage: str) -> None: ...

    def totals(self) -> dict[str, float]: ...


class HostClock:
    """Accumulates perf_counter intervals per stage name."""

    def __init__(self) -> None:
        self._totals: dict[str, float] = defaultdict(float)
        self._open: dict[str, float] = {}

    def start(self, stage: str) -> None:
        self._open[stage] = time.perf_counter()

    def stop(self, stage: str) -> None:
        self._totals[stage] += time.perf_counter() - self._open.pop(stage)

    def totals(self) -> dict[str, float]:
        """Seconds per stage."""
        return dict(self._totals)


class CudaEventClock:
    """Records CUDA events on a stream; the elapsed times are read once, at the end."""

    def __init__(self, stream) -> None:
        import cupy

        self._cupy = cupy
        self._stream = stream
        self._pairs: list[tuple[str, object, object]] = []
        self._open: dict[str, object] = {}

    def start(self, stage: str) -> None:
        event = self._cupy.cuda.Event()
        event.record(self._stream)
        self._open[stage] = event

    def stop(self, stage: str) -> None:
        event = self._cupy.cuda.Event()
        event.record(self._stream)
        self._pairs.append((stage, self._open.pop(stage), event))

    def totals(self) -> dict[str, float]:
        """Seconds per stage (synchronises on the last event)."""
        totals: dict[str, float] = defaultdict(float)
        if self._pairs:
            self._pairs[-1][2].synchronize()
        for stage, begin, end in self._pairs:
            totals[stage] += self._cupy.cuda.get_elapsed_time(begin, end) / 1000.0
        return dict(totals)


class NullClock:
    """Times nothing: for scorer runs outside an explanation (the metrics), which report no stages."""

    def start(self, stage: str) -> None:
        """Nothing to record."""

    def stop(self, stage: str) -> None:
        """Nothing to record."""

    def totals(self) -> dict[str, float]:
        """No stages."""
        return {}

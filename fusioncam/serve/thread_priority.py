"""Lower CPU priority for the sweep lane's threads, so gradient-lane requests win the cores while a sweep runs.

Linux keeps a nice value per thread, and a thread inherits its creator's. The sweep lane's Explainers are created
in a thread whose nice value was raised (ONNX Runtime's intra-op thread pool, created with each session,
inherits it) and the lane's workers raise their own, so the scheduler runs the gradient lane's work first and the
sweep's in the time left: the sweep is not paused, only preempted by cheaper work. Where per-thread priorities
are not available (not Linux) nothing changes.
"""

from __future__ import annotations

import os
import threading
from typing import Callable, TypeVar

T = TypeVar("T")

SWEEP_NICE_INCREMENT = 10


def lower_this_thread(increment: int = SWEEP_NICE_INCREMENT) -> bool:
    """Raise the calling thread's nice value by `increment` (lower priority); False where that is not possible."""
    if not hasattr(os, "setpriority") or not hasattr(threading, "get_native_id"):
        return False
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + int(increment)))
    except OSError:
        return False
    return True


def made_at_lower_priority(make: Callable[[], T], increment: int = SWEEP_NICE_INCREMENT) -> T:
    """make() called in a new thread of lowered priority (the threads it starts inherit it); its result or error."""
    outcome: dict[str, object] = {}

    def run() -> None:
        lower_this_thread(increment)
        try:
            outcome["value"] = make()
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="fusioncam-sweep-lane-setup")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def thread_nice(native_id: int) -> int:
    """A thread's nice value (for tests and logs)."""
    return os.getpriority(os.PRIO_PROCESS, native_id)


__all__ = ["SWEEP_NICE_INCREMENT", "lower_this_thread", "made_at_lower_priority", "thread_nice"]

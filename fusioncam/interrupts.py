"""Ctrl-C (SIGINT) and SIGTERM for the command line: runs stop at a clean point and keep the record of what finished.

While `stop_signals()` is active, a signal is turned into `Interrupted` (a KeyboardInterrupt naming the signal), so
SIGTERM unwinds like Ctrl-C: temporary files and staging folders are removed by their `finally` blocks. Inside a
`deferred()` section (the explain and evaluate loops) a signal only sets a flag; the loop checks it between images
and scorer batches (`check`), stops there, and writes results.json / index.html for the images already finished.
A second signal inside a deferred section stops right away: a system call that blocks (Python retries one that a
signal interrupts, PEP 475) can then never hold the run, whatever it waits on.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_INTERRUPTED = 130  # the shell's code for a run stopped by Ctrl-C


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal; `signal_name` is SIGINT or SIGTERM."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


class StopSignals:
    """Which stop signal arrived (if any), and whether the code now running stops at its own clean points."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._deferring = 0

    @property
    def requested(self) -> bool:
        """True once SIGINT or SIGTERM arrived."""
        return self.received is not None

    def handle(self, signum: int, _frame=None) -> None:
        """The signal handler: remember the signal; outside a deferred section, or at the second signal, stop right
        here (the exception also ends a system call that Python would otherwise retry)."""
        repeated = self.received is not None
        self.received = self.received or signal.Signals(signum).name
        if not self._deferring or repeated:
            raise Interrupted(self.received)

    def check(self, *_progress) -> None:
        """Raise Interrupted if a stop was requested (usable as an `on_batch(done, total)` callback)."""
        if self.received is not None:
            raise Interrupted(self.received)

    @contextmanager
    def deferred(self) -> Iterator["StopSignals"]:
        """A section that stops only where it calls `check` or reads `requested`: signals set the flag."""
        self._deferring += 1
        try:
            yield self
        finally:
            self._deferring -= 1


_active = StopSignals()  # never signalled unless stop_signals() installed its handler


def active() -> StopSignals:
    """The stop state of this process (a fresh one per stop_signals() block)."""
    return _active


@contextmanager
def stop_signals() -> Iterator[StopSignals]:
    """Handle SIGINT and SIGTERM as described above for the duration of the block (main thread only; elsewhere the
    handlers stay as they are and the returned state is never signalled)."""
    global _active
    state, previous_state = StopSignals(), _active
    _active = state
    installed = {}
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            installed[signum] = signal.signal(signum, state.handle)
    try:
        yield state
    finally:
        for signum, handler in installed.items():
            signal.signal(signum, handler)
        _active = previous_state

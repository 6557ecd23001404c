"""A one-line progress bar over images, drawn on stderr only when stderr is a terminal (quiet in logs and pipes)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """`[#####.....] 3/10 name` redrawn in place; does nothing when the stream is not a TTY."""

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 24) -> None:
        self.total = max(int(total), 1)
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.done = 0
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(isatty and isatty())

    def show(self, label: str) -> None:
        """Redraw the bar with `label` as the image now being explained."""
        if not self.enabled:
            return
        filled = self.width * self.done // self.total
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r\x1b[K[{bar}] {self.done}/{self.total} {label[:60]}")
        self.stream.flush()

    def advance(self, label: str = "") -> None:
        """Count one image as finished (explained or skipped)."""
        self.done += 1
        self.show(label)

    def batch_reporter(self, label: str, started: float, after_seconds: float = 1.0):
        """A callback for Explainer.explain(on_batch=...): once an image has taken `after_seconds`, the bar also shows
        its scorer batches ("batch 7/20"), so a slow image visibly progresses."""

        def report(done: int, total: int) -> None:
            if time.perf_counter() - started >= after_seconds:
                self.show(f"{label} (scorer batch {done}/{total})")

        return report

    def note(self, message: str) -> None:
        """Print a message on its own line without leaving a half-drawn bar behind it."""
        if self.enabled:
            self.stream.write("\r\x1b[K")
        print(message, file=self.stream, flush=True)

    def close(self) -> None:
        """Clear the bar's line."""
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

"""Progress lines of a dataset run, written by the driver as result blocks come back: how many images are done of
how many, the rate and the time left. Ray Data's own progress counts its input blocks (2,000 rows each for a
10,000-row table), so at scale it stood at 0 for minutes and then jumped; these lines count finished images."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

PROGRESS_SECONDS = 30.0  # at most one line per this many seconds (and one when the last block arrives)


def progress_line(done: int, total: int | None, seconds: float) -> str:
    """'explain-dataset: 3616 of 10000 images (36%), 25.3 images/s, about 4 min 12 s left' (no total, no estimate:
    'explain-dataset: 3616 rows, 25.3 rows/s')."""
    rate = done / seconds if seconds > 0 else 0.0
    if total is None or total <= 0:
        return f"explain-dataset: {done} rows, {rate:.1f} rows/s"
    text = f"explain-dataset: {done} of {total} images ({100 * done / total:.0f}%), {rate:.1f} images/s"
    left = max(total - done, 0)
    if rate > 0 and left:
        minutes, secs = divmod(int(round(left / rate)), 60)
        text += f", about {f'{minutes} min ' if minutes else ''}{secs} s left"
    return text


def counted_rows(blocks: Iterable, notify: Callable[[str], None] | None, total: int | None,
                 every: float | None = None) -> int:
    """Run through the result blocks (pyarrow tables), counting their rows; with `notify`, a progress line at most
    every `every` seconds (default PROGRESS_SECONDS) and one after the last block."""
    every = PROGRESS_SECONDS if every is None else every
    count, shown, start = 0, 0, time.perf_counter()
    last = start
    for block in blocks:
        count += block.num_rows
        now = time.perf_counter()
        if notify is not None and now - last >= every:
            last, shown = now, count
            notify(progress_line(count, total, now - start))
    if notify is not None and count != shown:  # the last block's line, whenever it came
        notify(progress_line(count, total, time.perf_counter() - start))
    return count

"""Images that kill the worker process (a crash in a decoder or in ONNX Runtime, the kernel's out-of-memory killer)
become error rows instead of stalling the run.

Ray Data restarts a dead actor and retries its block; by default it retries forever, so an image that kills its
worker every time would hold a run up without end. Here a block is retried `CRASH_RETRIES` times, then set aside
(Ray Data's `max_errored_blocks`) while the other blocks go on; the driver then explains the images of the blocks set
aside again one per block, so that only the images that crash on their own are left, and records those as error
rows naming what happened. Rows of Parquet tables have no identity known before they are read, so a table row
that crashes on its own stays out of the results: the summary counts the input table rows without a result row
(`table_rows_without_result`; duplicates, which share one identity, count there too), the console says so, and a
rerun (which resumes) tries them again.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .output import write_part
from .rows import BatchRows, RowLayout

CRASH_RETRIES = 2  # retries of a block whose worker process died, before it is set aside


@contextmanager
def crashed_blocks_set_aside(ray) -> Iterator[None]:
    """While datasets are built and run inside: a block that failed all its retries is dropped, not fatal."""
    context = ray.data.DataContext.get_current()
    before = context.max_errored_blocks
    context.max_errored_blocks = -1
    try:
        yield
    finally:
        context.max_errored_blocks = before


def crash_message(attempts: int) -> str:
    """The error recorded for an image whose worker died on every attempt."""
    tries = "its only attempt" if attempts == 1 else f"each of {attempts} attempts"
    return (f"the worker process died on {tries} to explain this image alone (a crash in decoding or inference, "
            f"or the system's out-of-memory killer); check the file, or the worker logs under Ray's session folder")


def write_crash_rows(out: Path, layout: RowLayout, sources: Sequence[str], attempts: int) -> Path:
    """One part file of error rows for `sources`; a rerun skips them like any other row."""
    rows = BatchRows(layout)
    for source in sources:
        rows.add({"source": source, "error": crash_message(attempts)})
    return write_part(out, rows.table())

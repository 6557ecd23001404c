"""How rows are cut into scorer runs: full batches, then a remainder that pads as little as possible.

The CPU runs any number of rows, so its remainder is one exact run. The CUDA backend runs bound buffers of a
few fixed shapes (each shape pays cuDNN's algorithm search once), so its remainder is cut into power-of-two
runs of at least SMALLEST_PADDED_RUN rows: 1958 rows at batch 256 become 7 x 256 + 128 + 32 + 8 (2 padding
rows) instead of 8 x 256 (90 padding rows), and Fusion-CAM's 1- and 2-row probe rounds run 8 rows, not 256.
"""

from __future__ import annotations

SMALLEST_PADDED_RUN = 8


def padded_rows(count: int, batch_size: int) -> int:
    """Rows a fixed-shape backend runs for `count` wanted rows: the smallest power of two >= count, at least
    SMALLEST_PADDED_RUN, at most batch_size (batch_size itself is always a shape)."""
    if not 0 < count <= batch_size:
        raise ValueError(f"a scorer run holds 1 to {batch_size} rows, not {count}")
    rows = SMALLEST_PADDED_RUN
    while rows < count:
        rows *= 2
    return min(rows, batch_size)


def row_ranges(total: int, batch_size: int, padded: bool) -> list[tuple[int, int]]:
    """(start, stop) of each scorer run covering rows 0 .. total - 1, in order.

    Full batches first; then, for a `padded` (fixed-shape) backend, the remainder in one run if that pads
    fewer than SMALLEST_PADDED_RUN rows, else the largest power of two that fits and the same again for the
    rest, so a plan never pads SMALLEST_PADDED_RUN rows or more. Unpadded, the remainder is a single run.
    """
    ranges, start = [], 0
    while total - start >= batch_size:
        ranges.append((start, start + batch_size))
        start += batch_size
    while start < total:
        left = total - start
        run = left
        if padded and padded_rows(left, batch_size) - left >= SMALLEST_PADDED_RUN:
            run = 1 << (left.bit_length() - 1)  # the largest power of two <= left
        ranges.append((start, start + run))
        start += run
    return ranges


def padded_run_sizes(batch_size: int) -> list[int]:
    """Every run size a fixed-shape backend can bind: powers of two from SMALLEST_PADDED_RUN below batch_size,
    and batch_size itself."""
    sizes, rows = [], SMALLEST_PADDED_RUN
    while rows < batch_size:
        sizes.append(rows)
        rows *= 2
    return sizes + [batch_size]

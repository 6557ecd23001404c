"""Huge test images written cheaply: a PNG decompression bomb and a large JPEG (tests/test_memory_bounds.py and
benchmarks/memory_bounds.py share them)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png_bomb(path: Path, side: int) -> None:
    """A valid side x side 8-bit grayscale PNG of zeros: a few hundred KB on disk, side^2 bytes (x3 as RGB) decoded."""
    compressor = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte 0, then zeros
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data)
                           + _png_chunk(b"IEND", b""))


def write_huge_jpeg(path: Path, side: int) -> None:
    """A side x side colour JPEG of ramps (side^2 x 3 bytes decoded)."""
    import cv2
    import numpy as np

    ramp = (np.arange(side, dtype=np.uint32)[None, :] % 251).astype(np.uint8).repeat(side, axis=0)
    assert cv2.imwrite(str(path), cv2.merge([ramp, np.ascontiguousarray(ramp.T), ramp]))

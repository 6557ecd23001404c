"""Fashion-MNIST from Debian's `dataset-fashion-mnist` package: the IDX files read with NumPy and gzip, and the test
images written as a Parquet table of PNG bytes (columns `id`, `image`, `label`) for `fusioncam explain-dataset`.

Install the data with `apt-get install dataset-fashion-mnist` (files in /usr/share/datasets/fashion-mnist/).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = "apt-get install dataset-fashion-mnist"
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"),
              0x0E: np.dtype(">f8")}


class DataMissing(Exception):
    """The Fashion-MNIST files are not where the study looks for them."""


def read_idx(data: bytes, name: str = "IDX data") -> np.ndarray:
    """The array an IDX file holds (gzip-compressed or not): magic 0x0000, a type byte, a dimension count, then
    big-endian uint32 sizes and the values in row-major order (LeCun's MNIST format)."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{name} is not an IDX file: it does not start with two zero bytes")
    kind, dims = data[2], data[3]
    if kind not in _IDX_TYPES:
        raise ValueError(f"{name}: unknown IDX value type 0x{kind:02x}")
    header = 4 + 4 * dims
    if len(data) < header:
        raise ValueError(f"{name}: truncated IDX header ({dims} dimensions, {len(data)} bytes)")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=dims, offset=4))
    dtype = np.dtype(_IDX_TYPES[kind])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"{name}: {len(data) - header} value bytes for shape {shape} of {dtype} (expected {expected})")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


@dataclass
class Split:
    """One split's images (uint8 [N, 28, 28]) and labels (int64 [N])."""

    images: np.ndarray
    labels: np.ndarray


def load_split(split: str, root: str | os.PathLike = DEFAULT_ROOT) -> Split:
    """'train' (60,000 images) or 't10k' (10,000) from `root`; DataMissing (saying how to install) when absent."""
    root = Path(root)
    paths = [root / f"{split}-images-idx3-ubyte.gz", root / f"{split}-labels-idx1-ubyte.gz"]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataMissing(f"Fashion-MNIST is not installed ({missing[0]} is missing): {INSTALL_HINT}")
    images = read_idx(paths[0].read_bytes(), paths[0].name)
    labels = read_idx(paths[1].read_bytes(), paths[1].name)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{root}: {split} images {images.shape} and labels {labels.shape} do not match")
    return Split(np.ascontiguousarray(images), labels.astype(np.int64))


def png_bytes(grey: np.ndarray) -> bytes:
    """A uint8 [H, W] image as grey PNG bytes (lossless)."""
    import cv2

    ok, encoded = cv2.imencode(".png", grey)
    if not ok:
        raise ValueError("PNG encoding failed")
    return encoded.tobytes()


def write_test_table(split: Split, path: Path, count: int | None = None) -> Path:
    """The first `count` images of `split` as a Parquet table: `id` (test-00042), `image` (PNG bytes), `label`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fusioncam.atomic import write_bytes_atomic

    n = len(split.images) if count is None else min(count, len(split.images))
    table = pa.table({"id": [f"test-{i:05d}" for i in range(n)],
                      "image": pa.array([png_bytes(split.images[i]) for i in range(n)], pa.binary()),
                      "label": pa.array(split.labels[:n], pa.int64())})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_bytes_atomic(path, sink.getvalue().to_pybytes())
    return path

"""Fuzz image decoding: any bytes given to fusioncam.images.decode_rgb (what read_rgb does after reading a file).

Checked beyond "only FusionCamError escapes": a decoded image is uint8 [H, W, 3] within the pixel limit, and a
reduced JPEG decode keeps the longest side asked for. Seeds: a small image in every format this OpenCV writes.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from harness import instrumented_imports, run  # noqa: E402

with instrumented_imports():
    from fusioncam.images import decode_rgb

PIXEL_LIMIT = 4_000_000  # small, so the fuzzer meets the limit often and no input can take much memory
SEED_FORMATS = (".png", ".jpg", ".bmp", ".webp", ".tiff", ".ppm", ".pgm", ".pfm", ".hdr", ".ras", ".jp2", ".gif",
                ".pam", ".avif")


def seeds():
    """One small picture (a gradient with an edge) in each format OpenCV can write here, 8-bit, 16-bit and float."""
    y, x = np.mgrid[0:24, 0:32]
    rgb = np.stack([x * 8, y * 10, (x + y) * 4], axis=2).astype(np.uint8)
    for suffix in SEED_FORMATS:
        image = rgb.astype(np.float32) / 255 if suffix in (".pfm", ".hdr") else rgb
        try:
            ok, data = cv2.imencode(suffix, image)
        except cv2.error:
            continue
        if ok:
            yield f"seed{suffix}", data.tobytes()
    for suffix in (".png", ".tiff"):
        ok, data = cv2.imencode(suffix, rgb.astype(np.uint16) * 257)
        if ok:
            yield f"seed16{suffix}", data.tobytes()
    ok, data = cv2.imencode(".jpg", np.zeros((40, 600, 3), np.uint8))  # wide enough for a reduced decode
    yield "wide.jpg", data.tobytes()


def test(data: bytes) -> None:
    """Decode the bytes; when they decode, the result must be a bounded uint8 RGB image."""
    max_side = 64 if len(data) % 2 else None
    image = decode_rgb(data, "fuzz-input", max_pixels=PIXEL_LIMIT, max_side=max_side)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or not image.flags.c_contiguous:
        raise AssertionError(f"decoded to {image.dtype} {image.shape}")
    if image.shape[0] * image.shape[1] > PIXEL_LIMIT:
        raise AssertionError(f"decoded {image.shape} past the pixel limit {PIXEL_LIMIT}")


if __name__ == "__main__":
    run(test, seeds)

"""Admission control for decoding: a server-wide budget of the memory that decoding images may hold at once.

A 116 KB PNG can hold 6000x6600 pixels: decoding it takes about 240 MB (the decoder's BGR image and the RGB copy),
so a few concurrent requests of such images exhaust a server's memory although every body is small. Before an
image is decoded, its decoding memory (its width x height from the header, times DECODE_BYTES_PER_PIXEL) is
reserved from the budget (--decode-budget-mib) and released once the image is resized to the model's input; a
request decodes its images one at a time, so one request never holds more than one image's decoding memory, and
the budget bounds the total across requests. A decode that must wait for the budget waits until the request's
admission deadline; past it the request is refused with MemoryExhausted (HTTP 503 with Retry-After, gRPC
UNAVAILABLE): the server is full, the client's image is fine. An allocation that fails anyway (MemoryError,
OpenCV's "Insufficient memory") is reported the same way, never as the client's bad input.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterator

from grpc_interceptor.exceptions import Unavailable

from ..errors import FusionCamError

# Peak bytes per pixel of decoding an image and resizing it: 3 (the decoder's BGR) + 3 (the RGB copy), rounded up
# for 16-bit images (6 + 3 + 3) and the resize's output; the same figure images.py states for its pixel limit.
DECODE_BYTES_PER_PIXEL = 10
RETRY_AFTER_S = 2


class MemoryExhausted(FusionCamError, Unavailable):
    """The server has no memory for this request now (HTTP 503 with Retry-After, gRPC UNAVAILABLE): not the
    client's fault; the same request may succeed later or on another replica."""

    def __init__(self, reason: str) -> None:
        Unavailable.__init__(self, details=reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


_admission = threading.local()


@contextlib.contextmanager
def admission_deadline(deadline: float) -> Iterator[None]:
    """Decodes in this thread wait for the budget at most until `deadline` (time.monotonic())."""
    previous = getattr(_admission, "deadline", None)
    _admission.deadline = deadline
    try:
        yield
    finally:
        _admission.deadline = previous


class PixelBudget:
    """Bytes of decoding memory in use across the server, at most `limit_bytes` (one image alone always fits)."""

    def __init__(self, limit_bytes: int, default_wait_s: float = 30.0) -> None:
        self.limit_bytes = int(limit_bytes)
        self.default_wait_s = float(default_wait_s)
        self._in_use = 0
        self._peak = 0
        self._condition = threading.Condition()

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def peak(self) -> int:
        """The most bytes reserved at once so far."""
        return self._peak

    @contextlib.contextmanager
    def reserve(self, nbytes: int, what: str) -> Iterator[None]:
        """Hold `nbytes` of the budget for the block, waiting for it until this thread's admission deadline."""
        need = min(int(nbytes), self.limit_bytes)  # one image alone may use the whole budget
        deadline = getattr(_admission, "deadline", None)
        if deadline is None or math.isinf(deadline):
            deadline = time.monotonic() + self.default_wait_s
        with self._condition:
            while self._in_use and self._in_use + need > self.limit_bytes:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise MemoryExhausted(
                        f"{what}: the server's decoding memory ({self.limit_bytes / 2**20:,.0f} MiB, --decode-budget-mib) "
                        f"is in use by other requests and did not free up in time; retry in {RETRY_AFTER_S} s or on "
                        f"another replica (the image itself is fine)")
                self._condition.wait(left)
            self._in_use += need
            self._peak = max(self._peak, self._in_use)
        try:
            yield
        finally:
            with self._condition:
                self._in_use -= need
                self._condition.notify_all()


_shared: dict[int, PixelBudget] = {}
_shared_lock = threading.Lock()


def shared_budget(limit_mib: int) -> PixelBudget:
    """The process-wide budget of `limit_mib` MiB: every model served with the same setting shares one."""
    with _shared_lock:
        if limit_mib not in _shared:
            _shared[limit_mib] = PixelBudget(int(limit_mib) * 2**20)
        return _shared[limit_mib]


def is_allocation_failure(message: str) -> bool:
    """True when an error message is an allocation failure (OpenCV's or the C library's), not a bad image."""
    text = message.lower()
    return any(words in text for words in ("insufficient memory", "failed to allocate", "out of memory",
                                            "cannot allocate memory", "bad_alloc"))


__all__ = ["DECODE_BYTES_PER_PIXEL", "MemoryExhausted", "PixelBudget", "RETRY_AFTER_S", "admission_deadline",
           "is_allocation_failure", "shared_budget"]

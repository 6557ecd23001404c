"""The knobs of `fusioncam serve`: dynamic batching, the bounded queue, and the limits every request is checked against."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError

DEFAULT_TOP_K = 5


@dataclass(frozen=True)
class ServeOptions:
    """How requests are batched and what a request may contain.

    max_batch_size: images explained by one Explainer.explain call (requests are gathered up to this many).
    max_latency_ms: how long the first request of a batch waits for others to join it.
    max_queue: images waiting for a worker; a request that would overflow it is refused at once (429).
    workers: inference threads per model, each with its own Explainer (its own ONNX Runtime sessions).
    max_instances: images in one request; max_body_bytes: size of one request body;
    max_image_pixels: width x height of one encoded image, checked from its header before it is decoded.
    """

    max_batch_size: int = 8
    max_latency_ms: float = 10.0
    max_queue: int = 64
    workers: int = 1
    max_instances: int = 32
    max_body_bytes: int = 64 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    default_top_k: int = DEFAULT_TOP_K

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue", "workers", "max_instances", "max_body_bytes", "max_image_pixels",
                     "default_top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"serve option {name} must be a positive integer; got {value!r}")
        if not 0.0 <= float(self.max_latency_ms) <= 60_000.0:
            raise InputError(f"serve option max_latency_ms must be in [0, 60000] milliseconds; got {self.max_latency_ms!r}")
        if self.max_queue < self.max_instances:
            raise InputError(f"serve option max_queue ({self.max_queue}) must hold at least one full request "
                             f"(max_instances = {self.max_instances})")

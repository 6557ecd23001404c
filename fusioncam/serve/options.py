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
    timeout_s: a request's deadline, from its arrival (a request's `timeout` parameter may shorten it): past it,
    504 / DEADLINE_EXCEEDED and its work dropped (deadlines.py).
    gradient_workers: inference threads (each with its own Explainer) for gradient-only requests, so they never
    wait behind Score-CAM sweeps (lanes.py); 0 puts every request in one lane served by `workers`.
    decode_budget_mib: decoding memory all requests may hold at once (pixel_budget.py); a decode waits for it
    until the request's deadline, then 503.
    header_timeout_s / body_timeout_s: a connection that has not sent a request's headers within header_timeout_s,
    or sends nothing of a body for body_timeout_s, is answered 408 and closed; max_connections: open HTTP
    connections, the next one answered 503 and closed (connection_limits.py).
    """

    max_batch_size: int = 8
    max_latency_ms: float = 10.0
    max_queue: int = 64
    workers: int = 1
    max_instances: int = 32
    max_body_bytes: int = 64 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    default_top_k: int = DEFAULT_TOP_K
    timeout_s: float = 300.0
    gradient_workers: int = 1
    decode_budget_mib: int = 1024
    header_timeout_s: float = 15.0
    body_timeout_s: float = 30.0
    max_connections: int = 512

    def __post_init__(self) -> None:
        for name in ("gradient_workers",):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InputError(f"serve option {name} must be 0 or a positive integer; got {value!r}")
        for name in ("timeout_s", "header_timeout_s", "body_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) <= 86_400.0:
                raise InputError(f"serve option {name} must be a number of seconds in (0, 86400]; got {value!r}")
        for name in ("max_batch_size", "max_queue", "workers", "max_instances", "max_body_bytes", "max_image_pixels",
                     "default_top_k", "decode_budget_mib", "max_connections"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"serve option {name} must be a positive integer; got {value!r}")
        if not 0.0 <= float(self.max_latency_ms) <= 60_000.0:
            raise InputError(f"serve option max_latency_ms must be in [0, 60000] milliseconds; got {self.max_latency_ms!r}")
        if self.max_queue < self.max_instances:
            raise InputError(f"serve option max_queue ({self.max_queue}) must hold at least one full request "
                             f"(max_instances = {self.max_instances})")

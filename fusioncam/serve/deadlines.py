"""Request deadlines: the server's --timeout-s, a request's own `timeout` parameter and gRPC's deadline.

A request's deadline is its arrival time plus the smallest of: the server's timeout (--timeout-s), the request's
`timeout` parameter (v1 `"parameters": {"timeout": s}`, v2 `parameters.timeout`) and, over gRPC, the time the
client's own deadline leaves (read by GrpcDeadline, an interceptor). A request's timeout shortens the server's and
never extends it. Past its deadline a request is answered 504 (REST) / DEADLINE_EXCEEDED (gRPC) at once: it leaves
the queue without being computed, and a batch whose requests have all gone stops at its next scorer batch
(batching.py).
"""

from __future__ import annotations

import contextvars
import math
import threading
import time
from typing import Any, Callable

from grpc_interceptor.exceptions import DeadlineExceeded as GrpcDeadlineExceeded
from grpc_interceptor.server import AsyncServerInterceptor

from ..errors import FusionCamError

# The monotonic time a gRPC call's own deadline falls at (None: no deadline, or not a gRPC call)
GRPC_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("fusioncam_grpc_deadline", default=None)


class DeadlineExceeded(FusionCamError, GrpcDeadlineExceeded):
    """A request not answered by its deadline (HTTP 504, gRPC DEADLINE_EXCEEDED); its work was dropped."""

    def __init__(self, reason: str) -> None:
        GrpcDeadlineExceeded.__init__(self, details=reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class RequestAbandoned(Exception):
    """Raised inside an inference worker to stop a batch whose requests have all gone (deadline passed, or the
    client disconnected); never reaches a client."""


def deadline_of(arrived: float, server_timeout_s: float, request_timeout_s: float | None,
                grpc_deadline: float | None) -> tuple[float, str]:
    """(the monotonic deadline, what set it) of a request that arrived at `arrived` (time.monotonic());
    grpc_deadline: GRPC_DEADLINE's value in the request's task."""
    candidates = [(arrived + server_timeout_s, f"the server's timeout of {server_timeout_s:g} s (--timeout-s)")]
    if request_timeout_s is not None:
        candidates.append((arrived + request_timeout_s, f"its timeout parameter of {request_timeout_s:g} s"))
    if grpc_deadline is not None:
        candidates.append((grpc_deadline, "the gRPC call's deadline"))
    return min(candidates, key=lambda pair: pair[0])


class Ticket:
    """Links a request's waiting side (the event loop) to its job, which a pool thread creates: a request
    cancelled before its job exists still abandons the job once it is attached."""

    def __init__(self) -> None:
        self.job = None
        self.cancelled = False
        self._lock = threading.Lock()

    def attach(self, job) -> None:
        with self._lock:
            self.job = job
            if self.cancelled:
                job.abandoned = True

    def cancel(self):
        """Mark the request abandoned; returns its job (None when not created yet)."""
        with self._lock:
            self.cancelled = True
            if self.job is not None:
                self.job.abandoned = True
            return self.job


def remaining(deadline: float) -> float:
    """Seconds until `deadline` (monotonic), at least 0; inf for no deadline."""
    return math.inf if math.isinf(deadline) else max(0.0, deadline - time.monotonic())


class GrpcDeadline(AsyncServerInterceptor):
    """Puts each gRPC call's deadline (context.time_remaining()) where the model reads it (GRPC_DEADLINE)."""

    async def intercept(self, method: Callable, request_or_iterator: Any, context, method_name: str) -> Any:
        left = context.time_remaining()
        token = GRPC_DEADLINE.set(None if left is None else time.monotonic() + float(left))
        try:
            response = method(request_or_iterator, context)
            if hasattr(response, "__aiter__"):
                return response
            return await response
        finally:
            GRPC_DEADLINE.reset(token)


__all__ = ["DeadlineExceeded", "GRPC_DEADLINE", "GrpcDeadline", "RequestAbandoned", "Ticket", "deadline_of",
           "remaining"]

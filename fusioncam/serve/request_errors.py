"""Errors a request can earn, each mapped to its status by the server (400, 413, 429) and to a gRPC status code.

They are fusioncam errors (InputError, FusionCamError) and, at the same time, the classes KServe's handlers know:
kserve.errors.InvalidInput becomes HTTP 400 / gRPC INVALID_ARGUMENT; ServerBusy is a gRPC RESOURCE_EXHAUSTED and
gets its own HTTP 429 handler (server.py), PayloadTooLarge HTTP 413.
"""

from __future__ import annotations

from grpc_interceptor.exceptions import ResourceExhausted
from kserve.errors import InvalidInput

from ..errors import FusionCamError, InputError


class BadRequest(InputError, InvalidInput):
    """A request (or one of its instances) that cannot be explained: the message names the instance and the problem."""

    def __init__(self, reason: str) -> None:
        Exception.__init__(self, reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class PayloadTooLarge(BadRequest):
    """A request body over the server's size limit (HTTP 413)."""


class ServerBusy(FusionCamError, ResourceExhausted):
    """The model's queue is full (or the server is stopping): refused at once instead of waiting (HTTP 429)."""

    def __init__(self, reason: str) -> None:
        ResourceExhausted.__init__(self, details=reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason

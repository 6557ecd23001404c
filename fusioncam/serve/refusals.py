"""The REST answers for requests the server gives up on, and the middleware that notices clients that left.

DeadlineExceeded -> 504 (the request's deadline passed; its work was dropped), MemoryExhausted -> 503 with
Retry-After (the server has no memory for it now; the request itself is fine). Over gRPC the same exceptions are
DEADLINE_EXCEEDED and UNAVAILABLE (they are grpc_interceptor exceptions). CancelOnDisconnect cancels the work of
a client that disconnected (disconnects.py).
"""

from __future__ import annotations

import logging

from fastapi.responses import JSONResponse

from .deadlines import DeadlineExceeded
from .disconnects import CancelOnDisconnect
from .pixel_budget import RETRY_AFTER_S, MemoryExhausted

log = logging.getLogger("fusioncam.serve")


async def _deadline_passed(_, exc: DeadlineExceeded) -> JSONResponse:
    log.info("deadline exceeded: %s", exc)
    return JSONResponse(status_code=504, content={"error": str(exc)})


async def _out_of_memory(_, exc: MemoryExhausted) -> JSONResponse:
    log.warning("refused for memory: %s", exc)
    return JSONResponse(status_code=503, content={"error": str(exc)}, headers={"retry-after": str(RETRY_AFTER_S)})


def install_refusals(app) -> None:
    """Add the 504 and 503 answers and the disconnect middleware to KServe's FastAPI app (once per process)."""
    app.add_exception_handler(DeadlineExceeded, _deadline_passed)
    app.add_exception_handler(MemoryExhausted, _out_of_memory)
    app.add_middleware(CancelOnDisconnect)


__all__ = ["install_refusals"]

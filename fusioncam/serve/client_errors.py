"""Client errors answered and logged in one line each, over REST and gRPC; the traceback only at debug level.

KServe's handlers log every bad request with its full traceback (a 44-line traceback per bad gRPC request), which
buries the server's own failures. A client error (bad input, unknown or unloaded model, refused model control,
an unsupported feature) is not a server fault: it gets one INFO line naming the route and the reason. Errors of the
server itself (anything else: HTTP 500, gRPC INTERNAL) keep their traceback at ERROR level.

Also: `GET /v1/models/NAME:predict` (and `:explain`) answered 405 with `Allow: POST` instead of KServe's
"Model with name NAME:predict does not exist" (the GET matched the model-readiness route).
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from grpc import StatusCode
from kserve.errors import (InvalidInput, ModelNotFound, ModelNotReady, ServerNotLive, ServerNotReady,
                           UnsupportedProtocol)
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor

from .model_control import ModelControlDisabled

log = logging.getLogger("fusioncam.serve")

# client error -> (HTTP status, gRPC status code); the first match in order wins (subclasses before bases)
CLIENT_ERRORS: tuple[tuple[type[BaseException], HTTPStatus, StatusCode], ...] = (
    (ModelControlDisabled, HTTPStatus.FORBIDDEN, StatusCode.PERMISSION_DENIED),
    (InvalidInput, HTTPStatus.BAD_REQUEST, StatusCode.INVALID_ARGUMENT),
    (ModelNotFound, HTTPStatus.NOT_FOUND, StatusCode.NOT_FOUND),
    (ModelNotReady, HTTPStatus.SERVICE_UNAVAILABLE, StatusCode.UNAVAILABLE),
    (ServerNotReady, HTTPStatus.SERVICE_UNAVAILABLE, StatusCode.UNAVAILABLE),
    (ServerNotLive, HTTPStatus.SERVICE_UNAVAILABLE, StatusCode.UNAVAILABLE),
    (UnsupportedProtocol, HTTPStatus.NOT_IMPLEMENTED, StatusCode.UNIMPLEMENTED),
    (NotImplementedError, HTTPStatus.NOT_IMPLEMENTED, StatusCode.UNIMPLEMENTED),
)


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or exc) or type(exc).__name__


def log_client_error(where: str, exc: BaseException) -> None:
    """One INFO line (the traceback at DEBUG level only)."""
    log.info("%s: %s: %s", where, type(exc).__name__, _reason(exc), exc_info=exc if log.isEnabledFor(logging.DEBUG)
             else None)


def _rest_handler(status: HTTPStatus):
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        log_client_error(f"{request.method} {request.url.path} -> {int(status)}", exc)
        return JSONResponse(status_code=int(status), content={"error": _reason(exc)})

    return handler


def install_rest_client_errors(app: FastAPI) -> None:
    """Replace KServe's traceback-logging handlers of client errors on the app (after KServe added its own)."""
    for error, status, _ in CLIENT_ERRORS:
        app.add_exception_handler(error, _rest_handler(status))


def add_method_not_allowed_routes(app: FastAPI) -> None:
    """405 for GET/PUT/DELETE on the POST-only v1 verbs; added before KServe's `GET /v1/models/{name}` so that route
    does not take `NAME:predict` for a model name."""
    for verb in ("predict", "explain"):
        async def not_allowed(model_name: str, request: Request, verb: str = verb) -> JSONResponse:
            return JSONResponse(status_code=405, headers={"allow": "POST"},
                                content={"error": f"{request.method} is not allowed on /v1/models/{model_name}:{verb}: "
                                                  f"send the request with POST"})

        app.add_api_route(f"/v1/models/{{model_name}}:{verb}", not_allowed, methods=["GET", "PUT", "DELETE", "PATCH"],
                          include_in_schema=False)


class OneLineErrorsInterceptor(ExceptionToStatusInterceptor):
    """KServe's gRPC exception interceptor, with client errors logged in one line and model control refusals as
    PERMISSION_DENIED; the server's own errors go to KServe's handling (traceback, INTERNAL)."""

    async def handle_exception(self, ex, request_or_iterator, context, method_name):
        for error, _, code in CLIENT_ERRORS:
            if isinstance(ex, error):
                log_client_error(f"gRPC {method_name} -> {code.name}", ex)
                await context.abort(code, _reason(ex))
        await super().handle_exception(ex, request_or_iterator, context, method_name)

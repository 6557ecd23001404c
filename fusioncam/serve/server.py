"""Starting KServe's ModelServer with fusioncam models, bound to one host (127.0.0.1 unless told otherwise).

KServe's RESTServer and GRPCServer always listen on every interface; LoopbackModelServer starts the same two
servers on the given host. It also adds what KServe lacks: a body size limit (413), answers for a full queue
(429) and an oversized body (413), gRPC messages capped at the same size, and binary-extension REST inputs read
without a per-element copy (binary_requests.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import kserve
from fastapi.responses import JSONResponse
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
from kserve.protocol.grpc.interceptors import LoggingInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.rest.server import RESTServer

from ..bundle import Bundle, bundle_of
from ..cpu_quota import cpu_budget
from ..errors import InputError
from ..runtime.cpu_backend import CPU_THREADS_ENV
from .body_limit import BodySizeLimit
from .connection_limits import apply_limits
from .deadlines import GrpcDeadline
from .refusals import install_refusals
from .client_errors import OneLineErrorsInterceptor, add_method_not_allowed_routes, install_rest_client_errors
from .health import ReadinessDataPlane, add_health_service
from .listen_ports import check_ports_free
from .model_control import ModelControl, ServedModels
from .grpc_servicer import FusionCamServicer, add_servicer
from .method_views import MethodViewRepository
from .model import FusionCamModel
from .options import ServeOptions
from .request_errors import BadRequest, PayloadTooLarge, ServerBusy
from .triton_rest import install_triton_rest

STOP_GRACE_SECONDS = 10.0

# KServe 0.21 answers v1 :predict/:explain with FastAPI's ORJSONResponse, which FastAPI 0.120+ deprecates
# (FastAPIDeprecationWarning at the first answer of every server). The class still works and the answers are right;
# the warning is KServe's to fix (its v1 endpoints build the response themselves), so exactly it is filtered here.
warnings.filterwarnings("ignore", message=r"ORJSONResponse is deprecated", category=UserWarning)

log = logging.getLogger("fusioncam.serve")


class HostGRPCServer(GRPCServer):
    """KServe's gRPC server, listening on one host instead of every interface."""

    def __init__(self, host: str, port: int, *args, served: ServedModels | None = None, **kwargs) -> None:
        super().__init__(port, *args, **kwargs)
        self._host = host
        self._served = served

    async def start(self, max_workers: int) -> None:
        from concurrent import futures

        from grpc import aio

        servicer = FusionCamServicer(self._data_plane, self._model_repository_extension)
        limit = self._kwargs["grpc_max_receive_message_length"]
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(LoggingInterceptor(), OneLineErrorsInterceptor(), GrpcDeadline()),
            options=[("grpc.max_send_message_length", self._kwargs["grpc_max_send_message_length"]),
                     ("grpc.max_receive_message_length", limit)],
        )
        add_servicer(servicer, self._server)  # KServe's methods and Triton's config, statistics and index
        if self._served is not None:
            add_health_service(self._server, self._served)  # grpc.health.v1.Health, for Kubernetes' gRPC probes
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._server.add_insecure_port(f"{host}:{self._port}")
        await self._server.start()
        await self._server.wait_for_termination()


class LeanRESTServer(RESTServer):
    """KServe's REST server without timing_asgi's TimingMiddleware: it calls getrusage twice per request, which
    costs milliseconds in a process with ONNX Runtime's thread pools (measured: 5 ms a call on the 2-core machine),
    and its timings only go to KServe's trace log. fusioncam's own latency histogram measures requests instead."""

    def _add_middlewares(self, app) -> None:
        return None

    def _register_endpoints(self, app) -> None:
        add_method_not_allowed_routes(app)  # before KServe's GET /v1/models/{name}, which would take NAME:predict
        install_triton_rest(app, self.dataplane.model_registry)  # Triton's config, stats, index; before KServe's
        super()._register_endpoints(app)

    def _add_exception_handlers(self, app) -> None:
        super()._add_exception_handlers(app)
        install_rest_client_errors(app)  # client errors in one log line, model control refusals as 403


class LoopbackModelServer(kserve.ModelServer):
    """kserve.ModelServer whose REST and gRPC servers listen on `host` only, with fusioncam's limits and answers."""

    def __init__(self, host: str = "127.0.0.1", http_port: int = 8080, grpc_port: int = 8081, enable_grpc: bool = True,
                 max_body_bytes: int = ServeOptions.max_body_bytes, allow_model_control: bool = False,
                 options: ServeOptions | None = None) -> None:
        super().__init__(http_port=http_port, grpc_port=grpc_port, workers=1, enable_grpc=enable_grpc,
                         enable_latency_logging=False, grace_period=int(STOP_GRACE_SECONDS),
                         registered_models=MethodViewRepository())  # NAME.gradcam etc. resolve to views
        self.host = host
        self.max_body_bytes = int(max_body_bytes)
        self.options = options or ServeOptions()  # read here: the read timeouts and the connection cap
        self.allow_model_control = bool(allow_model_control)
        # binary REST inputs without copies; ready only while every served model is
        self.dataplane = ReadinessDataPlane(model_registry=self.registered_models)

    def start(self, models: list) -> None:
        """Register the models and serve until SIGINT/SIGTERM (as kserve.ModelServer.start, on one host)."""
        self._register_and_check_atleast_one_model_is_ready(models)
        served = ServedModels(self.registered_models, models)
        self.dataplane.served = served
        self.model_repository_extension = ModelControl(served, self.allow_model_control)
        _install_answers(self.max_body_bytes)
        self._rest_server = LeanRESTServer(FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension,
                                       self.http_port, workers=1, grace_period=self.grace_period,
                                       event_loop=self.event_loop, timeout_keep_alive=self.timeout_keep_alive)
        self._rest_server.config.host = self.host
        apply_limits(self._rest_server.config, self.options.header_timeout_s, self.options.body_timeout_s,
                     self.options.max_connections)
        self.servers.append(self._rest_server.start())
        if self.enable_grpc:
            sizes = {"grpc_max_send_message_length": max(self.max_body_bytes, 64 * 1024 * 1024),
                     "grpc_max_receive_message_length": self.max_body_bytes}
            self._grpc_server = HostGRPCServer(self.host, self.grpc_port, self.dataplane,
                                               self.model_repository_extension, kwargs=sizes,
                                               grace_period=self.grace_period, served=served)
            self.servers.append(self._grpc_server.start(self.max_threads))
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())


_answers_installed = False


def _install_answers(max_body_bytes: int) -> None:
    """Add the body limit and the 429/413 answers to KServe's FastAPI app (once: the app is a module global)."""
    global _answers_installed
    if _answers_installed:
        return
    app = kserve.model_server.app
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)

    async def busy(_, exc: ServerBusy) -> JSONResponse:
        return JSONResponse(status_code=429, content={"error": str(exc)}, headers={"retry-after": "1"})

    async def too_large(_, exc: PayloadTooLarge) -> JSONResponse:
        return JSONResponse(status_code=413, content={"error": str(exc)})

    async def bad_request(_, exc: BadRequest) -> JSONResponse:
        log.info("bad request: %s", exc)  # one line: KServe's own handler logs a traceback for every bad input
        return JSONResponse(status_code=400, content={"error": str(exc)})

    app.add_exception_handler(BadRequest, bad_request)
    app.add_exception_handler(ServerBusy, busy)
    app.add_exception_handler(PayloadTooLarge, too_large)
    install_refusals(app)  # 504 past a deadline, 503 without memory, work cancelled on disconnect
    _answers_installed = True


def model_name_for(source: str | os.PathLike | Bundle) -> str:
    """The default name a model is served under: the bundle folder's or .onnx file's name, or the model's name."""
    if isinstance(source, Bundle):
        return Path(source.path).name.split(".")[0]
    path = Path(source)
    return (path.stem if path.suffix.lower() == ".onnx" else path.name.split(".")[0]) or "model"


def serve(models: Sequence[str | os.PathLike | Bundle | FusionCamModel] | str | os.PathLike | Bundle,
          names: Sequence[str] | None = None, host: str = "127.0.0.1", http_port: int = 8080, grpc_port: int = 8081,
          device: str = "auto", precision: str = "fp32", max_channels: int | None = None,
          batch_size: int | None = None, options: ServeOptions | None = None,
          stop_after: float | None = None, allow_model_control: bool = False, cpu_threads: int | None = None) -> None:
    """Serve bundles (directories, .onnx files, 'efficientnet_lite0', or ready FusionCamModels) until stopped.

    names: one per model (default: the bundle's folder name). stop_after: stop by itself after that many seconds
    (tests, demos). Blocks; SIGINT or SIGTERM stops it after the queued requests are answered.
    allow_model_control: allow KServe's load/unload requests (refused with 403 otherwise). cpu_threads: ONNX Runtime
    threads per CPU session (default: the cgroup's CPU quota capped by the affinity; the choice is logged).
    The ports are checked before any model loads: one in use is an InputError naming it.
    """
    if isinstance(models, (str, os.PathLike, Bundle)) or bundle_of(models) is not models:  # one model, or an export
        models = [models]
    models = [bundle_of(m) for m in models]  # an export's result is its bundle
    options = options or ServeOptions()
    names = list(names) if names else [m.name if isinstance(m, FusionCamModel) else model_name_for(m) for m in models]
    if len(names) != len(models):
        raise InputError(f"{len(names)} names for {len(models)} models: give one name per model")
    if len(set(names)) != len(names):
        raise InputError(f"model names must differ (they are URL paths); got {', '.join(names)}: name them with --name")
    for name in names:
        if not name or any(c in name for c in "/:?# "):
            raise InputError(f"model name {name!r} cannot be part of a URL path: use letters, digits, '-', '_' or '.'")
    check_ports_free(host, [("HTTP", http_port, "--http-port"), ("gRPC", grpc_port, "--grpc-port")])
    _choose_cpu_threads(cpu_threads)
    built = [m if isinstance(m, FusionCamModel) else
             FusionCamModel(name, m, device=device, precision=precision, max_channels=max_channels,
                            batch_size=batch_size, options=options)
             for name, m in zip(names, models)]
    for model in built:
        model.load()
    if stop_after is not None:
        _stop_after(float(stop_after))
    log.info("serving %s on %s: REST port %d, gRPC port %d; model control %s", ", ".join(names), host, http_port,
             grpc_port, "allowed (--allow-model-control)" if allow_model_control else "refused")
    LoopbackModelServer(host=host, http_port=http_port, grpc_port=grpc_port, max_body_bytes=options.max_body_bytes,
                        allow_model_control=allow_model_control, options=options).start(built)


def _choose_cpu_threads(cpu_threads: int | None) -> None:
    """Set and log the ONNX Runtime threads per CPU session: --cpu-threads, else $FUSIONCAM_CPU_THREADS, else the
    cgroup's CPU quota capped by the affinity (what cpu_session reads; set here so the log line is the truth)."""
    if cpu_threads is not None:
        if isinstance(cpu_threads, bool) or not isinstance(cpu_threads, int) or cpu_threads < 1:
            raise InputError(f"cpu_threads must be a positive integer; got {cpu_threads!r}")
        os.environ[CPU_THREADS_ENV] = str(cpu_threads)
        log.info("CPU threads per ONNX Runtime session: %d (--cpu-threads)", cpu_threads)
        return
    wanted = os.environ.get(CPU_THREADS_ENV, "").strip()
    if wanted.isdigit() and int(wanted) > 0:
        log.info("CPU threads per ONNX Runtime session: %s ($%s)", wanted, CPU_THREADS_ENV)
        return
    budget = cpu_budget()
    os.environ[CPU_THREADS_ENV] = str(budget.cpus)
    log.info("CPU threads per ONNX Runtime session: %d (%s)", budget.cpus, budget.source)


def _stop_after(seconds: float) -> None:
    """SIGTERM this process after `seconds`; if it still runs STOP_GRACE_SECONDS later, exit at once."""
    def terminate() -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    def force() -> None:
        os._exit(0)

    for delay, action in ((seconds, terminate), (seconds + STOP_GRACE_SECONDS, force)):
        timer = threading.Timer(delay, action)
        timer.daemon = True
        timer.start()

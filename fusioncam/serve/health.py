"""Readiness that tells the truth, over REST and gRPC.

- `/v2/health/ready` and gRPC `ServerReady` (KServe's DataPlane.ready, which always says True for a server that is
  not a transformer) answer ready only while every served model is registered and ready (ServedModels.all_ready).
  KServe's v1 readiness is per model (`GET /v1/models/NAME`), already false for an unloaded model.
- `grpc.health.v1.Health` (what Kubernetes' native gRPC probes call): Check with service "" or
  "inference.GRPCInferenceService" reports the server's readiness, with a model's name that model's, SERVING or
  NOT_SERVING; an unknown service is NOT_FOUND, as the health protocol says. Watch sends the status when it changes
  (polled every WATCH_POLL_SECONDS).
"""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .binary_requests import FusionCamDataPlane
from .model_control import ServedModels

INFERENCE_SERVICE = "inference.GRPCInferenceService"
WATCH_POLL_SECONDS = 1.0


class ReadinessDataPlane(FusionCamDataPlane):
    """fusioncam's DataPlane whose server readiness is every served model's readiness."""

    served: ServedModels | None = None

    async def ready(self) -> bool:
        if self.served is not None and not await self.served.all_ready():
            return False
        return await super().ready()


class ModelHealth(health_pb2_grpc.HealthServicer):
    """The gRPC health service, computed from the models' readiness on every call (nothing to keep in step)."""

    def __init__(self, served: ServedModels) -> None:
        self.served = served

    async def _status(self, service: str) -> int | None:
        if service in ("", INFERENCE_SERVICE):
            ready = await self.served.all_ready()
        elif service in self.served.models:
            ready = await self.served.model_ready(service)
        else:
            return None
        return health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING

    async def Check(self, request, context):
        status = await self._status(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}: ask for '' (the "
                                                           f"server) or a served model's name")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request, context):
        last = None
        while True:
            status = await self._status(request.service)
            if status is None:
                status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            await asyncio.sleep(WATCH_POLL_SECONDS)


def add_health_service(server, served: ServedModels) -> None:
    """Register grpc.health.v1.Health on a grpc.aio server."""
    health_pb2_grpc.add_HealthServicer_to_server(ModelHealth(served), server)

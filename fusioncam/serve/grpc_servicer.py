"""KServe's gRPC servicer with Triton's extensions: ModelConfig, ModelStatistics and RepositoryIndex (messages in
triton_messages.py), and model versions checked as over REST (model_versions.py): "1" or empty reach the model,
another version is NOT_FOUND (KServe ignores the version over gRPC).

`add_servicer(servicer, server)` registers KServe's generated handlers and, beside them, a generic handler for the
same service (`inference.GRPCInferenceService`) with the three methods KServe's proto lacks.
"""

from __future__ import annotations

import grpc
from google.protobuf import json_format
from kserve.errors import ModelNotFound
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.servicer import InferenceServicer

from . import triton_messages as messages
from .model_statistics import model_statistics
from .model_versions import check_version
from .triton_config import config_of, index_entry

SERVICE = "inference.GRPCInferenceService"


class FusionCamServicer(InferenceServicer):
    """InferenceServicer that checks model versions and answers Triton's configuration, statistics and index."""

    @property
    def _registry(self):
        return self._data_plane.model_registry

    def _served(self, name: str):
        model = self._registry.get_model(name)
        if model is None:
            raise ModelNotFound(name)
        return model

    async def ModelInfer(self, request, context):
        check_version(request.model_name, request.model_version)
        return await super().ModelInfer(request, context)

    async def ModelMetadata(self, request, context):
        check_version(request.name, request.version)
        return await super().ModelMetadata(request, context)

    async def ModelReady(self, request, context):
        check_version(request.name, request.version)
        return await super().ModelReady(request, context)

    async def ModelConfig(self, request, context):
        check_version(request.name, request.version)
        return json_format.ParseDict({"config": config_of(self._served(request.name))},
                                     messages.ModelConfigResponse())

    async def ModelStatistics(self, request, context):
        check_version(request.name, request.version)
        if request.name:
            model = self._served(request.name)
            stats = [model_statistics(request.name, recorded_as=getattr(model, "base", model).name)]
        else:
            stats = [model_statistics(name) for name in self._registry.get_models()]
        return json_format.ParseDict({"model_stats": stats}, messages.ModelStatisticsResponse())

    async def RepositoryIndex(self, request, context):
        entries = []
        views = getattr(self._registry, "view_names", list)()  # none with KServe's plain repository
        for name in [*self._registry.get_models(), *views]:
            ready = await self._registry.is_model_ready(name)
            if ready or not request.ready:
                entries.append(index_entry(name, ready))
        return json_format.ParseDict({"models": entries}, messages.RepositoryIndexResponse())


def add_servicer(servicer: FusionCamServicer, server) -> None:
    """Register the servicer's KServe methods and its Triton extensions on a grpc.aio server."""
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    extensions = {
        name: grpc.unary_unary_rpc_method_handler(getattr(servicer, name),
                                                  request_deserializer=getattr(messages, f"{name}Request").FromString,
                                                  response_serializer=getattr(messages,
                                                                              f"{name}Response").SerializeToString)
        for name in ("ModelConfig", "ModelStatistics", "RepositoryIndex")
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, extensions),))

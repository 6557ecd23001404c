"""The protobuf messages of Triton's gRPC extensions that KServe's proto lacks (model configuration, statistics,
repository index), built at import in a private descriptor pool.

Field names and numbers are those of Triton's grpc_service.proto and model_config.proto (the subset fusioncam
fills), so Triton's clients read the answers; the private pool keeps them apart from KServe's `inference.*`
messages in the default pool (the same full names would clash there). Built from Python tables: no generated
code, so no protoc or protobuf-version pairing to keep.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {"string": _F.TYPE_STRING, "int32": _F.TYPE_INT32, "int64": _F.TYPE_INT64, "uint32": _F.TYPE_UINT32,
            "uint64": _F.TYPE_UINT64, "bool": _F.TYPE_BOOL}

# message -> [(field, number, type, repeated)]; a type that is not a scalar is a message or (with "enum ") an enum
_MESSAGES: dict[str, list[tuple[str, int, str, bool]]] = {
    "ModelInput": [("name", 1, "string", False), ("data_type", 2, "enum DataType", False),
                   ("format", 3, "enum ModelInput.Format", False), ("dims", 4, "int64", True),
                   ("optional", 8, "bool", False)],
    "ModelOutput": [("name", 1, "string", False), ("data_type", 2, "enum DataType", False),
                    ("dims", 3, "int64", True), ("label_filename", 4, "string", False)],
    "ModelDynamicBatching": [("preferred_batch_size", 1, "int32", True),
                             ("max_queue_delay_microseconds", 2, "uint64", False),
                             ("preserve_ordering", 3, "bool", False)],
    "ModelVersionPolicy.Latest": [("num_versions", 1, "uint32", False)],
    "ModelVersionPolicy": [("latest", 1, "ModelVersionPolicy.Latest", False)],
    "ModelInstanceGroup": [("name", 1, "string", False), ("count", 2, "int32", False),
                           ("kind", 4, "enum ModelInstanceGroup.Kind", False)],
    "ModelConfig": [("name", 1, "string", False), ("platform", 2, "string", False),
                    ("version_policy", 3, "ModelVersionPolicy", False), ("max_batch_size", 4, "int32", False),
                    ("input", 5, "ModelInput", True), ("output", 6, "ModelOutput", True),
                    ("instance_group", 7, "ModelInstanceGroup", True),
                    ("dynamic_batching", 11, "ModelDynamicBatching", False),
                    ("parameters", 14, "ModelConfig.ParametersEntry", True), ("backend", 17, "string", False)],
    "ModelConfig.ParametersEntry": [("key", 1, "string", False), ("value", 2, "ModelParameter", False)],
    "ModelParameter": [("string_value", 1, "string", False)],
    "ModelConfigRequest": [("name", 1, "string", False), ("version", 2, "string", False)],
    "ModelConfigResponse": [("config", 1, "ModelConfig", False)],
    "StatisticDuration": [("count", 1, "uint64", False), ("ns", 2, "uint64", False)],
    "InferStatistics": [(name, number, "StatisticDuration", False) for number, name in enumerate(
        ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit",
         "cache_miss"), 1)],
    "InferBatchStatistics": [("batch_size", 1, "uint64", False), ("compute_input", 2, "StatisticDuration", False),
                             ("compute_infer", 3, "StatisticDuration", False),
                             ("compute_output", 4, "StatisticDuration", False)],
    "ModelStatistics": [("name", 1, "string", False), ("version", 2, "string", False),
                        ("last_inference", 3, "uint64", False), ("inference_count", 4, "uint64", False),
                        ("execution_count", 5, "uint64", False), ("inference_stats", 6, "InferStatistics", False),
                        ("batch_stats", 7, "InferBatchStatistics", True)],
    "ModelStatisticsRequest": [("name", 1, "string", False), ("version", 2, "string", False)],
    "ModelStatisticsResponse": [("model_stats", 1, "ModelStatistics", True)],
    "RepositoryIndexRequest": [("repository_name", 1, "string", False), ("ready", 2, "bool", False)],
    "RepositoryIndexResponse.ModelIndex": [("name", 1, "string", False), ("version", 2, "string", False),
                                           ("state", 3, "string", False), ("reason", 4, "string", False)],
    "RepositoryIndexResponse": [("models", 1, "RepositoryIndexResponse.ModelIndex", True)],
}
_ENUMS = {
    "DataType": ["TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8",
                 "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING",
                 "TYPE_BF16"],
    "ModelInput.Format": ["FORMAT_NONE", "FORMAT_NHWC", "FORMAT_NCHW"],
    "ModelInstanceGroup.Kind": ["KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"],
}
MAP_ENTRIES = {"ModelConfig.ParametersEntry"}  # map<string, ModelParameter> parameters: protobuf's map entry type
PACKAGE = "inference"


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name="fusioncam_triton_extensions.proto", package=PACKAGE,
                                               syntax="proto3")
    containers: dict[str, descriptor_pb2.DescriptorProto] = {}
    for name in sorted(_MESSAGES, key=lambda n: n.count(".")):  # parents before their nested messages
        parent, _, leaf = name.rpartition(".")
        containers[name] = (containers[parent].nested_type if parent else proto.message_type).add(name=leaf)
    for name, values in _ENUMS.items():
        parent, _, leaf = name.rpartition(".")
        enum = (containers[parent].enum_type if parent else proto.enum_type).add(name=leaf)
        for number, value in enumerate(values):
            enum.value.add(name=value, number=number)
    for name, fields in _MESSAGES.items():
        for field, number, kind, repeated in fields:
            entry = containers[name].field.add(name=field, number=number, json_name=field,
                                               label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
            if kind in _SCALARS:
                entry.type = _SCALARS[kind]
            elif kind.startswith("enum "):
                entry.type, entry.type_name = _F.TYPE_ENUM, f".{PACKAGE}.{kind[5:]}"
            else:
                entry.type, entry.type_name = _F.TYPE_MESSAGE, f".{PACKAGE}.{kind}"
    for name in MAP_ENTRIES:
        containers[name].options.map_entry = True
    return proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())


def message_class(name: str):
    """The generated class of one of the messages above, e.g. message_class("ModelConfigResponse")."""
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


ModelConfigRequest = message_class("ModelConfigRequest")
ModelConfigResponse = message_class("ModelConfigResponse")
ModelStatisticsRequest = message_class("ModelStatisticsRequest")
ModelStatisticsResponse = message_class("ModelStatisticsResponse")
RepositoryIndexRequest = message_class("RepositoryIndexRequest")
RepositoryIndexResponse = message_class("RepositoryIndexResponse")

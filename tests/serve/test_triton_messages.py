"""Triton's extension messages as fusioncam builds them, checked against Triton's own generated protobuf classes
(tritonclient.grpc's service_pb2 and model_config_pb2), and the classification strings against Triton's
TopkClassifications (src/classification.cc: std::to_string of the float32 score, the index, the label).

kserve is not imported here: its `inference.*` protobuf messages clash with tritonclient's in one process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2", reason="tritonclient[grpc] is not installed")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")

from fusioncam.serve import triton_messages  # noqa: E402

MESSAGES = {
    "ModelConfigRequest": service_pb2, "ModelConfigResponse": service_pb2, "ModelStatisticsRequest": service_pb2,
    "ModelStatisticsResponse": service_pb2, "ModelStatistics": service_pb2, "InferStatistics": service_pb2,
    "StatisticDuration": service_pb2, "InferBatchStatistics": service_pb2, "RepositoryIndexRequest": service_pb2,
    "RepositoryIndexResponse": service_pb2, "RepositoryIndexResponse.ModelIndex": service_pb2,
    "ModelConfig": model_config_pb2, "ModelInput": model_config_pb2, "ModelOutput": model_config_pb2,
    "ModelDynamicBatching": model_config_pb2, "ModelVersionPolicy": model_config_pb2,
    "ModelVersionPolicy.Latest": model_config_pb2, "ModelInstanceGroup": model_config_pb2,
    "ModelConfig.ParametersEntry": model_config_pb2, "ModelParameter": model_config_pb2,
}


def triton_descriptor(module, name: str):
    top, _, nested = name.partition(".")
    descriptor = module.DESCRIPTOR.message_types_by_name[top]
    return descriptor.nested_types_by_name[nested] if nested else descriptor


def type_name(field) -> str:
    if field.message_type is not None:
        return field.message_type.full_name
    if field.enum_type is not None:
        return field.enum_type.full_name
    return str(field.type)


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_every_field_has_tritons_name_number_type_and_label(name):
    ours = triton_messages.message_class(name).DESCRIPTOR
    theirs = triton_descriptor(MESSAGES[name], name)
    assert ours.full_name == theirs.full_name
    for field in ours.fields:
        reference = theirs.fields_by_name[field.name]
        assert (field.number, type_name(field), field.is_repeated) == \
            (reference.number, type_name(reference), reference.is_repeated), f"{name}.{field.name}"
        if field.enum_type is not None:
            assert [(v.name, v.number) for v in field.enum_type.values] == \
                [(v.name, v.number) for v in reference.enum_type.values]


def test_a_config_answer_reads_back_in_tritons_classes():
    from google.protobuf import json_format

    from fusioncam.serve.triton_config import model_config

    config = model_config("m.gradcam", [{"name": "image", "datatype": "UINT8", "shape": [-1, 16, 24, 3]}],
                          [{"name": "gradcam", "datatype": "FP32", "shape": [-1, 16, 24]}], 8, 2.5)
    wire = json_format.ParseDict({"config": config}, triton_messages.ModelConfigResponse()).SerializeToString()
    read = service_pb2.ModelConfigResponse.FromString(wire).config
    assert read.max_batch_size == 8 and read.dynamic_batching.max_queue_delay_microseconds == 2500
    assert read.input[0].format == model_config_pb2.ModelInput.FORMAT_NHWC
    assert read.input[0].data_type == model_config_pb2.TYPE_UINT8 and list(read.input[0].dims) == [16, 24, 3]
    assert read.output[0].data_type == model_config_pb2.TYPE_FP32 and list(read.output[0].dims) == [16, 24]


def isolated(code: str):
    """Run `code` in a fresh interpreter (the modules under test import kserve, whose protobuf messages clash with
    tritonclient's in this process) and return the JSON it prints."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow  # a fresh interpreter importing kserve: about 5 s
def test_classification_strings_as_triton_writes_them():
    scores = [[0.1, 0.7, 0.2], [0.25, 0.25, 0.5]]
    got = isolated(f"""
        import json, numpy as np
        from fusioncam.serve.classification_extension import class_count_of, classifications
        scores = np.array({scores}, dtype=np.float32)
        errors = []
        for name, parameters in (("gradcam", {{"classification": 2}}), ("probabilities", {{"classification": "two"}})):
            try:
                class_count_of(name, parameters, 3)
            except Exception as exc:
                errors.append(str(exc))
        print(json.dumps({{"named": [[e.decode() for e in row] for row in classifications(scores, 2, ["a", "b", "c"])],
                          "unnamed": [[e.decode() for e in row] for row in classifications(scores, 1, None)],
                          "counts": [class_count_of("probabilities", {{"classification": 9}}, 3),
                                     class_count_of("probabilities", {{}}, 3)],
                          "errors": errors}}))
    """)
    # C++ std::to_string(float) is printf("%f") of the float32 value promoted to double
    as_float32 = np.array(scores, dtype=np.float32).astype(np.float64)
    assert got["named"] == [["%f:%d:%s" % (as_float32[r, i], i, "abc"[i]) for i in order]
                            for r, order in enumerate([[1, 2], [2, 0]])]
    assert got["unnamed"] == [["0.700000:1"], ["0.500000:2"]]  # no class names: no label
    assert got["counts"] == [3, 0]  # min(class_count, classes), as Triton; none asked: 0
    assert "applies to probabilities only" in got["errors"][0] and "non-negative integer" in got["errors"][1]


JSON_CASES = [
    (b'{"instances": [[1.0, NaN]]}', ["NaN at line 1 column 22 (byte 21)", "not a JSON number"]),
    (b'{"a":\n  -Infinity}', ["-Infinity at line 2 column 3 (byte 8)", "not a JSON number"]),
    (b'{"a": 1,}', ["trailing comma", "line 1 column 8"]),
    (b"  ", ["empty"]),
]


@pytest.mark.slow  # a fresh interpreter importing kserve: about 5 s
def test_json_problems_are_named_with_their_position():
    messages = isolated(f"""
        import json
        from fusioncam.serve.json_body import parse_json_body
        messages = []
        for body in {[body for body, _ in JSON_CASES]!r}:
            try:
                parse_json_body(body, "the request body")
            except Exception as exc:
                messages.append(str(exc))
        print(json.dumps(messages))
    """)
    assert len(messages) == len(JSON_CASES)
    for message, (_, words) in zip(messages, JSON_CASES):
        assert message.startswith("the request body is not JSON: ")
        for word in words:
            assert word in message, message

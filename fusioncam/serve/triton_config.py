"""Triton's model-configuration extension: a served model's inputs, outputs, batching and versions as Triton's
ModelConfig (REST `GET /v2/models/NAME/config` answers its JSON, gRPC `ModelConfig` its protobuf).

Built from the model's v2 metadata, so the two always agree: each input and output with its Triton data type
(BYTES is TYPE_STRING) and its dims without the batch dimension (max_batch_size > 0: the server batches), image
inputs with their layout (FORMAT_NCHW for preprocessed tensors, FORMAT_NHWC for RGB pixels), the dynamic
batcher's wait (--max-latency-ms) and one version ("1"). Triton's image_client.py reads exactly these fields.
`parameters` (string values, as in Triton's config.pbtxt) names the bundle's target layers: `target_layers`, a
JSON list (served_layers.py).
An image input of the full model is `optional`: a request sends one of them.
"""

from __future__ import annotations

from typing import Any

SERVED_VERSION = "1"  # the one version of every served model (model_versions.py)
FORMATS = {"image_tensor": "FORMAT_NCHW", "image_rgb": "FORMAT_NHWC", "image": "FORMAT_NHWC"}
PLATFORM = "fusioncam"


def triton_data_type(datatype: str) -> str:
    """A v2 datatype (FP32, BYTES, ...) as Triton's DataType name (TYPE_FP32, TYPE_STRING, ...)."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def model_config(name: str, inputs: list[dict], outputs: list[dict], max_batch_size: int,
                 max_latency_ms: float, parameters: dict[str, str] | None = None) -> dict[str, Any]:
    """Triton's ModelConfig as JSON (field names as in model_config.proto; dims as numbers, as Triton writes them).

    inputs, outputs: the model's v2 metadata tensors ({"name", "datatype", "shape"} with the batch dimension first).
    parameters: the model's string parameters (Triton's ModelParameter string_value), left out when None.
    """
    optional = len(inputs) > 1
    return {
        "name": name,
        "platform": PLATFORM,
        "backend": PLATFORM,
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": int(max_batch_size),
        "input": [{"name": tensor["name"], "data_type": triton_data_type(tensor["datatype"]),
                   "format": FORMATS.get(tensor["name"], "FORMAT_NONE"), "dims": [int(d) for d in tensor["shape"][1:]],
                   "optional": optional} for tensor in inputs],
        "output": [{"name": tensor["name"], "data_type": triton_data_type(tensor["datatype"]),
                    "dims": [int(d) for d in tensor["shape"][1:]], "label_filename": ""} for tensor in outputs],
        "dynamic_batching": {"max_queue_delay_microseconds": int(round(max_latency_ms * 1000)),
                             "preserve_ordering": False},
        **({} if parameters is None else
           {"parameters": {key: {"string_value": str(value)} for key, value in parameters.items()}}),
    }


def config_of(model) -> dict[str, Any]:
    """The configuration of a served FusionCamModel or method view (its options and target layers are its
    model's)."""
    from .served_layers import config_parameters  # here: it imports KServe, which model_config's readers need not

    served = getattr(model, "base", model)
    return model_config(model.name, model.get_input_types(), model.get_output_types(), served.options.max_batch_size,
                        served.options.max_latency_ms, config_parameters(served.bundle))


def index_entry(name: str, ready: bool) -> dict[str, str]:
    """One model of Triton's repository index."""
    return {"name": name, "version": SERVED_VERSION, "state": "READY" if ready else "UNAVAILABLE",
            "reason": "" if ready else "not loaded"}

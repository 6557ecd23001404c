"""Request forms and Triton tooling against the real `fusioncam serve` (a subprocess on free 127.0.0.1 ports):
KServe's own sample requests (v1 key `image`), JSON v2 without a content type, Triton's unmodified example image
clients, the classification extension, model configuration, versions, statistics, the repository index, the
per-method views, and the server's answers to wrong inputs (unknown input names, raw bytes that are not an image,
an oversized chunked body, NaN in JSON).

Every map is compared with Explainer.explain on the same image alone (1e-5) and every probability with its
softmax of the Explainer's logits.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("kserve") is None:  # not imported here: its protobuf symbols clash with tritonclient.grpc's
    pytest.skip("the serve extra (kserve) is not installed: pip install 'fusioncam[serve]'", allow_module_level=True)
httpx = pytest.importorskip("httpx", reason="httpx is not installed: pip install 'fusioncam[test]'")
tritonhttp = pytest.importorskip("tritonclient.http", reason="tritonclient is not installed: pip install 'fusioncam[test]'")
tritongrpc = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")
from PIL import Image  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from fusioncam.images import preprocess  # noqa: E402
from tests.serve.protocol_server import (  # noqa: E402,F401  (module fixtures: onnx_path, bundle, explainer)
    MAX_BODY, NAMES, SIZE, TOLERANCE, alone, b64, bundle, explainer, model_input, onnx_path, picture, png,
    running_server)

pytestmark = pytest.mark.slow  # one server subprocess for the module

DATA = Path(__file__).parent / "data"
KSERVE_SAMPLES = ["kserve_custom_model_input.json", "kserve_image_transformer_input.json",
                  "kserve_triton_torchscript_image.json"]


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    with running_server(bundle, tmp_path_factory.mktemp("triton-log") / "server.log") as running:
        yield running


def softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    exp = np.exp(logits - logits.max())
    return exp / exp.sum()


# ------------------------------------------------------------------------------------------- request forms


@pytest.mark.parametrize("sample", KSERVE_SAMPLES)
def test_kserve_sample_requests_with_the_image_key_are_explained(server, explainer, sample):
    body = json.loads((DATA / sample).read_text())
    encoded = __import__("base64").b64decode(body["instances"][0]["image"]["b64"])
    image = model_input(encoded)
    want = alone(explainer, image, None, ("gradcam",))
    predicted = httpx.post(f"{server.base}/v1/models/tiny:predict", content=(DATA / sample).read_bytes(),
                           headers={"content-type": "application/json"}, timeout=60)  # the file exactly as KServe sends it
    assert predicted.status_code == 200, predicted.text
    top = predicted.json()["predictions"][0]
    assert top["classes"][0] == int(want.classes[0])
    assert abs(top["probabilities"][0] - float(want.probabilities[0])) < 1e-6
    explained = httpx.post(f"{server.base}/v1/models/tiny:explain",
                           json={**body, "parameters": {"methods": ["gradcam"]}}, timeout=60)
    assert explained.status_code == 200, explained.text
    np.testing.assert_allclose(explained.json()["explanations"][0]["maps"]["gradcam"], want.maps["gradcam"][0],
                               atol=TOLERANCE)


def test_json_v2_without_a_content_type_is_read_as_json(server, explainer):
    encoded = png(picture(200))
    want = alone(explainer, model_input(encoded), "dog", ("gradcam",))
    # tritonclient.http with binary_data=False: a JSON body without Content-Type: application/json
    tensor = tritonhttp.InferInput("image_bytes", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b64(encoded).encode()], dtype=np.object_), binary_data=False)
    result = server.http().infer("tiny", [tensor], outputs=[tritonhttp.InferRequestedOutput("gradcam", binary_data=False)],
                                 parameters={"target": "dog"})
    np.testing.assert_allclose(result.as_numpy("gradcam")[0], want.maps["gradcam"][0], atol=TOLERANCE)
    # httpx with raw bytes and no content type at all (as `curl --data-binary` without -H)
    body = {"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": [b64(encoded)]}],
            "outputs": [{"name": "gradcam"}], "parameters": {"target": "dog"}}
    response = httpx.post(f"{server.base}/v2/models/tiny/infer", content=json.dumps(body).encode(), timeout=60)
    assert "content-type" not in response.request.headers
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    np.testing.assert_allclose(np.asarray(output["data"], np.float32).reshape(output["shape"])[0],
                               want.maps["gradcam"][0], atol=TOLERANCE)


# ------------------------------------------------------------------------------------------ Triton tooling


def pil_pixels(path: Path) -> np.ndarray:
    """What Triton's image clients send for an image (no scaling): PIL's bilinear resize to the model size, uint8."""
    return np.array(Image.open(path).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR))


CLASS_LINE = re.compile(r"^\s+(?P<score>[0-9.]+) \((?P<index>\d+)\) = (?P<label>\S+)$")


@pytest.mark.parametrize("client, protocol", [("triton_image_client.py", "http"), ("triton_image_client.py", "grpc"),
                                              ("triton_grpc_image_client.py", "grpc")])
def test_tritons_unmodified_image_clients_classify_through_the_probabilities_view(server, explainer, tmp_path,
                                                                                   client, protocol):
    path = tmp_path / "picture.png"
    path.write_bytes(png(picture(210, 29, 37)))
    port = server.http_port if protocol == "http" else server.grpc_port
    command = [sys.executable, str(DATA / client), "-m", "tiny.probabilities", "-c", "3", "-u", f"127.0.0.1:{port}",
               str(path)]
    if client == "triton_image_client.py":
        command[2:2] = ["-i", protocol]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    got = [CLASS_LINE.match(line) for line in run.stdout.splitlines() if CLASS_LINE.match(line)]
    assert len(got) == 3, run.stdout
    image = preprocess(pil_pixels(path), (SIZE, SIZE))
    probabilities = softmax(alone(explainer, image, None, ("gradcam",)).logits[0])
    order = np.argsort(-probabilities, kind="stable")[:3]
    assert [int(m["index"]) for m in got] == order.tolist()
    assert [m["label"] for m in got] == [NAMES[i] for i in order]
    np.testing.assert_allclose([float(m["score"]) for m in got], probabilities[order], atol=1e-6)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_classification_extension_over_tritonclient(server, explainer, protocol):
    client, module = (server.http(), tritonhttp) if protocol == "http" else (server.grpc(), tritongrpc)
    image = model_input(png(picture(220)))
    tensor = module.InferInput("image_tensor", [1, 3, SIZE, SIZE], "FP32")
    tensor.set_data_from_numpy(image[None])
    result = client.infer("tiny", [tensor], outputs=[module.InferRequestedOutput("probabilities", class_count=3),
                                                     module.InferRequestedOutput("gradcam")])
    probabilities = softmax(alone(explainer, image, None, ("gradcam",)).logits[0])
    order = np.argsort(-probabilities, kind="stable")[:3]
    entries = [value.decode() if isinstance(value, bytes) else value for value in result.as_numpy("probabilities")[0]]
    assert [e.split(":")[1:] for e in entries] == [[str(i), NAMES[i]] for i in order]
    np.testing.assert_allclose([float(e.split(":")[0]) for e in entries], probabilities[order], atol=1e-6)
    np.testing.assert_allclose(result.as_numpy("gradcam")[0], alone(explainer, image, None, ("gradcam",)).maps["gradcam"][0],
                               atol=TOLERANCE)
    with pytest.raises(InferenceServerException) as caught:  # the extension applies to probabilities only
        client.infer("tiny", [tensor], outputs=[module.InferRequestedOutput("gradcam", class_count=2)])
    assert "class_count" in caught.value.message()


def test_model_configuration_agrees_over_rest_and_grpc_and_with_the_metadata(server):
    rest = server.http().get_model_config("tiny")
    grpc_config = server.grpc().get_model_config("tiny", as_json=True)["config"]
    assert rest["max_batch_size"] == int(grpc_config["max_batch_size"]) == 8
    assert {i["name"]: (i["data_type"], i["format"]) for i in rest["input"]} == {
        "image_bytes": ("TYPE_STRING", "FORMAT_NONE"), "image_tensor": ("TYPE_FP32", "FORMAT_NCHW"),
        "image_rgb": ("TYPE_UINT8", "FORMAT_NHWC")}
    assert [(i["name"], [int(d) for d in i.get("dims", [])]) for i in grpc_config["input"]] == \
        [(i["name"], i["dims"]) for i in rest["input"]]
    metadata = server.http().get_model_metadata("tiny")
    assert [o["name"] for o in rest["output"]] == [o["name"] for o in metadata["outputs"]]
    assert [[-1, *o["dims"]] for o in rest["output"]] == [o["shape"] for o in metadata["outputs"]]
    assert rest["dynamic_batching"]["max_queue_delay_microseconds"] == 300_000  # --max-latency-ms 300
    view = server.grpc().get_model_config("tiny.gradcam").config
    assert [(i.name, list(i.dims)) for i in view.input] == [("image", [SIZE, SIZE, 3])]
    assert [(o.name, list(o.dims)) for o in view.output] == [("gradcam", [SIZE, SIZE])]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_model_versions_one_or_none_reach_the_model_and_another_is_not_found(server, explainer, protocol):
    client, module = (server.http(), tritonhttp) if protocol == "http" else (server.grpc(), tritongrpc)
    image = model_input(png(picture(230)))
    tensor = module.InferInput("image_tensor", [1, 3, SIZE, SIZE], "FP32")
    tensor.set_data_from_numpy(image[None])
    want = alone(explainer, image, None, ("xgradcam",)).maps["xgradcam"][0]
    for version in ("", "1"):
        result = client.infer("tiny", [tensor], model_version=version, outputs=[module.InferRequestedOutput("xgradcam")])
        np.testing.assert_allclose(result.as_numpy("xgradcam")[0], want, atol=TOLERANCE)
        assert client.get_model_metadata("tiny", model_version=version)
        assert client.is_model_ready("tiny", model_version=version)
    for call in (lambda: client.infer("tiny", [tensor], model_version="2"),
                 lambda: client.get_model_metadata("tiny", model_version="2"),
                 lambda: client.get_model_config("tiny", model_version="2")):
        with pytest.raises(InferenceServerException) as caught:
            call()
        assert str(caught.value.status()) in ("404", "StatusCode.NOT_FOUND"), caught.value
        assert "version '2'" in caught.value.message()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_statistics_count_requests_and_images_and_the_index_lists_models_and_views(server, explainer, protocol):
    client, module = (server.http(), tritonhttp) if protocol == "http" else (server.grpc(), tritongrpc)

    def stats() -> dict:
        answer = client.get_inference_statistics("twin", as_json=True) if protocol == "grpc" else \
            client.get_inference_statistics("twin")
        entry = answer["model_stats"][0]
        return {"images": int(entry.get("inference_count", 0)),
                "ok": int(entry["inference_stats"]["success"].get("count", 0)),
                "failed": int(entry["inference_stats"]["fail"].get("count", 0)),
                "executions": int(entry.get("execution_count", 0))}

    before = stats()
    images = np.stack([model_input(png(picture(seed))) for seed in (240, 241)])
    tensor = module.InferInput("image_tensor", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    client.infer("twin", [tensor], outputs=[module.InferRequestedOutput("classes")])
    bad = module.InferInput("image_tensor", [1, 3, 4, 4], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(InferenceServerException):
        client.infer("twin", [bad])
    after = stats()
    assert after["images"] - before["images"] == 2
    assert after["ok"] - before["ok"] == 1 and after["failed"] - before["failed"] == 1
    assert after["executions"] - before["executions"] == 1
    index = client.get_model_repository_index(as_json=True) if protocol == "grpc" else client.get_model_repository_index()
    entries = index["models"] if isinstance(index, dict) else index
    names = {entry["name"]: entry["state"] for entry in entries}
    assert names["tiny"] == names["twin"] == names["tiny.gradcam"] == names["twin.probabilities"] == "READY"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_method_view_takes_one_image_and_returns_its_map(server, explainer, protocol):
    client, module = (server.http(), tritonhttp) if protocol == "http" else (server.grpc(), tritongrpc)
    pixels = picture(250, SIZE, SIZE)
    tensor = module.InferInput("image", [1, SIZE, SIZE, 3], "UINT8")
    tensor.set_data_from_numpy(pixels[None])
    result = client.infer("tiny.gradcam++", [tensor], parameters={"target": "owl"})
    want = alone(explainer, preprocess(pixels, (SIZE, SIZE)), "owl", ("gradcam++",))
    np.testing.assert_allclose(result.as_numpy("gradcam++")[0], want.maps["gradcam++"][0], atol=TOLERANCE)
    metadata = client.get_model_metadata("tiny.gradcam++")
    outputs = metadata["outputs"] if isinstance(metadata, dict) else [{"name": o.name} for o in metadata.outputs]
    assert [o["name"] for o in outputs] == ["gradcam++"]
    with pytest.raises(InferenceServerException) as caught:
        wrong = module.InferInput("image_rgb", [1, SIZE, SIZE, 3], "UINT8")
        wrong.set_data_from_numpy(pixels[None])
        client.infer("tiny.gradcam++", [wrong])
    assert "'image'" in caught.value.message()


# --------------------------------------------------------------------------------------- wrong inputs (#22)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_an_unknown_input_name_is_refused_listing_the_inputs(server, protocol):
    client, module = (server.http(), tritonhttp) if protocol == "http" else (server.grpc(), tritongrpc)
    tensor = module.InferInput("pixels", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([png(picture(260))], dtype=np.object_))
    with pytest.raises(InferenceServerException) as caught:
        client.infer("tiny", [tensor], outputs=[module.InferRequestedOutput("gradcam")])
    assert str(caught.value.status()) in ("400", "StatusCode.INVALID_ARGUMENT")
    for word in ("'pixels'", "image_bytes (BYTES)", "image_tensor (FP32)", "image_rgb (UINT8)"):
        assert word in caught.value.message()


def test_raw_bytes_that_are_not_an_image_are_reported_as_not_an_image_over_grpc(server):
    tensor = tritongrpc.InferInput("image_bytes", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"hello world this is plain text"], dtype=np.object_))
    with pytest.raises(InferenceServerException) as caught:
        server.grpc().infer("tiny", [tensor], outputs=[tritongrpc.InferRequestedOutput("gradcam")])
    message = caught.value.message()
    assert "instance 0: not an image" in message and "base64" not in message.split("nor")[0]


def test_a_chunked_body_over_the_limit_gets_one_json_error(server):
    def chunks():
        for _ in range(MAX_BODY // 65536 + 2):
            yield b"x" * 65536

    response = httpx.post(f"{server.base}/v1/models/tiny:predict", content=chunks(),
                          headers={"content-type": "application/json"}, timeout=60)
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert response.status_code == 413
    error = response.json()["error"]
    assert error.startswith("the request body is over") and "--max-body-bytes" in error and "{" not in error


def test_a_nan_literal_is_named_with_its_position(server):
    body = b'{"instances": [[1.0, NaN]]}'
    response = httpx.post(f"{server.base}/v1/models/tiny:predict", content=body,
                          headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == 400
    error = response.json()["error"]
    assert "NaN at line 1 column 22" in error and "not a JSON number" in error

"""`fusioncam serve` end to end: the real server in a subprocess on free 127.0.0.1 ports, called with clients this
project did not write (httpx for KServe v1, tritonclient.http with binary data and tritonclient.grpc for v2).

Every map that comes back is compared with what Explainer.explain gives for the same image alone (1e-5), and
every top-k list with the softmax of ONNX Runtime running the original .onnx model. Requests are sent
concurrently so batches really form; the server's Prometheus metrics prove it.
"""

from __future__ import annotations

import base64
import concurrent.futures
import importlib.util
import json
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

if importlib.util.find_spec("kserve") is None:  # not imported here: its protobuf symbols clash with tritonclient.grpc's
    pytest.skip("the serve extra (kserve) is not installed: pip install 'fusioncam[serve]'", allow_module_level=True)
httpx = pytest.importorskip("httpx", reason="httpx is not installed: pip install 'fusioncam[test]'")
tritonhttp = pytest.importorskip("tritonclient.http", reason="tritonclient is not installed: pip install 'fusioncam[test]'")
tritongrpc = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")
from tritonclient.utils import InferenceServerException  # noqa: E402

import onnxruntime as ort  # noqa: E402

import fusioncam  # noqa: E402
from fusioncam.images import decode_rgb, preprocess, resized_rgb  # noqa: E402

pytestmark = pytest.mark.slow  # one server subprocess for the module: about 25 s on 2 cores

from tests.serve.protocol_server import (  # noqa: E402,F401  (module fixtures: onnx_path, bundle, explainer)
    MAX_BODY, MAX_INSTANCES, MAX_QUEUE, NAMES, SIZE, TOLERANCE, Server, alone, b64, bundle, explainer, model_input,
    onnx_path, picture, png, running_server)


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    with running_server(bundle, tmp_path_factory.mktemp("serve-log") / "server.log") as running:
        yield running


def onnx_top_k(onnx_path: Path, image: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of the original .onnx model (not the bundle) by ONNX Runtime, softmax in float64."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"x": image[None]})[0][0].astype(np.float64)
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    order = np.argsort(-probabilities, kind="stable")[:k]
    return order, probabilities[order]


def batch_sizes_formed(server: Server) -> tuple[float, float]:
    """(batches of one image, all batches) from the fusioncam_batch_images histogram."""
    samples = server.metrics()
    ones = samples[("fusioncam_batch_images_bucket", (("le", "1.0"), ("model_name", "tiny")))]
    total = samples[("fusioncam_batch_images_count", (("model_name", "tiny"),))]
    return ones, total


# ----------------------------------------------------------------------------------------------- KServe v1


def test_v1_predict_matches_onnx_runtime_on_the_original_model(server, onnx_path):
    encoded = png(picture(1))
    response = httpx.post(f"{server.base}/v1/models/tiny:predict",
                          json={"instances": [{"image_bytes": {"b64": b64(encoded)}}, {"data": b64(encoded)}],
                                "parameters": {"top_k": 3}}, timeout=60)
    assert response.status_code == 200, response.text
    classes, probabilities = onnx_top_k(onnx_path, model_input(encoded), 3)
    for prediction in response.json()["predictions"]:
        assert prediction["classes"] == classes.tolist()
        assert prediction["class_names"] == [NAMES[c] for c in classes]
        np.testing.assert_allclose(prediction["probabilities"], probabilities, atol=1e-6)


def test_v1_explain_maps_and_overlays_equal_the_explainer_alone(server, explainer):
    encoded = [png(picture(seed)) for seed in (2, 3)]
    floats = model_input(png(picture(4)))
    methods = ["gradcam", "gradcam++", "scorecam", "fusion"]
    body = {"instances": [{"image_bytes": {"b64": b64(encoded[0])}}, {"b64": b64(encoded[1]), "target": "owl"},
                          floats.tolist()],
            "parameters": {"methods": methods, "target": 1, "return": ["maps", "overlays"], "colormap": "viridis"}}
    response = httpx.post(f"{server.base}/v1/models/tiny:explain", json=body, timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["methods"] == methods
    images = [model_input(encoded[0]), model_input(encoded[1]), floats]
    pictures = [decode_rgb(encoded[0], "a"), decode_rgb(encoded[1], "b"), None]
    for i, (image, target, entry) in enumerate(zip(images, [1, "owl", 1], answer["explanations"])):
        want = alone(explainer, image, target, methods)
        assert entry["target"]["class"] == int(want.classes[0]) == (1 if target == 1 else NAMES.index("owl"))
        assert entry["target"]["class_name"] == NAMES[entry["target"]["class"]]
        assert abs(entry["target"]["probability"] - float(want.probabilities[0])) < 1e-6
        for method in methods:
            got = np.asarray(entry["maps"][method], dtype=np.float32)
            assert got.shape == (SIZE, SIZE)
            np.testing.assert_allclose(got, want.maps[method][0], atol=TOLERANCE, err_msg=f"instance {i} {method}")
            overlay = cv2.cvtColor(cv2.imdecode(np.frombuffer(base64.b64decode(entry["overlays"][method]), np.uint8),
                                                cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            if pictures[i] is not None:  # drawn at the image's own resolution, from the returned map
                expected = fusioncam.overlay(pictures[i], got, colormap="viridis")
                assert overlay.shape == pictures[i].shape
                assert np.abs(overlay.astype(int) - expected.astype(int)).max() <= 1
            else:
                assert overlay.shape == (SIZE, SIZE, 3)


def test_two_models_are_served_under_their_names(server, explainer):
    listed = httpx.get(f"{server.base}/v2/models", timeout=10).json()["models"]
    assert sorted(listed) == ["tiny", "twin"]
    encoded = png(picture(5))
    body = {"instances": [{"data": b64(encoded)}], "parameters": {"methods": ["xgradcam"], "target": "dog"}}
    answers = {name: httpx.post(f"{server.base}/v1/models/{name}:explain", json=body, timeout=60) for name in listed}
    want = alone(explainer, model_input(encoded), "dog", ("xgradcam",))
    for name, answer in answers.items():
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(answer.json()["explanations"][0]["maps"]["xgradcam"], want.maps["xgradcam"][0],
                                   atol=TOLERANCE, err_msg=name)
    unknown = httpx.post(f"{server.base}/v1/models/nope:explain", json=body, timeout=60)
    assert unknown.status_code == 404 and "nope" in unknown.json()["error"]
    samples = server.metrics()
    assert samples[("fusioncam_requests_total", (("method", "xgradcam"), ("model_name", "twin"), ("outcome", "ok")))] == 1


# ----------------------------------------------------------------------------------------- Open Inference v2


def test_v2_metadata_lists_inputs_and_outputs(server):
    for client in (server.http(), server.grpc()):
        metadata = client.get_model_metadata("tiny")
        metadata = metadata if isinstance(metadata, dict) else {
            "inputs": [{"name": t.name, "datatype": t.datatype} for t in metadata.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype} for t in metadata.outputs]}
        inputs = {t["name"]: t["datatype"] for t in metadata["inputs"]}
        outputs = {t["name"]: t["datatype"] for t in metadata["outputs"]}
        assert inputs == {"image_bytes": "BYTES", "image_tensor": "FP32", "image_rgb": "UINT8"}
        assert outputs["probabilities"] == "FP32" and outputs["classes"] == "INT64" and outputs["fusion"] == "FP32"
        assert set(fusioncam.runtime.methods.METHODS) <= set(outputs)
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_v2_binary_tensors_equal_the_explainer_alone(server, explainer, onnx_path, protocol):
    client, module = (server.http(), tritonhttp) if protocol == "http" else (server.grpc(), tritongrpc)
    encoded = [png(picture(seed)) for seed in (10, 11)]
    # binary BYTES elements are the image files' raw bytes, over gRPC and over REST (fusioncam's binary request
    # reader keeps them as sent); base64 text in a binary element works too
    rgb = picture(12, 40, 20)
    floats = np.stack([model_input(png(picture(13)))])
    cases = [
        ("image_bytes", "BYTES", np.array(encoded, dtype=np.object_), [model_input(e) for e in encoded]),
        ("image_bytes", "BYTES", np.array([b64(e).encode() for e in encoded], dtype=np.object_),
         [model_input(e) for e in encoded]),
        ("image_rgb", "UINT8", rgb[None], [preprocess(resized_rgb(rgb, (SIZE, SIZE)), (SIZE, SIZE))]),
        ("image_tensor", "FP32", floats, list(floats)),
    ]
    for name, datatype, array, images in cases:
        tensor = module.InferInput(name, list(array.shape), datatype)
        if protocol == "http":
            tensor.set_data_from_numpy(array, binary_data=True)
            outputs = [module.InferRequestedOutput(n, binary_data=True)
                       for n in ("probabilities", "classes", "explained_class", "gradcam", "fusion")]
        else:
            tensor.set_data_from_numpy(array)
            outputs = [module.InferRequestedOutput(n)
                       for n in ("probabilities", "classes", "explained_class", "gradcam", "fusion")]
        result = client.infer("tiny", [tensor], outputs=outputs, parameters={"target": "fox", "top_k": 2})
        for i, image in enumerate(images):
            want = alone(explainer, image, "fox", ("gradcam", "fusion"))
            assert int(result.as_numpy("explained_class")[i]) == NAMES.index("fox")
            for method in ("gradcam", "fusion"):
                np.testing.assert_allclose(result.as_numpy(method)[i], want.maps[method][0], atol=TOLERANCE,
                                           err_msg=f"{protocol} {name} image {i} {method}")
            classes, probabilities = onnx_top_k(onnx_path, image, 2)
            assert result.as_numpy("classes")[i].tolist() == classes.tolist()
            np.testing.assert_allclose(result.as_numpy("probabilities")[i], probabilities, atol=1e-6)


def test_v2_without_outputs_returns_everything_for_fusion_and_json_works(server, explainer):
    encoded = png(picture(20))
    body = {"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": [b64(encoded)]}]}
    response = httpx.post(f"{server.base}/v2/models/tiny/infer", json=body, timeout=60)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert set(outputs) == {"probabilities", "classes", "class_names", "explained_class", "explained_probability", "fusion"}
    want = alone(explainer, model_input(encoded), None, ("fusion",))
    got = np.asarray(outputs["fusion"]["data"], dtype=np.float32).reshape(outputs["fusion"]["shape"])
    np.testing.assert_allclose(got[0], want.maps["fusion"][0], atol=TOLERANCE)
    assert outputs["class_names"]["data"][0] == NAMES[int(outputs["classes"]["data"][0])]


# ------------------------------------------------------------------------------------------ dynamic batching


def test_concurrent_requests_form_batches_and_each_gets_its_own_maps(server, explainer):
    ones_before, total_before = batch_sizes_formed(server)
    seeds = list(range(100, 112))
    encoded = {seed: png(picture(seed)) for seed in seeds}
    targets = {seed: NAMES[seed % len(NAMES)] for seed in seeds}
    methods = ("gradcam++", "unioncam")

    def over_v1(seed):
        body = {"instances": [{"image_bytes": {"b64": b64(encoded[seed])}}],
                "parameters": {"methods": list(methods), "target": targets[seed]}}
        response = httpx.post(f"{server.base}/v1/models/tiny:explain", json=body, timeout=120)
        assert response.status_code == 200, response.text
        entry = response.json()
        return {m: np.asarray(entry["explanations"][0]["maps"][m], dtype=np.float32) for m in methods}, entry["batch_images"]

    def over_grpc(seed):
        tensor = tritongrpc.InferInput("image_bytes", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([encoded[seed]], dtype=np.object_))
        result = server.grpc().infer("tiny", [tensor], outputs=[tritongrpc.InferRequestedOutput(m) for m in methods],
                                     parameters={"target": targets[seed]})
        return {m: result.as_numpy(m)[0] for m in methods}, None

    with concurrent.futures.ThreadPoolExecutor(len(seeds)) as pool:
        futures = {seed: pool.submit(over_v1 if seed % 2 else over_grpc, seed) for seed in seeds}
        answers = {seed: future.result(timeout=120) for seed, future in futures.items()}
    for seed, (maps, _) in answers.items():
        want = alone(explainer, model_input(encoded[seed]), targets[seed], methods)
        for method in methods:
            np.testing.assert_allclose(maps[method], want.maps[method][0], atol=TOLERANCE, err_msg=f"seed {seed} {method}")
    assert max(size for _, size in answers.values() if size is not None) > 1
    ones_after, total_after = batch_sizes_formed(server)
    assert total_after - total_before < len(seeds), "some requests must have shared an Explainer call"
    assert (total_after - total_before) - (ones_after - ones_before) >= 1, "a batch of more than one image must form"


def queued_images(server: Server) -> float:
    return server.metrics().get(("fusioncam_queue_images", (("model_name", "tiny"),)), 0.0)


def test_a_full_queue_answers_429_at_once_and_the_queued_requests_still_succeed(bundle, explainer, tmp_path):
    # A server whose batches wait 5 s for company: four requests of four images, each with its own methods (so no
    # batch fills), fill the queue of MAX_QUEUE images and stay there; the fifth request is refused at once.
    groups = [("gradcam",), ("xgradcam",), ("gradcam++",), ("groupcam",)]
    encoded = png(picture(30))
    request = {"instances": [{"data": b64(encoded)}] * 4}
    with running_server(bundle, tmp_path / "server.log", latency_ms=5000) as slow:

        def send(methods):
            body = {**request, "parameters": {"methods": list(methods)}}
            response = httpx.post(f"{slow.base}/v1/models/tiny:explain", json=body, timeout=60)
            return response, time.monotonic()

        with concurrent.futures.ThreadPoolExecutor(len(groups)) as pool:
            waiting = [pool.submit(send, methods) for methods in groups]
            while queued_images(slow) < MAX_QUEUE:
                assert not any(future.done() for future in waiting), "the queue emptied before it filled"
                time.sleep(0.05)
            started = time.monotonic()
            refused, refused_at = send(("scorecam",))
            answers = [future.result(timeout=60) for future in waiting]
    assert refused.status_code == 429, refused.text
    assert "busy" in refused.json()["error"] and "--max-queue" in refused.json()["error"]
    assert refused_at - started < 2.5, "a full queue answers at once, not when a worker frees it"
    assert refused_at < min(done for _, done in answers)
    image = model_input(encoded)
    for methods, (answer, _) in zip(groups, answers):
        assert answer.status_code == 200, answer.text
        want = alone(explainer, image, None, methods)
        for entry in answer.json()["explanations"]:
            np.testing.assert_allclose(entry["maps"][methods[0]], want.maps[methods[0]][0], atol=TOLERANCE)


def test_health_and_metrics_answer_while_a_batch_is_explained(server):
    slow = {"instances": [{"data": b64(png(picture(40)))}] * 8,
            "parameters": {"methods": ["fusion", "groupcam", "unioncam"]}}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        long_request = pool.submit(httpx.post, f"{server.base}/v1/models/tiny:explain", json=slow, timeout=60)
        answered = 0
        while not long_request.done():
            assert httpx.get(f"{server.base}/v2/health/live", timeout=5).status_code == 200
            answered += 1
        assert long_request.result().status_code == 200
    assert answered >= 1
    samples = server.metrics()
    assert samples[("fusioncam_requests_total", (("method", "fusion"), ("model_name", "tiny"), ("outcome", "ok")))] >= 1
    assert samples[("fusioncam_masked_forwards_total", (("kind", "run"), ("model_name", "tiny")))] > 0
    assert ("fusioncam_queue_images", (("model_name", "tiny"),)) in samples
    assert samples[("fusioncam_request_latency_seconds_count", (("method", "fusion"), ("model_name", "tiny")))] >= 1


# ------------------------------------------------------------------------------------------------ bad input


def bomb_png() -> bytes:
    """A real 1500x1000 PNG (1.5 megapixels, over MAX_PIXELS) that compresses to a few kilobytes."""
    return png(np.zeros((1000, 1500, 3), dtype=np.uint8))


V1_BAD = [
    ("corrupt image", {"instances": [{"data": b64(png(picture(50)))}, {"data": b64(b"\x89PNG\r\n\x1a\nnot really")}]},
     400, ["instance 1", "corrupt"]),
    ("not base64", {"instances": [{"image_bytes": {"b64": "%%% not base64"}}]}, 400, ["instance 0", "base64"]),
    ("wrong float shape", {"instances": [np.zeros((3, 8, 8)).tolist()]}, 400, ["instance 0", "[3, 8, 8]", "[3, 16, 16]"]),
    ("ragged array", {"instances": [[[1.0, 2.0], [3.0]]]}, 400, ["instance 0"]),
    ("unknown method", {"instances": [{"data": b64(png(picture(51)))}], "parameters": {"methods": ["gradcam", "lime"]}},
     400, ["lime", "fusion"]),
    ("unknown class name", {"instances": [{"data": b64(png(picture(52)))}, {"data": b64(png(picture(53))), "target": "wolf"}]},
     400, ["instance 1", "wolf"]),
    ("class index out of range", {"instances": [{"data": b64(png(picture(54)))}], "parameters": {"target": 5}},
     400, ["out of range"]),
    ("too many instances", {"instances": [{"data": b64(png(picture(55)))}] * (MAX_INSTANCES + 1)}, 400,
     [str(MAX_INSTANCES + 1), "--max-instances"]),
    ("image over the pixel limit", {"instances": [{"data": b64(png(picture(56)))}, {"data": b64(bomb_png())}]}, 400,
     ["instance 1", "1500x1000", "--max-image-pixels"]),
    ("unknown parameter", {"instances": [{"data": b64(png(picture(57)))}], "parameters": {"method": "gradcam"}}, 400,
     ["method"]),
    ("no instances", {"inputs": []}, 400, ["instances"]),
    ("body over the size limit", {"instances": [{"data": "A" * MAX_BODY}]}, 413, ["--max-body-bytes"]),
]


@pytest.mark.parametrize("case, body, status, words", V1_BAD, ids=[case[0] for case in V1_BAD])
def test_v1_bad_input_gets_its_4xx_and_the_server_keeps_answering(server, explainer, case, body, status, words):
    response = httpx.post(f"{server.base}/v1/models/tiny:explain", json=body, timeout=60)
    assert response.status_code == status, response.text
    message = response.json()["error"]
    for word in words:
        assert word in message, f"{case}: {word!r} not in {message!r}"
    encoded = png(picture(60))
    good = httpx.post(f"{server.base}/v1/models/tiny:explain",
                      json={"instances": [{"data": b64(encoded)}], "parameters": {"methods": "gradcam"}}, timeout=60)
    assert good.status_code == 200, good.text
    want = alone(explainer, model_input(encoded), None, ("gradcam",))
    np.testing.assert_allclose(good.json()["explanations"][0]["maps"]["gradcam"], want.maps["gradcam"][0], atol=TOLERANCE)


def test_a_bad_request_never_touches_the_good_requests_batched_with_it(server, explainer):
    seeds = list(range(70, 76))
    encoded = {seed: png(picture(seed)) for seed in seeds}

    def send(seed):
        data = b64(encoded[seed]) if seed % 3 else b64(b"GIF89a broken")
        return seed, httpx.post(f"{server.base}/v1/models/tiny:explain",
                                json={"instances": [{"data": data}], "parameters": {"methods": ["gradcam"]}}, timeout=60)

    with concurrent.futures.ThreadPoolExecutor(len(seeds)) as pool:
        answers = list(pool.map(send, seeds))
    for seed, response in answers:
        if seed % 3:
            assert response.status_code == 200, response.text
            want = alone(explainer, model_input(encoded[seed]), None, ("gradcam",))
            np.testing.assert_allclose(response.json()["explanations"][0]["maps"]["gradcam"], want.maps["gradcam"][0],
                                       atol=TOLERANCE)
        else:
            assert response.status_code == 400 and "instance 0" in response.json()["error"]


def test_an_image_that_fails_inside_a_batch_fails_alone(server, explainer):
    # Finite input whose logits overflow to infinity passes every check before the batch and fails inside
    # Explainer.explain: the batch is explained again request by request, and only that request gets the error.
    seeds = [80, 81, 82]
    encoded = {seed: png(picture(seed)) for seed in seeds}
    overflowing = np.full((3, SIZE, SIZE), 3e38, dtype=np.float32).tolist()

    def send(instance):
        body = {"instances": [instance], "parameters": {"methods": ["gradcam++"]}}
        return httpx.post(f"{server.base}/v1/models/tiny:explain", json=body, timeout=60)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        good = {seed: pool.submit(send, {"data": b64(encoded[seed])}) for seed in seeds}
        bad = pool.submit(send, overflowing)
        answers = {seed: future.result(timeout=60) for seed, future in good.items()}
        refused = bad.result(timeout=60)
    assert refused.status_code == 400, refused.text
    assert "non-finite" in refused.json()["error"]
    for seed, answer in answers.items():
        assert answer.status_code == 200, answer.text
        want = alone(explainer, model_input(encoded[seed]), None, ("gradcam++",))
        np.testing.assert_allclose(answer.json()["explanations"][0]["maps"]["gradcam++"], want.maps["gradcam++"][0],
                                   atol=TOLERANCE)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_v2_bad_input_gets_invalid_argument_and_the_server_keeps_answering(server, explainer, protocol):
    client, module = (server.http(), tritonhttp) if protocol == "http" else (server.grpc(), tritongrpc)

    def infer(name, datatype, array, outputs=("gradcam",), parameters=None):
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        return client.infer("tiny", [tensor], outputs=[module.InferRequestedOutput(n) for n in outputs],
                            parameters=parameters)

    good = np.zeros((1, 3, SIZE, SIZE), dtype=np.float32)
    cases = [
        (lambda: infer("image_tensor", "INT32", np.zeros((1, 3, SIZE, SIZE), dtype=np.int32)), ["INT32"]),
        (lambda: infer("image_tensor", "FP32", np.zeros((2, 3, 8, 8), dtype=np.float32)), ["instance 0", "[3, 8, 8]"]),
        (lambda: infer("image_tensor", "FP32", np.full((1, 3, SIZE, SIZE), np.nan, dtype=np.float32)), ["NaN"]),
        (lambda: infer("image_rgb", "UINT8", np.zeros((1, 4, 4), dtype=np.uint8)), ["[N, h, w, 3]"]),
        (lambda: infer("image_tensor", "FP32", good, outputs=("lime",)), ["lime"]),
        (lambda: infer("image_tensor", "FP32", good, parameters={"target": "wolf"}), ["wolf"]),
        (lambda: infer("image_tensor", "FP32", np.zeros((MAX_INSTANCES + 1, 3, SIZE, SIZE), np.float32)),
         ["--max-instances"]),
    ]
    cases.append((lambda: infer("image_bytes", "BYTES", np.array([b"\x89PNG\r\n\x1a\n broken"], dtype=np.object_)),
                  ["instance 0", "corrupt"]))
    cases.append((lambda: infer("image_bytes", "BYTES", np.array([bomb_png()], dtype=np.object_)),
                  ["instance 0", "--max-image-pixels"]))
    for run, words in cases:
        with pytest.raises(InferenceServerException) as caught:
            run()
        status = str(caught.value.status())
        assert status in ("400", "StatusCode.INVALID_ARGUMENT"), f"{status}: {caught.value.message()}"
        for word in words:
            assert word in caught.value.message(), f"{word!r} not in {caught.value.message()!r}"
    if protocol == "grpc":  # a message over the size limit is refused by gRPC itself
        with pytest.raises(InferenceServerException) as caught:
            infer("image_tensor", "FP32", np.zeros((1, 3, 300, 300), dtype=np.float32))
        assert str(caught.value.status()) == "StatusCode.RESOURCE_EXHAUSTED"
    result = infer("image_tensor", "FP32", good)
    want = alone(explainer, good[0], None, ("gradcam",))
    np.testing.assert_allclose(result.as_numpy("gradcam")[0], want.maps["gradcam"][0], atol=TOLERANCE)


def binary_request(header: dict, *parts: bytes, header_length: int | None = None) -> tuple[bytes, dict]:
    """A body in the v2 binary-tensor extension: the JSON header, then the raw parts; and its HTTP headers."""
    text = json.dumps(header).encode()
    length = len(text) if header_length is None else header_length
    return text + b"".join(parts), {"content-type": "application/octet-stream",
                                    "inference-header-content-length": str(length)}


def test_binary_v2_bodies_that_lie_about_their_sizes_get_400_and_the_server_keeps_answering(server, explainer):
    image = model_input(png(picture(60)))
    raw = image[None].astype(np.float32).tobytes()

    def tensor(size: int) -> dict:
        return {"inputs": [{"name": "image_tensor", "shape": [1, 3, SIZE, SIZE], "datatype": "FP32",
                            "parameters": {"binary_data_size": size}}],
                "outputs": [{"name": "gradcam", "parameters": {"binary_data": True}}]}

    cases = [
        (binary_request(tensor(len(raw) + 4), raw), ["image_tensor", f"{len(raw) + 4} bytes", f"only {len(raw)}"]),
        (binary_request(tensor(len(raw)), raw, b"tail"), ["4 bytes after"]),
        (binary_request(tensor(len(raw)), raw, header_length=len(raw) * 2), ["inference-header-content-length"]),
        (binary_request(tensor(len(raw)), raw, header_length=5), ["not JSON"]),
        (binary_request({"inputs": [{"name": "image_tensor", "shape": [1, 3, SIZE, SIZE], "datatype": "FP32"}]}, raw),
         ["binary_data_size"]),
        (binary_request({"outputs": []}, raw), ['"inputs"']),
    ]
    for (body, headers), words in cases:
        response = httpx.post(f"{server.base}/v2/models/tiny/infer", content=body, headers=headers, timeout=60)
        assert response.status_code == 400, (words, response.status_code, response.text)
        for word in words:
            assert word in response.json()["error"], f"{word!r} not in {response.text!r}"
    body, headers = binary_request(tensor(len(raw)), raw)
    response = httpx.post(f"{server.base}/v2/models/tiny/infer", content=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    got = np.frombuffer(response.content[length:], dtype=np.float32).reshape(1, SIZE, SIZE)
    np.testing.assert_allclose(got[0], alone(explainer, image, None, ("gradcam",)).maps["gradcam"][0], atol=TOLERANCE)


def test_the_server_binds_only_the_loopback_address(server):
    listening = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True, check=False).stdout
    if not listening:
        pytest.skip("ss is not available to list listening sockets")
    mine = [line for line in listening.splitlines() if f":{server.http_port} " in line or f":{server.grpc_port} " in line]
    assert len(mine) == 2, listening
    local = [line.split()[3].rsplit(":", 1)[0] for line in mine]
    assert set(local) <= {"127.0.0.1", "[::ffff:127.0.0.1]"}, mine  # gRPC reports the IPv4-mapped form


def test_a_negative_target_counts_from_the_end_and_top_is_the_top_class(server, explainer):
    """"target": -1 is the last class (as targets=-1 and --target -1 are), never a hidden "top class"; "top" or no
    target is each image's top class; -6 of 5 classes is out of range."""
    encoded = png(picture(31))
    image = model_input(encoded)
    top = int(alone(explainer, image, None, ("gradcam",)).classes[0])
    assert top != len(NAMES) - 1  # else -1 and the top class could not be told apart
    for target, explained in ((-1, len(NAMES) - 1), (-len(NAMES), 0), ("top", top), (None, top)):
        parameters = {"methods": ["gradcam"]} if target is None else {"methods": ["gradcam"], "target": target}
        body = {"instances": [{"image_bytes": {"b64": b64(encoded)}}], "parameters": parameters}
        response = httpx.post(f"{server.base}/v1/models/tiny:explain", json=body, timeout=60)
        assert response.status_code == 200, response.text
        entry = response.json()["explanations"][0]
        assert entry["target"]["class"] == explained, target
        want = alone(explainer, image, explained, ("gradcam",)).maps["gradcam"][0]
        np.testing.assert_allclose(np.asarray(entry["maps"]["gradcam"], np.float32), want, atol=TOLERANCE)
    body = {"instances": [{"image_bytes": {"b64": b64(encoded)}}], "parameters": {"target": -len(NAMES) - 1}}
    response = httpx.post(f"{server.base}/v1/models/tiny:explain", json=body, timeout=60)
    assert response.status_code == 400 and "out of range" in response.json()["error"], response.text

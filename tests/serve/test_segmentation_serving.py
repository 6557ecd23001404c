"""`fusioncam serve` on a segmentation bundle, end to end: the real server in a subprocess on free 127.0.0.1 ports,
called with httpx (KServe v1) and tritonclient (v2 over HTTP with binary data, and over gRPC).

Every map that comes back is compared with Explainer.explain on the same image alone with the same class and region
(1e-5); the per-pixel classes of `:predict` with the arg-max of the PyTorch model's own scores.
"""

from __future__ import annotations

import base64
import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

if importlib.util.find_spec("kserve") is None:  # not imported here: its protobuf symbols clash with tritonclient.grpc's
    pytest.skip("the serve extra (kserve) is not installed: pip install 'fusioncam[serve]'", allow_module_level=True)
httpx = pytest.importorskip("httpx", reason="httpx is not installed: pip install 'fusioncam[test]'")
tritonhttp = pytest.importorskip("tritonclient.http", reason="tritonclient is not installed: pip install 'fusioncam[test]'")
tritongrpc = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")
from tritonclient.utils import InferenceServerException  # noqa: E402

import fusioncam  # noqa: E402
from tests.serve.server_process import running_server  # noqa: E402

pytestmark = pytest.mark.slow  # one server subprocess for the module

SIZE = 24
NAMES = ["sky", "road", "car"]
TOLERANCE = 1e-5
METHODS = ("gradcam", "fusion")


def tiny_segmenter() -> torch.nn.Module:
    """Per-pixel class scores [N, 3, 24, 24] at the input resolution; the ReLU is the target layer."""
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 1)).eval()
    with torch.no_grad():
        model[2].weight.mul_(4.0)
    return model


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_segmenter()


@pytest.fixture(scope="module")
def bundle(model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("segserve") / "seg.fcam"
    fusioncam.export_torch_segmentation(model, "1", out, input_size=(SIZE, SIZE), class_names=NAMES)
    return out


@pytest.fixture(scope="module")
def explainer(bundle):
    with fusioncam.Explainer(bundle, device="cpu") as alone:
        yield alone


class Server:
    """The running server and the clients that reach it."""

    def __init__(self, process) -> None:
        self.process, self.base = process, process.base

    def http(self):
        return tritonhttp.InferenceServerClient(f"127.0.0.1:{self.process.http_port}", network_timeout=120)

    def grpc(self):
        return tritongrpc.InferenceServerClient(f"127.0.0.1:{self.process.grpc_port}")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    out = tmp_path_factory.mktemp("segserve-classifier") / "c.fcam"
    fusioncam.export_torch(model, "1", out, input_size=(SIZE, SIZE))
    return out


@pytest.fixture(scope="module")
def server(bundle, classifier, tmp_path_factory):
    """The segmentation bundle as "tiny" and a classifier beside it as "clf", in one server."""
    log = tmp_path_factory.mktemp("segserve-log") / "server.log"
    with running_server([str(bundle), str(classifier)], ["tiny", "clf"], log, "--max-batch-size", "8",
                        "--max-latency-ms", "200") as process:
        yield Server(process)


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)


def png_b64(mask: np.ndarray) -> str:
    ok, encoded = cv2.imencode(".png", mask.astype(np.uint8) * 255)
    assert ok
    return base64.b64encode(encoded.tobytes()).decode("ascii")


def disc(cx: int, cy: int, radius: int) -> np.ndarray:
    rows, cols = np.mgrid[:SIZE, :SIZE]
    return (rows - cy) ** 2 + (cols - cx) ** 2 <= radius ** 2


def alone(explainer, image: np.ndarray, target, region):
    return explainer.explain(image[None], target, methods=METHODS, regions=[region])


def test_v1_predict_gives_the_model_own_per_pixel_classes(server, model) -> None:
    batch = images(2, seed=1)
    body = {"instances": [{"data": image.tolist()} for image in batch], "parameters": {"top_k": 3}}
    answer = httpx.post(f"{server.base}/v1/models/tiny:predict", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    with torch.no_grad():
        want = model(torch.from_numpy(batch)).argmax(dim=1).numpy()
    for i, prediction in enumerate(answer.json()["predictions"]):
        segmentation = np.asarray(prediction["segmentation"])
        assert segmentation.shape == (SIZE, SIZE)
        np.testing.assert_array_equal(segmentation, want[i])
        counts = np.bincount(want[i].ravel(), minlength=3)
        assert prediction["classes"][0] == int(np.argmax(counts))
        assert prediction["class_names"][0] == NAMES[prediction["classes"][0]]
        np.testing.assert_allclose(prediction["pixel_fractions"], np.sort(counts)[::-1] / SIZE ** 2, atol=1e-7)


def test_v1_explain_with_predicted_box_and_mask_regions_equals_the_explainer_alone(server, explainer) -> None:
    batch = images(4, seed=2)
    mask = disc(12, 10, 7)
    corner = np.zeros((SIZE, SIZE), bool)
    corner[:10, :14] = True
    instances = [
        {"data": batch[0].tolist()},  # the request's region: predicted, for the class on most pixels
        {"data": batch[1].tolist(), "target": "road", "region": [3, 4, 20, 16]},
        {"data": batch[2].tolist(), "target": 2, "region": {"mask": {"b64": png_b64(mask)}}},
        {"data": batch[3].tolist(), "target": "car", "region": {"mask": corner.astype(int).tolist()}},
    ]
    regions = ["predicted", (3, 4, 20, 16), mask, corner]
    targets = [None, "road", 2, "car"]
    body = {"instances": instances, "parameters": {"methods": list(METHODS)}}
    answer = httpx.post(f"{server.base}/v1/models/tiny:explain", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    explanations = answer.json()["explanations"]
    for i, entry in enumerate(explanations):
        want = alone(explainer, batch[i], targets[i], regions[i])
        assert entry["target"]["class"] == int(want.classes[0])
        assert entry["target"]["class_name"] == NAMES[int(want.classes[0])]
        assert abs(entry["target"]["probability"] - float(want.probabilities[0])) <= TOLERANCE
        assert entry["target"]["region_area"] == pytest.approx(float(want.region_weights[0].sum()), abs=1e-4)
        np.testing.assert_allclose(entry["target"]["region_weights"], want.region_weights[0], atol=1e-6)
        for method in METHODS:
            np.testing.assert_allclose(np.asarray(entry["maps"][method]), want.maps[method][0], atol=TOLERANCE,
                                       err_msg=f"instance {i} {method}")
    assert explanations[1]["target"]["region_area"] == pytest.approx(17 * 12)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_v2_mask_and_box_inputs_equal_the_explainer_alone(server, explainer, protocol) -> None:
    module = tritonhttp if protocol == "http" else tritongrpc
    client = server.http() if protocol == "http" else server.grpc()
    batch = images(2, seed=3)
    masks = np.stack([disc(8, 8, 6), disc(16, 15, 5)])
    boxes = np.array([[0, 0, 12, 24], [5, 5, 19, 22]], dtype=np.int32)
    outputs = ["segmentation", "explained_class", "explained_probability", "region_weights", *METHODS]
    for region_name, datatype, region_array, regions in (("masks", "BOOL", masks, list(masks)),
                                                         ("boxes", "INT32", boxes, [tuple(b) for b in boxes.tolist()])):
        image_input = module.InferInput("image_tensor", list(batch.shape), "FP32")
        region_input = module.InferInput("region", list(region_array.shape), datatype)
        if protocol == "http":
            image_input.set_data_from_numpy(batch, binary_data=True)
            region_input.set_data_from_numpy(region_array, binary_data=True)
        else:
            image_input.set_data_from_numpy(batch)
            region_input.set_data_from_numpy(region_array)
        result = client.infer("tiny", [image_input, region_input],
                              outputs=[module.InferRequestedOutput(name) for name in outputs],
                              parameters={"target": "car"})
        want = explainer.explain(batch, "car", methods=METHODS, regions=regions)
        np.testing.assert_array_equal(result.as_numpy("segmentation"), want.predicted)
        np.testing.assert_array_equal(result.as_numpy("explained_class"), want.classes)
        np.testing.assert_allclose(result.as_numpy("explained_probability"), want.probabilities, atol=TOLERANCE)
        np.testing.assert_allclose(result.as_numpy("region_weights"), want.region_weights, atol=1e-6)
        for method in METHODS:
            np.testing.assert_allclose(result.as_numpy(method), want.maps[method], atol=TOLERANCE,
                                       err_msg=f"{protocol} {region_name} {method}")


def test_v2_region_parameter_and_metadata(server, explainer) -> None:
    client = server.http()
    batch = images(1, seed=4)
    tensor = tritonhttp.InferInput("image_tensor", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=True)
    result = client.infer("tiny", [tensor], outputs=[tritonhttp.InferRequestedOutput("fusion")],
                          parameters={"region": "2,2,22,12", "target": "sky"})
    want = explainer.explain(batch, "sky", methods=("fusion",), regions=(2, 2, 22, 12))
    np.testing.assert_allclose(result.as_numpy("fusion"), want.maps["fusion"], atol=TOLERANCE)
    metadata = client.get_model_metadata("tiny")
    names = [item["name"] for item in metadata["inputs"]]
    assert len(names) == len(set(names)), f"an input listed twice: {names}"  # one metadata entry per tensor name
    assert [(item["datatype"], item["shape"]) for item in metadata["inputs"] if item["name"] == "region"] == [
        ("BOOL", [-1, SIZE, SIZE])]  # the mask form; boxes and UINT8 masks are accepted under the same name
    config_inputs = [item["name"] for item in client.get_model_config("tiny")["input"]]
    assert sorted(config_inputs) == sorted(names)
    outputs = {item["name"] for item in metadata["outputs"]}
    assert {"segmentation", "region_weights", "explained_probability", *METHODS} <= outputs
    assert "probabilities" not in outputs


def test_bad_regions_get_400_naming_the_instance_and_the_good_ones_still_succeed(server, explainer) -> None:
    good = images(1, seed=5)[0]
    cases = [
        ({"data": good.tolist(), "region": [0, 0, 30, 10]}, ["instance 0", "outside"]),
        ({"data": good.tolist(), "region": {"mask": np.zeros((SIZE, SIZE), int).tolist()}}, ["instance 0", "all zeros"]),
        ({"data": good.tolist(), "region": {"mask": np.ones((5, 5), int).tolist()}}, ["instance 0", "[24, 24]"]),
        ({"data": good.tolist(), "region": "everywhere"}, ["instance 0", "predicted"]),
        ({"data": good.tolist(), "region": {"mask": {"b64": "bm90IGFuIGltYWdl"}}}, ["instance 0", "mask"]),
    ]
    for instance, words in cases:
        answer = httpx.post(f"{server.base}/v1/models/tiny:explain", json={"instances": [instance]}, timeout=60)
        assert answer.status_code == 400, (instance.get("region"), answer.text)
        assert all(word in answer.text for word in words), answer.text
    # A class the model predicts on no pixel has an empty predicted region: refused alone, its batch-mates explained.
    counts = np.bincount(explainer.explain(good[None], methods=("gradcam",)).predicted.ravel(), minlength=3)
    if (counts == 0).any():
        absent = int(np.flatnonzero(counts == 0)[0])
        answer = httpx.post(f"{server.base}/v1/models/tiny:explain", timeout=60,
                            json={"instances": [{"data": good.tolist(), "target": absent}]})
        assert answer.status_code == 400 and "empty" in answer.text, answer.text
    grpc_tensor = tritongrpc.InferInput("image_tensor", [1, 3, SIZE, SIZE], "FP32")
    grpc_tensor.set_data_from_numpy(good[None])
    region = tritongrpc.InferInput("region", [1, 3], "FP32")
    region.set_data_from_numpy(np.zeros((1, 3), np.float32))
    with pytest.raises(InferenceServerException, match=r"\[N, 4\]"):
        server.grpc().infer("tiny", [grpc_tensor, region], outputs=[tritongrpc.InferRequestedOutput("gradcam")])
    answer = httpx.post(f"{server.base}/v1/models/tiny:explain", json={"instances": [{"data": good.tolist()}]},
                        timeout=60)
    assert answer.status_code == 200, answer.text


def test_a_classifier_served_beside_it_refuses_regions_and_still_answers(server) -> None:
    image = images(1, seed=6)[0]
    answer = httpx.post(f"{server.base}/v1/models/clf:explain", timeout=60,
                        json={"instances": [{"data": image.tolist(), "region": [0, 0, 8, 8]}]})
    assert answer.status_code == 400 and "segmentation bundles only" in answer.text, answer.text
    tensor = tritongrpc.InferInput("image_tensor", [1, 3, SIZE, SIZE], "FP32")
    tensor.set_data_from_numpy(image[None])
    with pytest.raises(InferenceServerException, match="segmentation bundles only"):
        server.grpc().infer("clf", [tensor], outputs=[tritongrpc.InferRequestedOutput("gradcam")],
                            parameters={"region": "all"})
    answer = httpx.post(f"{server.base}/v1/models/clf:predict", json={"instances": [{"data": image.tolist()}]},
                        timeout=60)
    assert answer.status_code == 200 and len(answer.json()["predictions"][0]["probabilities"]) == 2, answer.text

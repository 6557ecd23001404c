"""`fusioncam serve` on a detection bundle, end to end: the real server in a subprocess on free 127.0.0.1 ports,
called with httpx (KServe v1) and tritonclient (v2 over HTTP with binary data, and over gRPC).

Every per-instance map that comes back is compared with Explainer.explain on the same image alone with the same
instance selection or named instances (1e-5); boxes, classes and scores with the detections of the PyTorch model's
own outputs.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

if importlib.util.find_spec("kserve") is None:  # not imported here: its protobuf symbols clash with tritonclient.grpc's
    pytest.skip("the serve extra (kserve) is not installed: pip install 'fusioncam[serve]'", allow_module_level=True)
httpx = pytest.importorskip("httpx", reason="httpx is not installed: pip install 'fusioncam[test]'")
tritonhttp = pytest.importorskip("tritonclient.http", reason="tritonclient is not installed: pip install 'fusioncam[test]'")
tritongrpc = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")

import fusioncam  # noqa: E402
from fusioncam.export.detection_export import export_onnx_detection  # noqa: E402
from fusioncam.tasks.detection import InstanceSelection  # noqa: E402
from tests.serve.server_process import running_server  # noqa: E402
from tests.support.detection_models import TARGET_TENSOR, TinyYolo, export_tiny_yolo, instance_scores  # noqa: E402
from tests.support.detection_models import random_images  # noqa: E402

pytestmark = pytest.mark.slow  # one server subprocess for the module

NAMES = ["person", "bike", "car"]
TOLERANCE = 1e-5
METHODS = ("gradcam", "fusion")


@pytest.fixture(scope="module")
def model() -> TinyYolo:
    return TinyYolo().eval()


@pytest.fixture(scope="module")
def bundle(model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("detserve")
    export_tiny_yolo(model, folder / "model.onnx")
    export_onnx_detection(folder / "model.onnx", folder / "det.fcam", TARGET_TENSOR, layout="yolov8",
                          class_names=NAMES)
    return folder / "det.fcam"


@pytest.fixture(scope="module")
def explainer(bundle):
    with fusioncam.Explainer(bundle, device="cpu") as alone:
        yield alone


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    log = tmp_path_factory.mktemp("detserve-log") / "server.log"
    with running_server([str(bundle)], ["det"], log, "--max-batch-size", "8", "--max-latency-ms", "200") as process:
        yield process


def _check_instances(entries: list[dict], want, image: int = 0) -> None:
    mine = np.flatnonzero(want.image_index == image)
    assert len(entries) == len(mine)
    for entry, row in zip(entries, mine):
        assert entry["class"] == int(want.classes[row]) and entry["anchor"] == int(want.anchors[row])
        assert entry["class_name"] == NAMES[entry["class"]]
        assert abs(entry["score"] - float(want.probabilities[row])) <= TOLERANCE
        np.testing.assert_allclose(entry["box"], want.boxes[row], atol=1e-4)
        for method in METHODS:
            np.testing.assert_allclose(np.asarray(entry["maps"][method]), want.maps[method][row], atol=TOLERANCE,
                                       err_msg=f"instance row {row} {method}")


def test_v1_predict_gives_the_models_own_detections(server, model) -> None:
    batch = random_images(2, seed=21)
    body = {"instances": [{"data": image.tolist()} for image in batch], "parameters": {"min_score": 0.3,
                                                                                       "max_instances": 4}}
    answer = httpx.post(f"{server.base}/v1/models/det:predict", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    with torch.no_grad():
        boxes, scores = instance_scores(model(torch.from_numpy(batch)), False)
    from torchvision.ops import batched_nms

    for i, prediction in enumerate(answer.json()["predictions"]):
        best, classes = scores[i].max(dim=1)
        keep = torch.nonzero(best >= 0.3).flatten()
        kept = keep[batched_nms(boxes[i, keep], best[keep], classes[keep], 0.7)][:4]
        assert prediction["anchors"] == kept.tolist()
        assert prediction["classes"] == classes[kept].tolist()
        assert prediction["class_names"] == [NAMES[c] for c in classes[kept].tolist()]
        np.testing.assert_allclose(prediction["scores"], best[kept].numpy(), atol=1e-6)
        np.testing.assert_allclose(prediction["boxes"], boxes[i, kept].numpy(), atol=1e-4)


def test_v1_explain_selected_and_named_instances_equal_the_explainer_alone(server, explainer) -> None:
    batch = random_images(3, seed=22)
    named = [5, {"class": "car", "box": [4, 6, 30, 40]}, ["bike", [20, 20, 60, 50]]]
    instances = [{"data": batch[0].tolist()},
                 {"data": batch[1].tolist(), "instances": named},
                 {"data": batch[2].tolist()}]
    body = {"instances": instances, "parameters": {"methods": list(METHODS), "min_score": 0.3, "max_instances": 3}}
    answer = httpx.post(f"{server.base}/v1/models/det:explain", json=body, timeout=180)
    assert answer.status_code == 200, answer.text
    explanations = answer.json()["explanations"]
    selection = InstanceSelection(min_score=0.3, max_instances=3)
    for i in (0, 2):
        want = explainer.explain(batch[i : i + 1], methods=METHODS, instances=selection)
        assert len(want.classes) > 0
        _check_instances(explanations[i]["instances"], want)
    want = explainer.explain(batch[1:2], methods=METHODS,
                             instances=[[5, ("car", (4, 6, 30, 40)), ("bike", (20, 20, 60, 50))]])
    _check_instances(explanations[1]["instances"], want)
    assert [e["class_name"] for e in explanations[1]["instances"]][1:] == ["car", "bike"]


def test_v1_bad_instances_are_specific_errors(server) -> None:
    image = random_images(1, seed=23)[0].tolist()
    cases = [({"instances": [{"data": image, "instances": [10_000]}]}, "anchor 10000 is out of range"),
             ({"instances": [{"data": image}], "parameters": {"target": 1}}, "leave out 'target'"),
             ({"instances": [{"data": image, "instances": [{"class": "plane", "box": [0, 0, 5, 5]}]}]},
              "unknown class 'plane'"),
             ({"instances": [{"data": image, "instances": [{"class": 0, "box": [0, 0, 90, 5]}]}]}, "not inside"),
             ({"instances": [{"data": image}], "parameters": {"min_score": 2}}, "min_score must be in [0, 1]")]
    for body, needle in cases:
        answer = httpx.post(f"{server.base}/v1/models/det:explain", json=body, timeout=60)
        assert answer.status_code == 400, (body, answer.text)
        assert needle in answer.text, answer.text
    empty = httpx.post(f"{server.base}/v1/models/det:explain", timeout=60,
                       json={"instances": [{"data": image}], "parameters": {"min_score": 1.0}})
    assert empty.status_code == 200, empty.text
    assert empty.json()["explanations"] == [{"instances": []}]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_v2_padded_instance_tensors_equal_the_explainer_alone(server, explainer, protocol) -> None:
    module = tritonhttp if protocol == "http" else tritongrpc
    client = (tritonhttp.InferenceServerClient(f"127.0.0.1:{server.http_port}", network_timeout=180)
              if protocol == "http" else tritongrpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}"))
    batch = random_images(2, seed=24)
    image_input = module.InferInput("image_tensor", list(batch.shape), "FP32")
    if protocol == "http":
        image_input.set_data_from_numpy(batch, binary_data=True)
    else:
        image_input.set_data_from_numpy(batch)
    outputs = ["boxes", "scores", "classes", "class_names", "anchors", "instance_count", *METHODS]
    result = client.infer("det", [image_input], outputs=[module.InferRequestedOutput(name) for name in outputs],
                          parameters={"min_score": 0.3, "max_instances": 4})
    want = explainer.explain(batch, methods=METHODS, instances=InstanceSelection(min_score=0.3, max_instances=4))
    counts = np.bincount(want.image_index, minlength=2)
    np.testing.assert_array_equal(result.as_numpy("instance_count"), counts)
    width = int(counts.max())
    classes = result.as_numpy("classes")
    assert classes.shape == (2, width)
    for name in METHODS:
        assert result.as_numpy(name).shape == (2, width, *batch.shape[2:])
    for i in range(2):
        mine = np.flatnonzero(want.image_index == i)
        k = len(mine)
        np.testing.assert_array_equal(classes[i, :k], want.classes[mine])
        np.testing.assert_array_equal(classes[i, k:], -1)
        np.testing.assert_array_equal(result.as_numpy("anchors")[i, :k], want.anchors[mine])
        np.testing.assert_allclose(result.as_numpy("scores")[i, :k], want.probabilities[mine], atol=TOLERANCE)
        np.testing.assert_allclose(result.as_numpy("boxes")[i, :k], want.boxes[mine], atol=1e-4)
        names = [n.decode() if isinstance(n, bytes) else n for n in result.as_numpy("class_names")[i]]
        assert names == [NAMES[c] for c in want.classes[mine]] + [""] * (width - k)
        for method in METHODS:
            maps = result.as_numpy(method)
            np.testing.assert_allclose(maps[i, :k], want.maps[method][mine], atol=TOLERANCE, err_msg=method)
            assert not maps[i, k:].any()
    # named instances: 2 for the first image, 1 for the second (padded to 2)
    named = client.infer("det", [image_input], outputs=[module.InferRequestedOutput(n) for n in
                                                        ("anchors", "instance_count", "class_names", "fusion")],
                         parameters={"instances": json.dumps([[7, 3], [["car", [0, 0, 32, 32]]]])})
    want = explainer.explain(batch, methods=("fusion",), instances=[[7, 3], [("car", (0, 0, 32, 32))]])
    np.testing.assert_array_equal(named.as_numpy("anchors"), [[7, 3], [want.anchors[2], -1]])
    np.testing.assert_allclose(named.as_numpy("fusion")[0], want.maps["fusion"][:2], atol=TOLERANCE)
    np.testing.assert_allclose(named.as_numpy("fusion")[1, 0], want.maps["fusion"][2], atol=TOLERANCE)
    np.testing.assert_array_equal(named.as_numpy("instance_count"), [2, 1])
    assert not named.as_numpy("fusion")[1, 1].any()
    assert [n.decode() if isinstance(n, bytes) else n for n in named.as_numpy("class_names")[1]] == ["car", ""]


def test_v2_metadata_lists_the_instance_outputs(server) -> None:
    metadata = httpx.get(f"{server.base}/v2/models/det", timeout=30).json()
    shapes = {o["name"]: o["shape"] for o in metadata["outputs"]}
    assert shapes["boxes"] == [-1, -1, 4] and shapes["instance_count"] == [-1]
    assert shapes["fusion"] == [-1, -1, 64, 64]

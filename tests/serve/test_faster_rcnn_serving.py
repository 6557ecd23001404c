"""`fusioncam serve` on a torchvision Faster R-CNN detection bundle (seeded fasterrcnn_mobilenet_v3_large_fpn at
128x128, the bundle tests/export/test_faster_rcnn.py checks against torchvision): the real server in a subprocess on
free 127.0.0.1 ports, called with httpx (KServe v1) and tritonclient (v2 over HTTP, binary data).

Boxes, classes, scores and every per-instance map that comes back equal Explainer.explain in this process on the
same images with the same selection (maps within 1e-5), and the v1 predict's detections are the bundle's proposal
slots read from its explain graph.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

if importlib.util.find_spec("kserve") is None:  # not imported here: its protobuf symbols clash with tritonclient.grpc's
    pytest.skip("the serve extra (kserve) is not installed: pip install 'fusioncam[serve]'", allow_module_level=True)
httpx = pytest.importorskip("httpx", reason="httpx is not installed: pip install 'fusioncam[test]'")
tritonhttp = pytest.importorskip("tritonclient.http", reason="tritonclient is not installed: pip install 'fusioncam[test]'")

import fusioncam  # noqa: E402
from fusioncam.bundle import load_bundle  # noqa: E402
from fusioncam.tasks.detection import InstanceSelection, model_iou_threshold, nms_instances  # noqa: E402
from tests.serve.server_process import running_server  # noqa: E402
from tests.support.faster_rcnn_models import SIZE, exported_bundle, faster_rcnn, normalised  # noqa: E402

pytestmark = pytest.mark.slow  # a two-stage export (shared with tests/dataset/test_faster_rcnn_dataset.py) and a server
METHODS = ("gradcam", "fusion")
TOLERANCE = 1e-5
SELECTION = InstanceSelection(min_score=0.0, max_instances=1)


@pytest.fixture(scope="module")
def bundle():
    """The default target: the two FPN levels the RoI head pools (a several-layer bundle; answers hold the maps
    combined over the levels, as Explainer.explain's)."""
    return exported_bundle(None)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Two normalised random images [2, 3, H, W], as the model's transform gives them."""
    return normalised(faster_rcnn(), np.random.default_rng(5).random((2, 3, *SIZE)).astype(np.float32)).numpy()


@pytest.fixture(scope="module")
def want(bundle, images):
    """Explainer.explain in this process: each image's best instance, Grad-CAM and Fusion-CAM (fast: 8 channels)."""
    with fusioncam.Explainer(bundle, device="cpu", max_channels=8) as explainer:
        return explainer.explain(images, methods=METHODS, instances=SELECTION)


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    log = tmp_path_factory.mktemp("frcnn-serve-log") / "server.log"
    with running_server([str(bundle)], ["frcnn"], log, "--fast", "8") as process:
        yield process


def test_v1_predict_and_explain_equal_the_explainer(server, bundle, images, want) -> None:
    """v1 :predict gives each image's default detection (slot, class, score, box) as the Explainer's host selection
    over the bundle's slots picks it (one instance per image, so the NMS threshold plays no part here: the default
    selection at the model's own threshold is checked against torchvision's detections in
    tests/export/test_faster_rcnn.py); v1 :explain gives the same instances with each method's map equal to the
    Explainer's."""
    body = {"instances": [{"data": image.tolist()} for image in images],
            "parameters": {"min_score": SELECTION.min_score, "max_instances": SELECTION.max_instances}}
    predicted = httpx.post(f"{server.base}/v1/models/frcnn:predict", json=body, timeout=120)
    assert predicted.status_code == 200, predicted.text
    import onnxruntime as ort

    session = ort.InferenceSession(str(bundle / "explain.onnx"), providers=["CPUExecutionProvider"])
    manifest = load_bundle(bundle).manifest
    assert manifest.nms_iou_threshold == 0.5
    n = len(images)
    boxes, scores = session.run(["detection_boxes", "detection_scores"], {
        "input": images, "anchor": np.zeros(n, np.int64), "target": np.zeros(n, np.int64),
        "reference_box": np.array([[0, 0, *SIZE[::-1]]] * n, np.float32), "instance_image": np.arange(n)})
    for i, prediction in enumerate(predicted.json()["predictions"]):
        chosen = nms_instances(boxes[i], scores[i], SELECTION, model_iou_threshold(manifest))
        mine = np.flatnonzero(want.image_index == i)
        assert prediction["anchors"] == [a for a, _ in chosen] == want.anchors[mine].tolist()
        assert prediction["classes"] == [c for _, c in chosen] == want.classes[mine].tolist()
        np.testing.assert_allclose(prediction["scores"], [scores[i, a, c] for a, c in chosen], atol=1e-6)
        np.testing.assert_allclose(prediction["boxes"], want.boxes[mine], atol=1e-4)

    body["parameters"]["methods"] = list(METHODS)
    explained = httpx.post(f"{server.base}/v1/models/frcnn:explain", json=body, timeout=300)
    assert explained.status_code == 200, explained.text
    for i, explanation in enumerate(explained.json()["explanations"]):
        mine = np.flatnonzero(want.image_index == i)
        assert len(explanation["instances"]) == len(mine) == SELECTION.max_instances
        for entry, row in zip(explanation["instances"], mine):
            assert entry["anchor"] == int(want.anchors[row]) and entry["class"] == int(want.classes[row])
            assert abs(entry["score"] - float(want.scores[row])) <= TOLERANCE
            np.testing.assert_allclose(entry["box"], want.boxes[row], atol=1e-4)
            for method in METHODS:
                got = np.asarray(entry["maps"][method])
                assert float(np.abs(want.maps[method][row]).max()) > 0
                np.testing.assert_allclose(got, want.maps[method][row], atol=TOLERANCE, err_msg=f"row {row} {method}")


def test_v2_instance_tensors_equal_the_explainer(server, images, want) -> None:
    """v2 over HTTP (tritonclient, binary data): boxes [N, I, 4], scores and classes [N, I], slots, and one
    [N, I, H, W] map per method, equal to the Explainer's rows."""
    client = tritonhttp.InferenceServerClient(f"127.0.0.1:{server.http_port}", network_timeout=300)
    image_input = tritonhttp.InferInput("image_tensor", list(images.shape), "FP32")
    image_input.set_data_from_numpy(images, binary_data=True)
    outputs = ["boxes", "scores", "classes", "anchors", "instance_count", *METHODS]
    result = client.infer("frcnn", [image_input], outputs=[tritonhttp.InferRequestedOutput(name) for name in outputs],
                          parameters={"min_score": SELECTION.min_score, "max_instances": SELECTION.max_instances})
    count = SELECTION.max_instances
    np.testing.assert_array_equal(result.as_numpy("instance_count"), [count, count])
    assert result.as_numpy("boxes").shape == (2, count, 4)
    for method in METHODS:
        assert result.as_numpy(method).shape == (2, count, *SIZE)
    for i in range(2):
        mine = np.flatnonzero(want.image_index == i)
        np.testing.assert_array_equal(result.as_numpy("anchors")[i], want.anchors[mine])
        np.testing.assert_array_equal(result.as_numpy("classes")[i], want.classes[mine])
        np.testing.assert_allclose(result.as_numpy("scores")[i], want.scores[mine], atol=TOLERANCE)
        np.testing.assert_allclose(result.as_numpy("boxes")[i], want.boxes[mine], atol=1e-4)
        for method in METHODS:
            np.testing.assert_allclose(result.as_numpy(method)[i], want.maps[method][mine], atol=TOLERANCE,
                                       err_msg=method)

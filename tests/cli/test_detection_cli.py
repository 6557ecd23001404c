"""`fusioncam explain` on a detection bundle (a TinyYolo written as a plain ONNX file in the Ultralytics layout):
results.json lists the instances Explainer.explain finds on the same preprocessed images, the .npy maps equal its
maps, and the drawn pictures carry each box in its class colour along the box's edges, where the box is."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from fusioncam import Explainer
from fusioncam.cli.main import main
from fusioncam.export.detection_export import export_onnx_detection
from fusioncam.images import preprocess, read_rgb
from fusioncam.report.detection_pictures import box_thickness, class_color, scaled_box
from fusioncam.tasks.detection import InstanceSelection
from tests.support.detection_models import TARGET_TENSOR, TinyYolo, export_tiny_yolo

NAMES = ["person", "bike", "car"]
METHODS = ("gradcam", "fusion")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("detcli")
    export_tiny_yolo(TinyYolo().eval(), folder / "model.onnx")
    export_onnx_detection(folder / "model.onnx", folder / "det.fcam", TARGET_TENSOR, layout="yolov8",
                          class_names=NAMES)
    return folder / "det.fcam"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Two smooth random photos at another size than the model's 64x64 (boxes are scaled to them)."""
    folder = tmp_path_factory.mktemp("detcli-photos")
    paths = []
    for i, (h, w) in enumerate(((96, 128), (80, 80))):
        rng = np.random.default_rng(30 + i)
        small = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
        photo = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        paths.append(folder / f"photo{i}.png")
        cv2.imwrite(str(paths[-1]), photo)
    return paths


def test_explain_writes_instances_maps_and_boxes_where_they_are(bundle, photos, tmp_path) -> None:
    out = tmp_path / "out"
    code = main(["explain", *map(str, photos), "--model", str(bundle), "--out", str(out), "--device", "cpu",
                 "--methods", ",".join(METHODS), "--min-score", "0.3", "--max-instances", "3"])
    assert code == 0
    document = json.loads((out / "results.json").read_text())
    assert len(document["images"]) == 2
    selection = InstanceSelection(min_score=0.3, max_instances=3)
    with Explainer(bundle, device="cpu") as explainer:
        size = explainer.bundle.manifest.input_size
        for record, path in zip(document["images"], photos):
            rgb = read_rgb(path)
            want = explainer.explain(preprocess(rgb, size, (0, 0, 0), (1, 1, 1))[None], methods=METHODS,
                                     instances=selection)
            instances = record["instances"]
            assert len(instances) == len(want.classes) == 3
            assert record["class_name"] == "3 detections"
            for k, entry in enumerate(instances):
                assert entry["anchor"] == int(want.anchors[k]) and entry["class_index"] == int(want.classes[k])
                assert entry["class_name"] == NAMES[entry["class_index"]]
                assert entry["score"] == pytest.approx(float(want.probabilities[k]), abs=1e-6)
                np.testing.assert_allclose(entry["box"], want.boxes[k], atol=1e-4)
                for method in METHODS:
                    saved = np.load(out / entry["files"][f"{method}_npy"])
                    np.testing.assert_allclose(saved, want.maps[method][k], atol=1e-5)
                panel = cv2.imread(str(out / entry["files"]["panel"]))
                assert panel is not None and panel.shape[1] > 3 * panel.shape[0] // 2  # image | box | maps
            picture = cv2.cvtColor(cv2.imread(str(out / record["files"]["panel"])), cv2.COLOR_BGR2RGB)
            assert picture.shape == rgb.shape
            _assert_boxes_drawn(picture, rgb, instances, size)
    page = (out / "index.html").read_text()
    assert "photo0_instance2_panel.png" in page and "3 detections" in page


def _assert_boxes_drawn(picture: np.ndarray, photo: np.ndarray, instances: list, size) -> None:
    """The last-drawn box's bottom and right edges are its class colour over their length (earlier boxes and the
    label tags can cover other edges), and the box's inside, away from every edge and tag, is the photo's pixels."""
    last = instances[-1]
    x0, y0, x1, y1 = scaled_box(last["box"], size, picture.shape)
    color = np.array(class_color(last["class_index"], len(NAMES)))
    bottom = picture[y1, x0:x1 + 1]
    right = picture[y0:y1 + 1, x1]
    assert (np.abs(bottom.astype(int) - color).max(axis=1) == 0).mean() > 0.9, (bottom, color)
    assert (np.abs(right.astype(int) - color).max(axis=1) == 0).mean() > 0.7, (right, color)
    drawn = np.zeros(picture.shape[:2], bool)
    t = box_thickness(picture.shape)
    for entry in instances:
        a0, b0, a1, b1 = scaled_box(entry["box"], size, picture.shape)
        drawn[max(b0 - 40, 0):b1 + t + 1, max(a0 - t, 0):max(a1, a0 + 120) + t + 1] = True  # box and tag, generously
    untouched = ~drawn
    assert untouched.any()
    np.testing.assert_array_equal(picture[untouched], photo[untouched])


def test_detection_options_are_refused_where_they_do_not_apply(bundle, photos, tmp_path, capsys) -> None:
    code = main(["explain", str(photos[0]), "--model", str(bundle), "--out", str(tmp_path / "a"), "--device", "cpu",
                 "--target", "1"])
    assert code != 0
    assert "--target does not apply to a detection bundle" in capsys.readouterr().err
    code = main(["explain", str(photos[0]), "--model", str(bundle), "--out", str(tmp_path / "b"), "--device", "cpu",
                 "--methods", "gradcam", "--min-score", "1.0"])
    assert code == 0  # no detection at a score of 1: an empty result, not an error
    record = json.loads((tmp_path / "b" / "results.json").read_text())["images"][0]
    assert record["instances"] == [] and record["class_name"] == "0 detections"


STEP = 512


def _matched_scores(model: TinyYolo, inputs: np.ndarray, cls: int, reference) -> np.ndarray:
    """D-RISE's matched score of each input [M, 3, H, W] by the PyTorch model itself, in NumPy: max over anchors of
    IoU(box_a, reference) x score[a, cls]."""
    import torch

    from tests.support.detection_models import instance_scores

    with torch.no_grad():
        boxes, scores = instance_scores(model(torch.from_numpy(inputs.astype(np.float32))), False)
    boxes, scores = boxes.numpy().astype(np.float64), scores.numpy().astype(np.float64)[..., cls]
    ref = np.asarray(reference, np.float64)
    low, high = np.maximum(boxes[..., :2], ref[:2]), np.minimum(boxes[..., 2:], ref[2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=-1)
    union = np.prod(boxes[..., 2:] - boxes[..., :2], axis=-1) + np.prod(ref[2:] - ref[:2]) - inter
    return (inter / union * scores).max(axis=1)


def _reference_metrics(model: TinyYolo, image: np.ndarray, cam: np.ndarray, cls: int, reference) -> dict:
    """AD, IC, deletion and insertion AUC of one instance, written from the protocols (metrics.md) in NumPy."""
    y = _matched_scores(model, image[None], cls, reference)[0]
    o = _matched_scores(model, (image * cam)[None], cls, reference)[0]
    plane = cam.size
    counts = np.append(np.arange(0, plane, STEP), plane)
    ranks = np.empty(plane, np.int64)
    ranks[np.argsort(-cam.ravel(), kind="stable")] = np.arange(plane)
    changed = np.stack([(ranks < k).reshape(cam.shape) for k in counts]).astype(np.float32)[:, None]
    blurred = np.stack([cv2.GaussianBlur(c, (51, 51), 50.0, borderType=cv2.BORDER_REFLECT_101) for c in image])
    deletion = _matched_scores(model, image[None] * (1 - changed), cls, reference)
    insertion = _matched_scores(model, image[None] * changed + blurred[None] * (1 - changed), cls, reference)
    x = counts / plane
    auc = lambda p: float(((p[1:] + p[:-1]) * 0.5 * np.diff(x)).sum())  # noqa: E731
    return {"average_drop": 100 * max(0.0, y - o) / y, "increase_in_confidence": 100.0 * (o > y),
            "deletion_auc": auc(deletion), "insertion_auc": auc(insertion)}


def test_evaluate_scores_each_instance_by_its_matched_score(bundle, photos, tmp_path) -> None:
    from fusioncam.images import load_batch

    out = tmp_path / "report"
    code = main(["evaluate", *map(str, photos), "--model", str(bundle), "--out", str(out), "--device", "cpu",
                 "--methods", ",".join(METHODS), "--step", str(STEP), "--min-score", "0.3", "--max-instances", "2"])
    assert code == 0
    record = json.loads((out / "results.json").read_text())
    rows = record["images"]
    assert len(rows) == 4 and record["score"] == "matched score"
    model = TinyYolo().eval()
    selection = InstanceSelection(min_score=0.3, max_instances=2)
    with Explainer(bundle, device="cpu") as explainer:
        manifest = explainer.bundle.manifest
        for i, path in enumerate(photos):
            image = load_batch([path], manifest.input_size, manifest.mean, manifest.std)[0]
            want = explainer.explain(image, methods=METHODS, instances=selection)
            for k in range(2):
                row = rows[2 * i + k]
                assert row["input"] == str(path) and row["name"] == f"photo{i} instance {k}"
                assert row["class_index"] == int(want.classes[k]) and row["anchor"] == int(want.anchors[k])
                for method in METHODS:
                    expected = _reference_metrics(model, image[0], want.maps[method][k], int(want.classes[k]),
                                                  want.reference_boxes[k])
                    got = row["metrics"][method]
                    for metric, value in expected.items():
                        assert got[metric] == pytest.approx(value, abs=2e-4 if metric == "average_drop" else 1e-5), \
                            (i, k, method, metric)
    assert "one row per instance" in (out / "metrics.md").read_text()
    assert (out / "curves.png").exists() and (out / "metrics.csv").exists()

"""Detection bundles from plain ONNX files given only their layout: each instance's gradients against torch autograd
(<= 1e-4 relative), the scorer's D-RISE similarity against an eager one, all seven methods against the eager
reference written from the algorithm page, a known-answer detector, the default selection against torchvision's
NMS, and the errors and the empty answer."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from fusioncam import Explainer
from fusioncam.errors import InputError, ModelLoadError
from fusioncam.export.detection_export import export_onnx_detection
from fusioncam.tasks.detection import InstanceSelection
from tests.support.detection_models import (METHODS, SIZE, TARGET_MODULE, TARGET_TENSOR, TinyYolo, TwoRegionDetector,
                                            export_tiny_yolo, instance_scores, random_images)
from tests.support.torch_reference_detection import detection_methods, iou


@pytest.fixture(scope="module", params=["yolov8", "yolov5"])
def yolo(request, tmp_path_factory):
    """(model, layout, bundle path) of a TinyYolo written as a plain ONNX file in that layout."""
    layout = request.param
    folder = tmp_path_factory.mktemp(layout)
    model = TinyYolo(objectness=layout == "yolov5").eval()
    export_tiny_yolo(model, folder / "model.onnx")
    export_onnx_detection(folder / "model.onnx", folder / "bundle", TARGET_TENSOR, layout=layout)
    return model, layout, folder / "bundle"


def _torch_gradients(model, images: np.ndarray, rows: list[tuple[int, int, int]], objectness: bool):
    """(A, d s[anchor, class] / dA) per row (image, anchor, class) by torch autograd on the target module."""
    layer = model.get_submodule(TARGET_MODULE)
    grads, acts = [], []
    for image, anchor, cls in rows:
        captured = []
        handle = layer.register_forward_hook(lambda m, i, o: captured.append(o))
        try:
            _, scores = instance_scores(model(torch.from_numpy(images[image : image + 1])), objectness)
            (grad,) = torch.autograd.grad(scores[0, anchor, cls], captured[0])
        finally:
            handle.remove()
        grads.append(grad[0].numpy())
        acts.append(captured[0][0].detach().numpy())
    return np.stack(acts), np.stack(grads)


def test_instance_gradients_match_torch_autograd(yolo) -> None:
    """Every default instance of two images (each row its own anchor and class): the explain graph's activations and
    gradients of that instance's score against autograd of the same score."""
    model, layout, bundle = yolo
    images = random_images(2)
    session = ort.InferenceSession(str(bundle / "explain.onnx"), providers=["CPUExecutionProvider"])
    with Explainer(bundle, device="cpu") as explainer:
        result = explainer.explain(images, methods="gradcam", instances=InstanceSelection(min_score=0.0,
                                                                                          max_instances=4))
    assert len(result.anchors) == 8 and set(result.image_index.tolist()) == {0, 1}
    rows = list(zip(result.image_index.tolist(), result.anchors.tolist(), result.classes.tolist()))
    index = result.image_index
    outputs = session.run(["activations", "gradients", "logits"], {
        "input": images[index], "anchor": result.anchors, "target": result.classes,
        "reference_box": result.reference_boxes, "instance_image": index})
    want_a, want_g = _torch_gradients(model, images, rows, layout == "yolov5")
    assert np.abs(want_g).max() > 0
    np.testing.assert_allclose(outputs[0], want_a, rtol=1e-4, atol=1e-5)
    scale = np.abs(want_g).reshape(len(rows), -1).max(axis=1)
    error = np.abs(outputs[1] - want_g).reshape(len(rows), -1).max(axis=1) / scale
    assert error.max() <= 1e-4, f"relative gradient errors {error}"
    with torch.no_grad():
        _, scores = instance_scores(model(torch.from_numpy(images)), layout == "yolov5")
    np.testing.assert_allclose(result.scores, scores[index, result.anchors, result.classes].numpy(), rtol=1e-5)


def test_scorer_returns_the_best_match_similarity(yolo) -> None:
    """The scorer's output for masked images, classes and reference boxes: max_a IoU(box_a, ref) x s[a, class]."""
    model, layout, bundle = yolo
    rng = np.random.default_rng(5)
    images = random_images(4, seed=2) * (rng.random((4, 1, *SIZE)) > 0.4).astype(np.float32)
    classes = np.array([0, 1, 2, 1], np.int64)
    refs = np.array([[0, 0, 32, 32], [10, 5, 60, 40], [30, 30, 64, 64], [0, 0, 64, 64]], np.float32)
    session = ort.InferenceSession(str(bundle / "scorer.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["score"], {"input": images, "target": classes, "reference_box": refs})[0]
    with torch.no_grad():
        boxes, scores = instance_scores(model(torch.from_numpy(images)), layout == "yolov5")
    want = [float((iou(boxes[i], torch.from_numpy(refs[i])) * scores[i, :, classes[i]].double()).max())
            for i in range(4)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_seven_methods_match_the_eager_reference(yolo) -> None:
    """Three instances of two images in one call (an anchor, a (class, box) pair, an anchor): every map within 1e-4
    of the eager reference with the instance's gradient and D-RISE's similarity for every masked score."""
    model, layout, bundle = yolo
    images = random_images(2, seed=7)
    with Explainer(bundle, device="cpu", batch_size=13) as explainer:
        result = explainer.explain(images, methods=METHODS, instances=[[3, (1, (8, 4, 40, 30))], [70]])
    layer = model.get_submodule(TARGET_MODULE)
    for row in range(3):
        image = int(result.image_index[row])
        want = detection_methods(model, layer, images[image], int(result.anchors[row]), int(result.classes[row]),
                                 result.reference_boxes[row], objectness=layout == "yolov5")
        for method in METHODS:
            error = float(np.abs(result.maps[method][row] - want[method]).max())
            assert error <= 1e-4, f"row {row}, {method}: max abs difference {error:.2e} from the eager reference"
            assert float(want[method].max()) > 0, f"row {row}, {method}: the reference map is all zeros"
        for name, value in want["betas"].items():
            assert abs(float(result.betas[name][row]) - value) <= 1e-4, (row, name)


def test_known_answer_each_instance_peaks_in_its_own_region(tmp_path) -> None:
    """Anchor 0's score sees only the top-left quadrant, anchor 1's only the bottom-right: every method's map of
    each instance peaks in its own quadrant and is larger there on average; the gradient maps have all their mass
    there. (The Score-CAM family separates less: its softmax runs over similarities in [0, 1].)"""
    size = 32
    torch.onnx.export(TwoRegionDetector(size).eval(), torch.zeros(1, 3, size, size), str(tmp_path / "two.onnx"),
                      input_names=["images"], dynamic_axes={"images": {0: "batch"}}, dynamo=False)
    export_onnx_detection(tmp_path / "two.onnx", tmp_path / "bundle", "/relu/Relu_output_0", layout="yolov8")
    images = random_images(1, seed=3, size=(size, size)) + 0.1
    with Explainer(tmp_path / "bundle", device="cpu") as explainer:
        result = explainer.explain(images, methods=METHODS, instances=[[0, 1]])
    half = size // 2
    for method in METHODS:
        for row, (own, other) in enumerate([((slice(0, half),) * 2, (slice(half, size),) * 2),
                                            ((slice(half, size),) * 2, (slice(0, half),) * 2)]):
            heat = result.maps[method][row]
            if method == "groupcam" and heat.max() == 0:  # its blurred baseline keeps each quadrant's mean, so
                continue  # its score gains can all be <= 0 here: an empty map, which at least peaks nowhere else
            assert heat[own].max() == heat.max() > heat[other].max(), (method, row)
            assert heat[own].mean() > heat[other].mean(), (method, row)
            if method in ("gradcam", "gradcam++", "xgradcam"):  # the other region's gradient is exactly zero
                assert heat[own].sum() > 0.99 * heat.sum(), (method, row)


def test_default_instances_are_torchvisions_nms_of_the_detections(yolo) -> None:
    """The default selection: best class per anchor above min_score, class-wise NMS (torchvision.ops.batched_nms
    as the peer), highest scores first, at most max_instances."""
    from torchvision.ops import batched_nms

    model, layout, bundle = yolo
    images = random_images(2, seed=11)
    selection = InstanceSelection(min_score=0.3, max_instances=6, iou_threshold=0.5)
    with Explainer(bundle, device="cpu") as explainer:
        result = explainer.explain(images, methods="gradcam", instances=selection)
        prediction = explainer.predict(images)
    with torch.no_grad():
        boxes, scores = instance_scores(model(torch.from_numpy(images)), layout == "yolov5")
    np.testing.assert_allclose(prediction.logits, scores.numpy(), rtol=1e-5, atol=1e-6)  # every anchor's scores
    for image in range(2):
        best, classes = scores[image].max(dim=1)
        keep = torch.nonzero(best >= 0.3).flatten()
        kept = keep[batched_nms(boxes[image, keep], best[keep], classes[keep], 0.5)][:6]
        mine = result.image_index == image
        assert result.anchors[mine].tolist() == kept.tolist()
        assert result.classes[mine].tolist() == classes[kept].tolist()
        np.testing.assert_allclose(result.boxes[mine], boxes[image, kept].numpy(), rtol=1e-5, atol=1e-4)


def test_bad_instances_and_layouts_are_refused_and_no_detection_is_empty(yolo, tmp_path) -> None:
    model, layout, bundle = yolo
    images = random_images(1)
    with Explainer(bundle, device="cpu") as explainer:
        with pytest.raises(InputError, match="anchor 80 is out of range; the model has 80 anchors"):
            explainer.explain(images, instances=[[80]])
        with pytest.raises(InputError, match="class 3 is not one the model has"):
            explainer.explain(images, instances=[[(3, (0, 0, 10, 10))]])
        with pytest.raises(InputError, match="unknown class 'cat'"):
            explainer.explain(images, instances=[[("cat", (0, 0, 10, 10))]])
        with pytest.raises(InputError, match="not inside the 64x64 input image"):
            explainer.explain(images, instances=[[(0, (0, 0, 70, 10))]])
        with pytest.raises(InputError, match="instances= must be"):
            explainer.explain(images, instances=[[1], [2]])
        with pytest.raises(InputError, match="targets= and regions= do not apply"):
            explainer.explain(images, targets=[1])
        empty = explainer.explain(images, methods=("gradcam", "fusion"), instances=InstanceSelection(min_score=1.0))
        assert empty.maps["fusion"].shape == (0, *SIZE) and empty.boxes.shape == (0, 4) and len(empty.classes) == 0
    other = "yolov5" if layout == "yolov8" else "yolov8"
    export_tiny_yolo(model, tmp_path / "m.onnx")
    with pytest.raises(ModelLoadError, match=f"read in layout '{other}', the class scores .* not in that layout"):
        export_onnx_detection(tmp_path / "m.onnx", tmp_path / "b", TARGET_TENSOR, layout=other)


def test_known_answer_on_two_levels_each_instance_peaks_in_its_own_region(tmp_path) -> None:
    """Two levels side by side (a feature pyramid's shape: neither computed from the other), anchor 0 reading level
    A (top-left quadrant), anchor 1 level B (bottom-right, half resolution), one bundle with both levels: every
    method's combined map of each instance peaks in its own quadrant. Each level's weight is its attribution to the
    instance's score, so the level an instance does not read weighs 0; its Score-CAM map there, a full [0, 1] map of
    that level's masks, peaks in the other quadrant and would otherwise count as much as the instance's own."""
    from tests.support.detection_models import TwoLevelRegionDetector

    size = 32
    torch.onnx.export(TwoLevelRegionDetector(size).eval(), torch.zeros(1, 3, size, size), str(tmp_path / "two.onnx"),
                      input_names=["images"], dynamic_axes={"images": {0: "batch"}}, dynamo=False)
    levels = ["/relu_a/Relu_output_0", "/relu_b/Relu_output_0"]
    export_onnx_detection(tmp_path / "two.onnx", tmp_path / "bundle", levels, layout="yolov8")
    images = random_images(1, seed=3, size=(size, size)) + 0.1
    with Explainer(tmp_path / "bundle", device="cpu") as explainer:
        result = explainer.explain(images, methods=METHODS, instances=[[0, 1]])
    half = size // 2
    quadrants = [(slice(0, half),) * 2, (slice(half, size),) * 2]
    for method in METHODS:
        for row in range(2):
            own, other = quadrants[row], quadrants[1 - row]
            heat = result.maps[method][row]
            if method == "groupcam" and heat.max() == 0:  # as in the one-level known answer above
                continue
            assert heat[own].max() == heat.max() > heat[other].max(), (method, row)
            assert heat[own].mean() > heat[other].mean(), (method, row)
    unread = result.layer_maps[levels[1]]["scorecam"][0]  # instance 0's Score-CAM map at level B
    assert unread[quadrants[1]].max() == unread.max() > unread[quadrants[0]].max()

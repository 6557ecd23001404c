"""Detection export: torchvision RetinaNet, FCOS and SSDlite (random weights, 128x128) cut before NMS, each instance's
gradients within 1e-4 relative of torch autograd of the model's own activated score, and the decoded boxes and scores
against the model's own postprocess (torchvision's detections are among the bundle's anchors); the routing through
export_onnx/export_torch(task="detection") and `fusioncam export --task detection --layout`; Ultralytics metadata."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

import fusioncam
from fusioncam.errors import InputError
from fusioncam.export.detection_torch import export_torch_detection
from tests.support.detection_models import CLASSES, TARGET_TENSOR, TinyYolo, export_tiny_yolo
from tests.support.detection_models import SIZE as YOLO_SIZE

SIZE = (128, 128)


def _small_backbone():
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    return resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5, returned_layers=[2, 3, 4],
                               extra_blocks=LastLevelP6P7(256, 256))


def _torchvision_model(kind: str):
    from torchvision.models.detection import FCOS, RetinaNet, ssdlite320_mobilenet_v3_large

    torch.manual_seed(0)
    if kind == "retinanet":
        model = RetinaNet(_small_backbone(), num_classes=4)
    elif kind == "fcos":
        model = FCOS(_small_backbone(), num_classes=4)
    else:
        model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=4)
    model.eval()
    model.transform.min_size, model.transform.max_size = (SIZE[0],), SIZE[0]  # no resizing: the bundle's own size
    model.transform.fixed_size = SIZE if model.transform.fixed_size is not None else None  # SSD's fixed 320x320
    model.score_thresh = 0.0  # random weights score low (RetinaNet's prior: 0.01): keep detections to compare
    model.detections_per_img = 20
    return model


def _activated_scores(model, kind: str, features):
    """The model's own per-anchor class scores from its head outputs, as its postprocess_detections computes them."""
    head = model.head(list(features.values()))
    if kind == "retinanet":
        return torch.sigmoid(head["cls_logits"])
    if kind == "fcos":
        return torch.sqrt(torch.sigmoid(head["cls_logits"]) * torch.sigmoid(head["bbox_ctrness"]))
    return torch.softmax(head["cls_logits"], dim=-1)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["retinanet", "fcos", "ssdlite"])
def test_torchvision_dense_detectors_gradients_boxes_and_scores(kind, tmp_path) -> None:
    model = _torchvision_model(kind)
    layer = "backbone.body.layer4" if kind != "ssdlite" else "backbone.features.0"
    result = export_torch_detection(model, layer, tmp_path / "bundle", input_size=SIZE)
    # the model's own NMS threshold (RetinaNet 0.5, FCOS 0.6, SSDlite 0.55) for the default instance selection
    assert result.bundle.manifest.nms_iou_threshold == pytest.approx(model.nms_thresh)
    assert any(f"own IoU threshold {model.nms_thresh:g}" in note for note in result.notes)
    images = np.random.default_rng(0).random((2, 3, *SIZE)).astype(np.float32)
    mean = np.array(model.transform.image_mean, np.float32)[:, None, None]
    std = np.array(model.transform.image_std, np.float32)[:, None, None]
    normalised = (images - mean) / std
    session = ort.InferenceSession(str(tmp_path / "bundle" / "explain.onnx"), providers=["CPUExecutionProvider"])

    # the model's own detections (transform, head, anchors, box coder, postprocess) are among the bundle's anchors
    with torch.no_grad():
        detections = model(list(torch.from_numpy(images)))
    feed = {"input": normalised, "anchor": np.zeros(2, np.int64), "target": np.ones(2, np.int64),
            "reference_box": np.array([[0, 0, 128, 128]] * 2, np.float32), "instance_image": np.arange(2)}
    boxes, scores = session.run(["detection_boxes", "detection_scores"], feed)
    clipped = np.clip(boxes, 0, SIZE[0])
    checked = 0
    for image, found in enumerate(detections):
        for box, score, label in zip(found["boxes"].numpy(), found["scores"].numpy(), found["labels"].numpy()):
            close = np.abs(scores[image, :, label] - score) <= 1e-5 * max(1.0, score)
            near = np.abs(clipped[image][close] - box).max(axis=1) <= 1e-3 * SIZE[0] if close.any() else []
            assert np.any(near), f"{kind}: torchvision's detection {box} {score:.4f} (label {label}) is no anchor's"
            checked += 1
    assert checked > 0

    # each instance's gradient: the explain graph against autograd of the model's own activated score
    rows = [(0, 5, 1), (1, int(scores.shape[1]) - 1, 2), (0, int(np.argmax(scores[0, :, 3])), 3)]
    feed = {"input": normalised[[r[0] for r in rows]], "anchor": np.array([r[1] for r in rows], np.int64),
            "target": np.array([r[2] for r in rows], np.int64),
            "reference_box": np.array([[0, 0, 128, 128]] * 3, np.float32), "instance_image": np.arange(3)}
    got_scores, got = session.run(["logits", "gradients"], feed)
    module = model.get_submodule(layer)
    for row, (image, anchor, cls) in enumerate(rows):
        captured = []
        handle = module.register_forward_hook(lambda m, i, o: captured.append(o))
        try:
            features = model.backbone(torch.from_numpy(normalised[image : image + 1]))
            score = _activated_scores(model, kind, features)[0, anchor, cls]
            (want,) = torch.autograd.grad(score, captured[0])
        finally:
            handle.remove()
        want = want[0].numpy()
        assert abs(float(got_scores[row, cls]) - float(score)) <= 1e-5
        scale = float(np.abs(want).max())
        assert scale > 0
        error = float(np.abs(got[row] - want).max()) / scale
        assert error <= 1e-4, f"{kind} row {row}: relative gradient error {error:.2e}"


def test_export_onnx_task_detection_reads_ultralytics_metadata(tmp_path) -> None:
    """export_onnx(task="detection", layout=...) on a plain file with Ultralytics metadata: names become the class
    names, imgsz the input size, and the description says so."""
    export_tiny_yolo(TinyYolo(), tmp_path / "yolo.onnx",
                     {"task": "detect", "names": {0: "cat", 1: "dog", 2: "bird"}, "imgsz": [64, 64], "stride": 16})
    result = fusioncam.export_onnx(tmp_path / "yolo.onnx", tmp_path / "bundle", TARGET_TENSOR, task="detection",
                                   layout="yolov8")
    manifest = result.bundle.manifest
    assert manifest.task == "detection" and manifest.class_names == ["cat", "dog", "bird"]
    assert manifest.num_classes == CLASSES and manifest.output_size == (80, CLASSES)
    assert manifest.mean == (0.0, 0.0, 0.0) and manifest.std == (1.0, 1.0, 1.0)
    assert "Ultralytics metadata read" in result.describe() and '"imgsz": [64, 64]' in result.describe()
    with fusioncam.Explainer(result) as explainer:
        found = explainer.explain(np.random.default_rng(0).random((1, 3, 64, 64)).astype(np.float32),
                                  methods="gradcam", instances=[[("dog", (0, 0, 40, 40))]])
    assert found.class_name(0) == "dog"


def test_export_routing_refuses_layout_without_detection(tmp_path) -> None:
    export_tiny_yolo(TinyYolo(), tmp_path / "yolo.onnx")
    with pytest.raises(InputError, match="layout= applies to task='detection'"):
        fusioncam.export_onnx(tmp_path / "yolo.onnx", tmp_path / "b", layout="yolov8")
    with pytest.raises(InputError, match="layout='yolov7' is not a detection output layout"):
        fusioncam.export_onnx(tmp_path / "yolo.onnx", tmp_path / "b", task="detection", layout="yolov7")


def test_cli_export_task_detection(tmp_path, capsys) -> None:
    from fusioncam.cli.main import main

    export_tiny_yolo(TinyYolo(objectness=True), tmp_path / "yolo5.onnx")
    code = main(["export", str(tmp_path / "yolo5.onnx"), "--task", "detection", "--layout", "yolov5", "--layer",
                 TARGET_TENSOR, "--out", str(tmp_path / "bundle")])
    assert code == 0 and "detection layout yolov5: 80 anchors, 3 classes" in capsys.readouterr().out


def test_automatic_target_is_the_last_map_that_is_not_a_prediction(tmp_path) -> None:
    """TinyYolo's p4 ReLU (24 channels) is the last map whose channel count is not a per-level prediction's (7)."""
    export_tiny_yolo(TinyYolo(), tmp_path / "yolo.onnx")
    result = fusioncam.export_onnx(tmp_path / "yolo.onnx", tmp_path / "b", task="detection", layout="yolov8")
    assert result.layer.name == "/p4/p4.1/Relu_output_0" and result.layer.shape[1] == 24
    assert "picked automatically: the last 4-D feature map with spatial size > 1 whose channel" in result.describe()


def test_cli_export_takes_a_necks_levels_as_several_layers(tmp_path) -> None:
    """`--layer` twice on an ONNX detector: the two levels the heads read (stride 8 and 16) in one bundle, each
    level's gradient of an instance's score equal to torch autograd's (an anchor of the stride-8 level reads p3
    directly and p4 not at all; one of the stride-16 level reads p4 and, through it, p3)."""
    from fusioncam.cli.main import main
    from fusioncam.bundle import load_bundle
    from fusioncam.graph_names import layer_gradients

    model = TinyYolo().eval()
    export_tiny_yolo(model, tmp_path / "yolo.onnx")
    levels = ["/p3/p3.1/Relu_output_0", "/p4/p4.1/Relu_output_0"]
    assert main(["export", str(tmp_path / "yolo.onnx"), "--task", "detection", "--layout", "yolov8", "--layer",
                 levels[0], "--layer", levels[1], "--out", str(tmp_path / "levels")]) == 0
    bundle = load_bundle(tmp_path / "levels")
    assert bundle.layer_names == levels and bundle.layer_feature_sizes == [(8, 8), (4, 4)]
    images = np.random.default_rng(1).random((2, 3, *YOLO_SIZE)).astype(np.float32)
    rows = [(0, 10, 1), (1, 70, 2)]  # (image, anchor, class): anchors 0-63 on the stride-8 level, 64-79 stride 16
    session = ort.InferenceSession(str(bundle.explain_path), providers=["CPUExecutionProvider"])
    got = session.run([layer_gradients(0), layer_gradients(1)], {
        "input": images[[r[0] for r in rows]], "anchor": np.array([r[1] for r in rows], np.int64),
        "target": np.array([r[2] for r in rows], np.int64),
        "reference_box": np.array([[0, 0, *YOLO_SIZE]] * 2, np.float32), "instance_image": np.arange(2)})
    for row, (image, anchor, cls) in enumerate(rows):
        p3 = model.p3(model.trunk(torch.from_numpy(images[image : image + 1])))
        p4 = model.p4(p3)
        raw = torch.cat([model._level(model.head3(p3), 8), model._level(model.head4(p4), 16)], 2)
        wanted = torch.autograd.grad(raw[0, 4 + cls, anchor], [p3, p4])
        for level, want in enumerate(wanted):
            want = want[0].numpy()
            if row == 0 and level == 1:
                assert float(np.abs(got[level][row]).max()) == 0.0 and float(np.abs(want).max()) == 0.0
                continue
            scale = float(np.abs(want).max())
            assert scale > 0 and float(np.abs(got[level][row] - want).max()) <= 1e-4 * scale, (row, level)


def test_cli_export_bgr_model_explains_as_its_rgb_twin(tmp_path, capsys) -> None:
    """`--bgr`: a TinyYolo whose first convolution reads B, G, R (the RGB model's weights with their input channels
    reversed), exported with --bgr and its mean/std in B, G, R order, gives the RGB model's scores, boxes and
    Grad-CAM/Fusion-CAM maps on the same RGB images; the bundle's statistics are stored R, G, B."""
    from fusioncam.cli.main import main

    rgb = TinyYolo().eval()
    bgr = TinyYolo().eval()
    with torch.no_grad():
        bgr.trunk[0].weight.copy_(rgb.trunk[0].weight.flip(1))
    export_tiny_yolo(rgb, tmp_path / "rgb.onnx")
    export_tiny_yolo(bgr, tmp_path / "bgr.onnx")
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.6, 0.7)  # R, G, B
    assert main(["export", str(tmp_path / "rgb.onnx"), "--task", "detection", "--mean", *map(str, mean), "--std",
                 *map(str, std), "--out", str(tmp_path / "rgb")]) == 0
    assert main(["export", str(tmp_path / "bgr.onnx"), "--task", "detection", "--bgr", "--mean",
                 *map(str, mean[::-1]), "--std", *map(str, std[::-1]), "--out", str(tmp_path / "bgr")]) == 0
    assert "the model takes BGR" in capsys.readouterr().out
    bundles = [fusioncam.bundle.load_bundle(tmp_path / name) for name in ("rgb", "bgr")]
    assert bundles[1].manifest.mean == pytest.approx(mean) and bundles[1].manifest.std == pytest.approx(std)
    images = np.random.default_rng(5).random((2, 3, *YOLO_SIZE)).astype(np.float32)
    normalised = (images - np.array(mean, np.float32)[:, None, None]) / np.array(std, np.float32)[:, None, None]
    results = []
    for bundle in bundles:
        with fusioncam.Explainer(bundle, device="cpu") as explainer:
            results.append(explainer.explain(normalised, methods=("gradcam", "fusion"),
                                             instances=[[3, 70], [(1, (8, 8, 40, 40))]]))
    assert np.abs(results[0].scores - results[1].scores).max() <= 1e-5
    assert np.abs(results[0].boxes - results[1].boxes).max() <= 1e-3
    assert list(results[0].anchors) == list(results[1].anchors)
    for method in ("gradcam", "fusion"):
        assert float(results[0].maps[method].max()) > 0
        assert np.abs(results[0].maps[method] - results[1].maps[method]).max() <= 1e-4, method
    with pytest.raises(SystemExit):  # argparse: --bgr is a flag, and torchvision names take no --bgr
        main(["export", "resnet18", "--bgr", "yes", "--out", str(tmp_path / "x")])
    assert main(["export", "resnet18", "--bgr", "--out", str(tmp_path / "torch")]) == 2
    assert "--bgr applies to .onnx models" in capsys.readouterr().err

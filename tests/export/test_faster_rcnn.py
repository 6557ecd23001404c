"""torchvision Faster R-CNN (MobileNetV3-Large FPN, seeded random weights, 128x128) as a detection bundle: its proposal
slots against torchvision's own RPN and RoI head (every class score of every proposal, the detections it reports),
what the box head scores for the refined boxes instead of the proposals, each instance's gradient within 1e-4
(relative) of torch autograd through torchvision's MultiScaleRoIAlign, and the seven maps against the eager
reference."""

from __future__ import annotations

import hashlib

import numpy as np
import onnxruntime as ort
import pytest
import torch

import fusioncam
from fusioncam import Explainer
from fusioncam.errors import LayerError
from fusioncam.export.faster_rcnn import FasterRCNNOutputs
from fusioncam.tasks.detection import InstanceSelection
from tests.support.faster_rcnn_models import (FPN_TARGET, SIZE, SLOTS, box_head_scores, exported_bundle, faster_rcnn,
                                              normalised, proposals)
from tests.support.torch_reference_detection import detection_methods

# the FPN's finest output (256 channels, the map the RoI head pools). At the backbone's second block
# (backbone.body.1, stride 2) one image's gradients differ from float32 autograd by up to 2e-3 relative: torch's own
# float32 rounding (fusioncam is within 2.5e-5 of float64 autograd there; benchmarks/faster_rcnn_gradient_precision.py)
TARGET = FPN_TARGET
pytestmark = pytest.mark.slow  # exporting the two-stage detector takes about half a minute


@pytest.fixture(scope="module")
def exported():
    """(model, bundle path, four random images [4, 3, H, W] in [0, 1]); the bundle is shared with the serve test."""
    model = faster_rcnn()
    bundle = exported_bundle(TARGET)
    images = np.random.default_rng(0).random((4, 3, *SIZE)).astype(np.float32)
    return model, bundle, images


def _slots(bundle, inputs: np.ndarray):
    session = ort.InferenceSession(str(bundle / "explain.onnx"), providers=["CPUExecutionProvider"])
    n = len(inputs)
    feed = {"input": inputs, "anchor": np.zeros(n, np.int64), "target": np.zeros(n, np.int64),
            "reference_box": np.array([[0, 0, *SIZE[::-1]]] * n, np.float32), "instance_image": np.arange(n)}
    return session.run(["detection_boxes", "detection_scores"], feed)


def test_slots_are_torchvisions_proposals_and_detections(exported) -> None:
    """Slot p of image n holds torchvision's p-th proposal: its class scores are the box head's softmax for that
    proposal (background 0) and its box the proposal refined for its best class; padding slots score 0; every
    detection torchvision reports is some slot's (score, and box where its class is the slot's best). A batch of
    four gives each image the slots it gets alone."""
    model, bundle, images = exported
    inputs = normalised(model, images).numpy()
    boxes, scores = _slots(bundle, inputs)
    assert scores.shape == (4, SLOTS, 5)
    alone = _slots(bundle, inputs[2:3])
    np.testing.assert_allclose(alone[1][0], scores[2], atol=1e-6)
    with torch.no_grad():
        detections = model(list(torch.from_numpy(images)))
    checked = 0
    for image in range(4):
        boxes_tv = proposals(model, torch.from_numpy(inputs[image]))
        count = len(boxes_tv)
        assert 0 < count <= SLOTS
        with torch.no_grad():
            want, refined = box_head_scores(model, torch.from_numpy(inputs[image]), boxes_tv)
        want[:, 0] = 0
        np.testing.assert_allclose(scores[image, :count], want.numpy(), atol=1e-5)
        assert not scores[image, count:].any()
        best = want[:, 1:].argmax(1) + 1
        # boxes within 0.01 pixels: ONNX Runtime's and PyTorch's float32 box decoding (exp of the regression, twice)
        # differ by up to about 5e-3 pixels here
        np.testing.assert_allclose(boxes[image, :count], refined[torch.arange(count), best].numpy(), atol=1e-2)
        found = detections[image]
        for box, score, label in zip(found["boxes"].numpy(), found["scores"].numpy(), found["labels"].numpy()):
            close = np.flatnonzero(np.abs(scores[image, :, label] - score) <= 1e-5)
            assert len(close), f"image {image}: detection {box} {score:.4f} (label {label}) is no slot's score"
            best_here = [slot for slot in close if scores[image, slot, 1:].argmax() + 1 == label]
            if best_here:
                assert min(np.abs(boxes[image, slot] - box).max() for slot in best_here) <= 1e-2
                checked += 1
    assert checked >= 4


def test_reported_scores_are_the_proposals_not_the_refined_boxes(exported) -> None:
    """torchvision reports, for a refined box, the box head's score of the proposal it came from; the box head run
    again on the refined box scores differently (what an explanation graph fed the final boxes would explain)."""
    model, _, images = exported
    image = normalised(model, images[:1])[0]
    with torch.no_grad():
        found = model(list(torch.from_numpy(images[:1])))[0]
        again, _ = box_head_scores(model, image, found["boxes"])
    rescored = again[torch.arange(len(found["labels"])), found["labels"]].numpy()
    difference = np.abs(rescored - found["scores"].numpy())
    assert len(difference) >= 10
    assert difference.max() > 1e-3, f"the refined boxes score as the proposals do (max difference {difference.max()})"


def test_instance_gradients_match_torch_autograd(exported) -> None:
    """The default instances of two images: the explain graph's score and gradient at the target layer against
    torch autograd of softmax(box head(MultiScaleRoIAlign(features, proposal)))[class] with torchvision's modules,
    the proposal a constant (torchvision detaches it)."""
    model, bundle, images = exported
    inputs = normalised(model, images[:2]).numpy()
    with Explainer(bundle, device="cpu") as explainer:
        result = explainer.explain(inputs, methods="gradcam",
                                   instances=InstanceSelection(min_score=0.0, max_instances=3))
    assert len(result.anchors) == 6
    session = ort.InferenceSession(str(bundle / "explain.onnx"), providers=["CPUExecutionProvider"])
    index = result.image_index
    got_scores, got = session.run(["logits", "gradients"], {
        "input": inputs[index], "anchor": result.anchors, "target": result.classes,
        "reference_box": result.reference_boxes, "instance_image": index})
    module = model.get_submodule(TARGET)
    for row, (image, slot, cls) in enumerate(zip(index, result.anchors, result.classes)):
        x = torch.from_numpy(inputs[image])
        boxes = proposals(model, x)
        captured = []
        handle = module.register_forward_hook(lambda m, i, o: captured.append(o))
        try:
            scores, _ = box_head_scores(model, x, boxes)
            (want,) = torch.autograd.grad(scores[slot, cls], captured[0])
        finally:
            handle.remove()
        score = float(scores[slot, cls].detach())
        assert abs(float(got_scores[row, cls]) - score) <= 1e-5
        assert abs(float(result.scores[row]) - score) <= 1e-5
        want = want[0].numpy()
        scale = float(np.abs(want).max())
        assert scale > 0
        error = float(np.abs(got[row] - want).max()) / scale
        assert error <= 1e-4, f"row {row} (image {image}, slot {slot}, class {cls}): relative error {error:.2e}"


class _SharedOutputs(dict):
    """Outputs by input, one dict for a module and its deep copies (the eager reference copies the model per run)."""

    def __deepcopy__(self, memo):
        return self


class _OutputsRemembered(torch.nn.Module):
    """`net` whose no-grad outputs are kept by input bytes and handed back for the same input: both instances of
    one image mask it with the same K activation maps, so the second instance's 256 Score-CAM forwards are the
    first's (PyTorch on the CPU gives the same bits for the same input); forwards with gradients always run."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.outputs = _SharedOutputs()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self.net(x)
        key = (tuple(x.shape), hashlib.sha256(x.detach().contiguous().numpy().tobytes()).digest())
        if key not in self.outputs:
            self.outputs[key] = self.net(x)
        return self.outputs[key]


def test_seven_methods_match_the_eager_reference(exported) -> None:
    """Two instances (a slot, a (class, box) pair): Grad-CAM's and Fusion-CAM's maps (and the betas) within 1e-4 of
    the eager reference, whose masked
    scores are D-RISE's similarity over the slots of FasterRCNNOutputs run in PyTorch (the module the graph is
    exported from, whose slots the first test checks against torchvision's). The two instances' reference runs
    share the masked images' PyTorch outputs (_OutputsRemembered)."""
    model, bundle, images = exported
    inputs = normalised(model, images[3:4]).numpy()
    with Explainer(bundle, device="cpu", batch_size=16) as explainer:
        result = explainer.explain(inputs, methods=("gradcam", "fusion"), instances=[[0, (2, (20, 30, 90, 110))]])
    net = _OutputsRemembered(FasterRCNNOutputs(model, SIZE).eval()).eval()
    with torch.no_grad():
        np.testing.assert_allclose(net(torch.from_numpy(inputs))[0, 4:].T.numpy(), _slots(bundle, inputs)[1][0],
                                   atol=1e-5)
    layer = f"net.model.{TARGET}"
    for row in range(2):
        want = detection_methods(net, net.get_submodule(layer), inputs[0], int(result.anchors[row]),
                                 int(result.classes[row]), result.reference_boxes[row], group_and_union=False)
        for method in ("gradcam", "fusion"):
            error = float(np.abs(result.maps[method][row] - want[method]).max())
            assert error <= 1e-4, f"row {row}, {method}: max abs difference {error:.2e} from the eager reference"
        assert float(want["gradcam"].max()) > 0 and float(want["fusion"].max()) > 0
        for name, value in want["betas"].items():
            assert abs(float(result.betas[name][row]) - value) <= 1e-4, (row, name)


def test_default_selection_is_torchvisions_detections(exported) -> None:
    """The manifest records the model's roi_heads.nms_thresh (0.5), and the default selection (IoU threshold left to
    the model) is exactly torchvision's post-processed output: same detections, scores, labels and boxes, in order
    (as `fusioncam serve` and Explainer.explain choose them).
    min_score is just above every slot's second-best class score, so a proposal passes for at most one class, as
    fusioncam's best-class-per-slot selection assumes (torchvision's postprocess takes every class above its
    score_thresh). At Ultralytics' 0.7 the selection keeps more than torchvision."""
    from fusioncam.tasks.detection_payloads import predicted_rows

    model, bundle, images = exported
    inputs = normalised(model, images).numpy()
    _, scores = _slots(bundle, inputs)
    min_score = float(np.sort(scores[..., 1:], axis=-1)[..., -2].max()) + 1e-6
    settings = model.roi_heads.score_thresh, model.roi_heads.detections_per_img
    model.roi_heads.score_thresh, model.roi_heads.detections_per_img = min_score, 100
    try:
        with torch.no_grad():
            detections = model(list(torch.from_numpy(images)))
    finally:
        model.roi_heads.score_thresh, model.roi_heads.detections_per_img = settings
    with Explainer(bundle, device="cpu") as explainer:
        assert explainer.bundle.manifest.nms_iou_threshold == model.roi_heads.nms_thresh == 0.5
        chosen = predicted_rows(explainer, inputs, [InstanceSelection(min_score=min_score, max_instances=100)] * 4)
        wider = predicted_rows(explainer, inputs, [InstanceSelection(min_score, 100, iou_threshold=0.7)] * 4)
        manifest = explainer.bundle.manifest  # Explainer.explain's own choice of rows (before any map is computed)
        _, feed, _ = explainer.task.explained_rows(
            explainer.scorer, inputs, explainer.task.explain_feed(manifest, 4, None, None, None),
            InstanceSelection(min_score=min_score, max_instances=100), [f"image {i}" for i in range(4)], manifest, None)
    np.testing.assert_array_equal(feed["anchor"], np.concatenate([rows.anchors for rows in chosen]))
    for image, (rows, found) in enumerate(zip(chosen, detections)):
        assert len(rows.anchors) == len(found["scores"]) >= 5, image
        np.testing.assert_array_equal(rows.classes, found["labels"].numpy())
        np.testing.assert_allclose(rows.scores, found["scores"].numpy(), atol=1e-5)
        np.testing.assert_allclose(rows.boxes, found["boxes"].numpy(), atol=1e-2)
    assert sum(len(rows.anchors) for rows in wider) > sum(len(rows.anchors) for rows in chosen)


def test_refuses_a_target_inside_the_roi_head(exported, tmp_path) -> None:
    model, _, _ = exported
    with pytest.raises(LayerError, match="roi_heads.box_head.*not a feature map of the backbone"):
        fusioncam.export_torch(model, "roi_heads.box_head", tmp_path / "b", input_size=SIZE, task="detection")


def test_cli_explain_on_the_astronaut_photo(exported, tmp_path) -> None:
    """`fusioncam explain` on skimage's astronaut with the Faster R-CNN bundle: results.json's instances and the .npy
    maps equal Explainer.explain on the same preprocessed image; the instances are the model's slots."""
    import json

    import cv2
    from skimage import data

    from fusioncam.cli.main import main
    from fusioncam.images import preprocess, read_rgb

    model, bundle, _ = exported
    photo = tmp_path / "astronaut.png"
    cv2.imwrite(str(photo), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    assert main(["explain", str(photo), "--model", str(bundle), "--out", str(out), "--device", "cpu",
                 "--methods", "gradcam", "--min-score", "0", "--max-instances", "2"]) == 0
    record = json.loads((out / "results.json").read_text())["images"][0]
    with Explainer(bundle, device="cpu") as explainer:
        manifest = explainer.bundle.manifest
        image = preprocess(read_rgb(photo), manifest.input_size, manifest.mean, manifest.std)[None]
        want = explainer.explain(image, methods="gradcam", instances=InstanceSelection(min_score=0.0,
                                                                                       max_instances=2))
    assert len(record["instances"]) == len(want.classes) == 2
    _, scores = _slots(bundle, image)
    for k, entry in enumerate(record["instances"]):
        assert entry["anchor"] == int(want.anchors[k]) and entry["class_index"] == int(want.classes[k])
        assert entry["score"] == pytest.approx(float(scores[0, entry["anchor"], entry["class_index"]]), abs=1e-6)
        np.testing.assert_allclose(np.load(out / entry["files"]["gradcam_npy"]), want.maps["gradcam"][k], atol=1e-5)
        assert (out / entry["files"]["panel"]).is_file()

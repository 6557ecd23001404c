"""Segmentation bundles: the explain graph's activations and gradients of the region score S against torch autograd
(relative max error <= 1e-4) for torchvision FCN-ResNet50, DeepLabV3-MobileNetV3 and LRASPP and a tiny Hugging Face
SegFormer (random weights), with whole-image, box and predicted-class regions in one batch; the scorer's region
probability against the eager definition; plain ONNX segmentation files; clear errors."""

from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from fusioncam.bundle import load_bundle
from fusioncam.errors import InputError, LayerError, ModelLoadError
from fusioncam.export import export_onnx
from fusioncam.export.segmentation_export import export_onnx_segmentation, export_torch_segmentation
from fusioncam.export.segmentation_graph import area_matrix
from tests.support.onnx_graphs import assert_close
from tests.support.segmentation_reference import (activations_and_gradients, box_mask, region_array, region_probability,
                                    resolve)

SIZE = (64, 64)


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _torchvision(name: str, classes: int = 5):
    from torchvision.models import segmentation

    torch.manual_seed(0)
    return getattr(segmentation, name)(weights=None, weights_backbone=None, num_classes=classes).eval()


def _tiny_segformer(classes: int = 4):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)
    config = SegformerConfig(num_channels=3, num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1],
                             hidden_sizes=[16, 32, 48, 64], num_attention_heads=[1, 2, 2, 4], decoder_hidden_size=32,
                             num_labels=classes)
    return SegformerForSemanticSegmentation(config).eval()


MODELS = {
    # name: (model factory, target module path)
    "fcn_resnet50": (lambda: _torchvision("fcn_resnet50"), "backbone.layer4"),
    "deeplabv3_mobilenet_v3": (lambda: _torchvision("deeplabv3_mobilenet_v3_large"), "backbone.13"),
    "lraspp_mobilenet_v3": (lambda: _torchvision("lraspp_mobilenet_v3_large"), "backbone.4"),
    "segformer_tiny": (_tiny_segformer, "segformer.stages.1.patch_embeddings.proj"),
}


def _module(model, path: str):
    return dict(model.named_modules())[path]


def _parity(model, layer_path: str, bundle) -> None:
    """Three images in one run: whole image for its largest class, a box for class 1, the predicted region of the
    largest class; then the scorer on the same rows."""
    images = np.random.default_rng(3).standard_normal((3, 3, *SIZE)).astype(np.float32)
    targets = [-1, 1, -1]
    regions = [np.ones(SIZE, np.float32), box_mask(SIZE, (5, 9, 41, 30)), None]
    scores, acts, grads, classes, weights = activations_and_gradients(model, _module(model, layer_path), images,
                                                                      targets, regions)
    got = dict(zip(["logits", "activations", "gradients", "target_used", "region_weights"],
                   _session(bundle.explain_path).run(None, {"input": images, "target": np.array(targets),
                                                            "region": region_array(regions, SIZE)})))
    assert got["target_used"].tolist() == classes
    np.testing.assert_array_equal(got["region_weights"], weights.numpy())
    assert weights[2].sum() > 0 and weights[1].sum() < weights[0].sum()  # a real predicted region, a real box
    assert_close(got["logits"], scores.numpy(), what="class scores")
    assert_close(got["activations"], acts.numpy(), what="activations")
    for i, what in enumerate(("whole image", "box", "predicted region")):
        assert_close(got["gradients"][i], grads[i].numpy(), what=f"dS/dA, {what}")
    (probability,) = _session(bundle.scorer_path).run(
        ["score"], {"input": images, "target": got["target_used"], "region_weights": got["region_weights"]})
    assert_close(probability, region_probability(scores, classes, weights).numpy(), what="region probability")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_explain_graph_matches_torch_autograd(name: str, tmp_path) -> None:
    factory, layer_path = MODELS[name]
    model = factory()
    result = export_torch_segmentation(model, layer_path, tmp_path / f"{name}.fcam", input_size=SIZE)
    manifest = result.bundle.manifest
    assert manifest.task == "segmentation" and manifest.num_classes in (4, 5)
    _parity(model, layer_path, result.bundle)


def _lraspp_onnx(tmp_path):
    """A plain ONNX file of a torchvision LRASPP whose only output is its class scores."""
    model = _torchvision("lraspp_mobilenet_v3_large", classes=3)

    class ScoresOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x)["out"]

    path = tmp_path / "lraspp.onnx"
    buffer = io.BytesIO()
    torch.onnx.export(ScoresOnly().eval(), (torch.zeros(1, 3, *SIZE),), buffer, dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["scores"], dynamic_axes={"image": {0: "batch"}})
    path.write_bytes(buffer.getvalue())
    return model, path


@pytest.mark.slow
def test_plain_onnx_segmentation_file(tmp_path) -> None:
    """An .onnx file of shape [N, C, H, W]: the automatic target is the last feature map before the per-pixel
    classifier, the bundle loads, and its gradients match autograd at that layer."""
    model, path = _lraspp_onnx(tmp_path)
    with pytest.raises(ModelLoadError, match=r"\[N, C, H, W\] are a segmentation model: export it with "
                                             r"task='segmentation'"):
        export_onnx(path, tmp_path / "as_classifier.fcam", task="classification")  # the error says what to pass
    result = export_onnx(path, tmp_path / "lraspp.fcam")  # the task found from the scores' rank
    alias = export_onnx_segmentation(path, tmp_path / "alias.fcam")
    assert alias.bundle.manifest.files == result.bundle.manifest.files  # the same bundle, file for file
    assert result.picked_automatically and result.layer.channels != 3 and min(result.layer.spatial) > 1
    bundle = load_bundle(result.bundle.path)
    assert bundle.manifest.task == "segmentation" and bundle.manifest.output_size == SIZE
    # (gradient parity at named layers is the torch-path test above; here: the ONNX path's scores, class, region)
    images = np.random.default_rng(5).standard_normal((2, 3, *SIZE)).astype(np.float32)
    regions = [np.ones(SIZE, np.float32), None]
    (logits, target_used, region_weights) = _session(bundle.explain_path).run(
        ["logits", "target_used", "region_weights"],
        {"input": images, "target": np.array([2, -1]), "region": region_array(regions, SIZE)})
    with torch.no_grad():
        scores = model(torch.from_numpy(images))["out"]
    classes, weights = resolve(scores, [2, -1], regions)
    assert target_used.tolist() == classes
    np.testing.assert_array_equal(region_weights, weights.numpy())
    assert_close(logits, scores.numpy(), what="class scores")


@pytest.mark.parametrize("out_size,in_size", [(16, 64), (5, 17), (7, 7), (3, 10)])
def test_area_matrix_is_pytorch_area_interpolation(out_size: int, in_size: int) -> None:
    mask = (np.random.default_rng(0).random((in_size, in_size)) > 0.5).astype(np.float32)
    want = F.interpolate(torch.from_numpy(mask)[None, None], size=(out_size, out_size), mode="area")[0, 0].numpy()
    got = area_matrix(out_size, in_size) @ mask @ area_matrix(out_size, in_size).T
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_image_classifier_is_refused_with_the_shape_named(tmp_path) -> None:
    torch.manual_seed(0)
    classifier = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                     torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with pytest.raises(ModelLoadError, match=r"segmentation model's class scores are \(2, 2\)"):
        export_torch_segmentation(classifier, "1", tmp_path / "c.fcam", input_size=(16, 16))
    assert not (tmp_path / "c.fcam").exists()


def test_unknown_target_layer_names_close_ones(tmp_path) -> None:
    model = _torchvision("lraspp_mobilenet_v3_large")
    with pytest.raises(LayerError, match=r"unknown target layer 'backbone\.17'.*Closest module paths: .*backbone\.16"):
        export_torch_segmentation(model, "backbone.17", tmp_path / "s.fcam", input_size=(32, 32))
    assert not (tmp_path / "s.fcam").exists()


@pytest.mark.slow
def test_plain_onnx_file_gradients_match_autograd(tmp_path) -> None:
    """An .onnx file whose first output is the scores and whose second is a backbone feature map: that tensor, named
    as the target layer, gets activations and dS/dA equal to autograd's."""
    model = _torchvision("deeplabv3_mobilenet_v3_large", classes=3)
    layer = model.get_submodule("backbone.13")

    class ScoresAndFeatures(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.kept = []
            layer.register_forward_hook(lambda _m, _i, out: self.kept.append(out))

        def forward(self, x):
            self.kept.clear()
            return self.model(x)["out"], self.kept[0]

    buffer = io.BytesIO()
    torch.onnx.export(ScoresAndFeatures().eval(), (torch.zeros(1, 3, *SIZE),), buffer, dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["scores", "features"],
                      dynamic_axes={"image": {0: "batch"}})
    (tmp_path / "deeplab.onnx").write_bytes(buffer.getvalue())
    result = export_onnx_segmentation(tmp_path / "deeplab.onnx", tmp_path / "deeplab.fcam", target_layer="features")
    _parity(model, "backbone.13", result.bundle)


def test_export_torch_finds_a_segmentation_model_from_its_outputs(tmp_path) -> None:
    """export_torch of per-pixel class scores makes the segmentation bundle export_torch_segmentation makes (same
    maps), an Explainer takes the export's result directly, and task="classification" keeps the error that says
    what to pass."""
    import fusioncam
    from fusioncam import export_torch

    torch.manual_seed(0)
    per_pixel = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    with pytest.raises(ModelLoadError, match=r"\[N, C, H, W\] are a segmentation model: export it with "
                                             r"task='segmentation'"):
        export_torch(per_pixel, "1", tmp_path / "c.fcam", input_size=(16, 16), task="classification")
    with pytest.raises(InputError, match="token_grid applies to classifier exports"):
        export_torch(per_pixel, "1", tmp_path / "t.fcam", input_size=(16, 16), token_grid=(4, 4))
    found = export_torch(per_pixel, "1", tmp_path / "found.fcam", input_size=(16, 16))
    alias = export_torch_segmentation(per_pixel, "1", tmp_path / "alias.fcam", input_size=(16, 16))
    assert found.bundle.manifest.task == "segmentation" and found.bundle.manifest.output_size == (16, 16)
    image = np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype(np.float32)
    with fusioncam.Explainer(found, device="cpu") as a, fusioncam.Explainer(alias.bundle.path, device="cpu") as b:
        got = a.explain(image, targets=1, regions="all", methods=("gradcam", "scorecam"))
        want = b.explain(image, targets=1, regions="all", methods=("gradcam", "scorecam"))
    for method in ("gradcam", "scorecam"):
        np.testing.assert_array_equal(got.maps[method], want.maps[method])

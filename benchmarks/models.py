"""The models the benchmarks explain, and their bundles (exported once per run into a work folder)."""

from __future__ import annotations

import warnings
from pathlib import Path

import fusioncam
from fusioncam.errors import ModelLoadError


def build_model(name: str):
    """(torch module, layer path, class names): EfficientNet-Lite0 with its ImageNet weights, or a torchvision
    model with seeded random weights (no download) at `layer4`."""
    import torch

    if name == "efficientnet_lite0":
        from fusioncam.export.model_zoo import efficientnet_lite0

        named = efficientnet_lite0()
        return named.module, "_blocks.15", named.class_names
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None).eval(), "layer4", None


def export_bundle(model, layer: str, out: Path, class_names):
    """The bundle with a float16 scorer, or without one if the model is not float16-safe."""
    try:
        return fusioncam.export_torch(model, layer, out, class_names=class_names, fp16_scorer=True).bundle
    except ModelLoadError as exc:
        print(f"no float16 scorer for this model ({exc}); fp32 only")
        return fusioncam.export_torch(model, layer, out, class_names=class_names).bundle


def efficientnet_conv_head_bundle(folder: Path, fp16_scorer: bool = False, int8_scorer: bool = False):
    """EfficientNet-Lite0 exported to plain ONNX, then bundled at its conv-head ReLU6 output (K=1280, the
    automatic target): the layer whose many all-zero channels the constant-channel skip exploits. `int8_scorer`
    adds the INT8 scorer (calibrated on the sample photos)."""
    import torch

    from fusioncam.export.model_zoo import efficientnet_lite0

    onnx_path = folder / "efficientnet_lite0.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(efficientnet_lite0().module, (torch.zeros(1, 3, 224, 224),), str(onnx_path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    name = "head_fp16.fcam" if fp16_scorer else "head_int8.fcam" if int8_scorer else "head.fcam"
    return fusioncam.export_onnx(onnx_path, folder / name, fp16_scorer=fp16_scorer, int8_scorer=int8_scorer)

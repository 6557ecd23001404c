"""How close fusioncam's maps are to pytorch-grad-cam's, on the same weights, image and target layer.

For a CNN (seeded random ResNet-18, `layer4`), a ViT (seeded random timm ViT-Tiny, `blocks[-1].norm1`, with
pytorch-grad-cam's documented `reshape_transform`; fusioncam detects the token layout itself) and a DenseNet-121
(`features.norm5`, which torchvision's forward follows with an in-place ReLU), one image, the top class: Grad-CAM,
XGrad-CAM, Grad-CAM++ and Score-CAM (not on DenseNet: 1024 channels) from both libraries, compared as maps at the
input size (max |difference| and Pearson r), fusioncam once with its default arithmetic (the authors': no epsilon in
Grad-CAM++'s alpha, Score-CAM masks with align_corners=False and the ReLU after upsampling) and once with
compat="pytorch-grad-cam". `python -m benchmarks.grad_cam_agreement` writes
benchmarks/results/grad-cam-agreement-<machine>.json/.md.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from benchmarks.report import RESULTS, cpu_label, save_report

PAIRS = {"gradcam": "GradCAM", "xgradcam": "XGradCAM", "gradcam++": "GradCAMPlusPlus", "scorecam": "ScoreCAM"}
VARIANTS = {"default": None, "compat": "pytorch-grad-cam"}  # fusioncam's Explainer(compat=...)


def _models():
    import timm
    import torch
    import torchvision

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=10).eval()
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=10).eval()

    def tokens_to_map(tensor, height=4, width=4):  # pytorch-grad-cam's documented ViT reshape_transform
        result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
        return result.transpose(2, 3).transpose(1, 2)

    torch.manual_seed(0)
    densenet = torchvision.models.densenet121(num_classes=10).eval()
    every, gradient_only = tuple(PAIRS), ("gradcam", "xgradcam", "gradcam++")
    return {"resnet18 layer4": (resnet, "layer4", resnet.layer4, None, 128, every),
            "vit_tiny blocks.11.norm1": (vit, "blocks.11.norm1", vit.blocks[-1].norm1, tokens_to_map, 64, every),
            "densenet121 features.norm5": (densenet, "features.norm5", densenet.features.norm5, None, 64,
                                           gradient_only)}


def compare(model, path: str, module, reshape, size: int, methods: tuple[str, ...]) -> dict:
    """Both libraries' maps on one random image; per method and fusioncam variant, max |diff| and Pearson r."""
    import pytorch_grad_cam
    import torch

    import fusioncam

    image = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        export = fusioncam.export_torch(model, path, Path(folder) / "b", input_size=(size, size))
        explanations = {}
        for variant, compat in VARIANTS.items():  # the top class: the explain pass is the same for both
            with fusioncam.Explainer(export.bundle.path, device="cpu", compat=compat) as explainer:
                explanations[variant] = explainer.explain(image, methods=methods)
    target = int(explanations["default"].classes[0])
    rows = {}
    for ours in methods:
        cam_class = getattr(pytorch_grad_cam, PAIRS[ours])
        with cam_class(model=model, target_layers=[module], reshape_transform=reshape) as cam:
            if ours == "scorecam":
                cam.batch_size = 64
            from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

            their_map = cam(input_tensor=torch.from_numpy(image), targets=[ClassifierOutputTarget(target)])[0]
        rows[ours] = {variant: agreement(explanation.maps[ours][0], their_map)
                      for variant, explanation in explanations.items()}
    return {"layer": export.describe(), "class": target, "methods": rows}


def agreement(ours: np.ndarray, theirs: np.ndarray) -> dict:
    """max |difference| and Pearson r of two maps."""
    r = float(np.corrcoef(ours.ravel(), theirs.ravel())[0, 1])
    return {"max_abs_diff": float(np.abs(ours - theirs).max()), "pearson_r": r}


def markdown(report: dict) -> str:
    lines = ["# fusioncam and pytorch-grad-cam on the same weights", "",
             f"{report['machine']}, pytorch-grad-cam {report['grad_cam']} (a shared, busy machine; maps, not times).", "",
             "| model, layer | method | default: max abs diff | Pearson r | compat: max abs diff | Pearson r |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, result in report["models"].items():
        for method, row in result["methods"].items():
            cells = " | ".join(f"{row[v]['max_abs_diff']:.2e} | {row[v]['pearson_r']:.5f}" for v in VARIANTS)
            lines.append(f"| {name} | {method} | {cells} |")
    lines += ["", "default: fusioncam's own arithmetic (the methods' authors'); compat: "
              "`Explainer(..., compat=\"pytorch-grad-cam\")`."]
    return "\n".join(lines) + "\n"


def main() -> int:
    from importlib.metadata import version

    report = {"machine": cpu_label(), "grad_cam": version("grad-cam"),
              "models": {name: compare(*spec) for name, spec in _models().items()}}
    save_report(RESULTS, f"grad-cam-agreement-{cpu_label()}", report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

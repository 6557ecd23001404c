"""How close fusioncam's maps are to pytorch-grad-cam's, on the same weights, image and target layer.

For a CNN (seeded random ResNet-18, `layer4`) and a ViT (seeded random timm ViT-Tiny, `blocks[-1].norm1`, with
pytorch-grad-cam's documented `reshape_transform`; fusioncam detects the token layout itself), one image, the top
class: Grad-CAM, XGrad-CAM, Grad-CAM++ and Score-CAM from both libraries, compared as maps at the input size
(max |difference| and Pearson r). The known formula differences (pytorch-grad-cam's Grad-CAM++ adds 1e-6 to alpha's
denominator; its Score-CAM upsamples with align_corners=True after a ReLU; it resizes maps with OpenCV) are measured,
not removed. `python -m benchmarks.grad_cam_agreement` writes benchmarks/results/grad-cam-agreement-<machine>.json/.md.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from benchmarks.report import RESULTS, cpu_label, save_report

PAIRS = {"gradcam": "GradCAM", "xgradcam": "XGradCAM", "gradcam++": "GradCAMPlusPlus", "scorecam": "ScoreCAM"}


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

    return {"resnet18 layer4": (resnet, "layer4", resnet.layer4, None, 128),
            "vit_tiny blocks.11.norm1": (vit, "blocks.11.norm1", vit.blocks[-1].norm1, tokens_to_map, 64)}


def compare(model, path: str, module, reshape, size: int) -> dict:
    """Both libraries' maps on one random image; per method max |diff| and Pearson r."""
    import pytorch_grad_cam
    import torch

    import fusioncam

    image = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        export = fusioncam.export_torch(model, path, Path(folder) / "b", input_size=(size, size))
        explanation = fusioncam.Explainer(export.bundle.path, device="cpu").explain(image, methods=tuple(PAIRS))
    target = int(explanation.classes[0])
    rows = {}
    for ours, theirs in PAIRS.items():
        cam_class = getattr(pytorch_grad_cam, theirs)
        with cam_class(model=model, target_layers=[module], reshape_transform=reshape) as cam:
            if theirs == "ScoreCAM":
                cam.batch_size = 64
            from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

            their_map = cam(input_tensor=torch.from_numpy(image), targets=[ClassifierOutputTarget(target)])[0]
        our_map = explanation.maps[ours][0]
        r = float(np.corrcoef(our_map.ravel(), their_map.ravel())[0, 1])
        rows[ours] = {"max_abs_diff": float(np.abs(our_map - their_map).max()), "pearson_r": r}
    return {"layer": export.describe(), "class": target, "methods": rows}


def markdown(report: dict) -> str:
    lines = ["# fusioncam and pytorch-grad-cam on the same weights", "",
             f"{report['machine']}, pytorch-grad-cam {report['grad_cam']} (a shared, busy machine; maps, not times).", "",
             "| model, layer | method | max abs diff | Pearson r |", "| --- | --- | ---: | ---: |"]
    for name, result in report["models"].items():
        for method, row in result["methods"].items():
            lines.append(f"| {name} | {method} | {row['max_abs_diff']:.2e} | {row['pearson_r']:.5f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    from importlib.metadata import version

    report = {"machine": cpu_label(), "grad_cam": version("grad-cam"),
              "models": {name: compare(*spec) for name, spec in _models().items()}}
    save_report(RESULTS, f"grad-cam-agreement-{cpu_label()}", report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

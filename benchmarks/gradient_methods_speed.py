"""Time per image of the explain-pass methods, fusioncam against pytorch-grad-cam, same model, images and run.

Seeded random torchvision ResNet-18 (1000 classes) at 224x224, target `layer4` (K=512, 7x7), a batch of N images,
each image's class given: for HiResCAM, Grad-CAM element-wise, LayerCAM, Eigen-CAM, EigenGrad-CAM, KPCA-CAM and
FinerCAM (FinerCAM with each image's top class, the library's default) and Grad-CAM for reference, the median of
`repeats` calls of each library on the whole batch after one warm-up call, side by side (alternating), fusioncam on
the CPU with compat="pytorch-grad-cam" (the maps the library gives). `python -m benchmarks.gradient_methods_speed
[N] [repeats]` writes benchmarks/results/gradient-methods-speed-<machine>.json/.md.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.report import RESULTS, cpu_label, save_report
from benchmarks.timing import median_seconds

PAIRS = {"gradcam": "GradCAM", "hirescam": "HiResCAM", "gradcam-elementwise": "GradCAMElementWise",
         "layercam": "LayerCAM", "eigencam": "EigenCAM", "eigengradcam": "EigenGradCAM", "kpcacam": "KPCA_CAM",
         "finercam": "FinerCAM"}
SIZE = 224


def measure(n: int, repeats: int) -> dict:
    """Seconds per image of each method in both libraries, and the largest map difference seen."""
    import pytorch_grad_cam
    import torch
    import torchvision
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    import fusioncam

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    images = np.random.default_rng(0).standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)
    targets = [int(t) for t in np.random.default_rng(1).integers(0, 1000, n)]
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        export = fusioncam.export_torch(model, "layer4", Path(folder) / "b", input_size=(SIZE, SIZE))
        with fusioncam.Explainer(export.bundle.path, device="cpu", compat="pytorch-grad-cam") as explainer:
            for method, name in PAIRS.items():
                asked = None if method == "finercam" else targets
                wanted = None if method == "finercam" else [ClassifierOutputTarget(t) for t in targets]
                with getattr(pytorch_grad_cam, name)(model=model, target_layers=[model.layer4]) as cam:
                    def theirs():
                        return cam(input_tensor=torch.from_numpy(images), targets=wanted)

                    def ours():
                        return explainer.explain(images, targets=asked, methods=(method,)).maps[method]

                    difference = float(np.abs(ours() - theirs()).max())
                    our_s, our_times = median_seconds(ours, repeats=repeats)
                    their_s, their_times = median_seconds(theirs, repeats=repeats)
                rows[method] = {"fusioncam_s_per_image": our_s / n, "pytorch_grad_cam_s_per_image": their_s / n,
                                "speedup": their_s / our_s, "max_abs_diff": difference,
                                "fusioncam_times_s": our_times, "pytorch_grad_cam_times_s": their_times}
    return {"images": n, "repeats": repeats, "model": f"resnet18 layer4 {SIZE}x{SIZE}", "methods": rows,
            "torch": torch.__version__, "grad_cam": pytorch_grad_cam_version()}


def pytorch_grad_cam_version() -> str:
    from importlib.metadata import version

    return version("grad-cam")


def markdown(report: dict) -> str:
    lines = ["# Explain-pass methods: fusioncam and pytorch-grad-cam, time per image", "",
             f"{report['machine']}; {report['model']}, {report['images']} images per call, median of "
             f"{report['repeats']}; torch {report['torch']}, pytorch-grad-cam {report['grad_cam']}; fusioncam with "
             "compat=\"pytorch-grad-cam\" on the CPU (a shared, busy machine).", "",
             "| method | fusioncam ms/image | pytorch-grad-cam ms/image | speed-up | max abs diff of the maps |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for method, row in report["methods"].items():
        lines.append(f"| {method} | {row['fusioncam_s_per_image'] * 1e3:.1f} | "
                     f"{row['pytorch_grad_cam_s_per_image'] * 1e3:.1f} | {row['speedup']:.2f}x | "
                     f"{row['max_abs_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    n = int(argv[0]) if argv else 8
    repeats = int(argv[1]) if len(argv) > 1 else 3
    report = {"machine": cpu_label(), **measure(n, repeats)}
    save_report(RESULTS, f"gradient-methods-speed-{cpu_label()}", report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What FullGrad and ShapleyCAM cost over the explain pass, and against pytorch-grad-cam's FullGrad and ShapleyCAM.

Seeded random torchvision ResNet-18 (1000 classes) at SIZE x SIZE, target `layer4`, a batch of N images with each
image's class given, fusioncam on the CPU. Timed per call (median of `repeats`, after one untimed call of each that
also builds the derived graphs and compares the maps), side by side in one run:

- fusioncam `gradcam`: the explain pass alone (forward, backward to layer4) and Grad-CAM's arithmetic;
- fusioncam `fullgrad`: that explain pass plus the FullGrad graph's pass (forward, backward to the image with every
  bias layer's gradient, the map in the graph); its extra cost is the FullGrad pass;
- fusioncam `shapleycam`: ResNet-18 is piecewise linear after layer4, so H A is exactly 0 and no second pass runs;
- pytorch-grad-cam 1.5.7's FullGrad, ShapleyCAM and GradCAM on the same model, images and classes.

The one-time cost of building and opening the derived graphs (first use per Explainer) is reported separately.
`python -m benchmarks.fullgrad_shapleycam [N] [repeats] [size]` writes
benchmarks/results/fullgrad-shapleycam-<machine>.json/.md.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.gradient_methods_speed import pytorch_grad_cam_version
from benchmarks.report import RESULTS, cpu_label, save_report
from benchmarks.timing import median_seconds

LIBRARY = {"fullgrad": "FullGrad", "shapleycam": "ShapleyCAM", "gradcam": "GradCAM"}


def measure(n: int, repeats: int, size: int) -> dict:
    """Seconds per call of each method in both libraries, the first-use build time, the map differences."""
    import pytorch_grad_cam
    import torch
    import torchvision
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    import fusioncam

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    images = np.random.default_rng(0).standard_normal((n, 3, size, size)).astype(np.float32)
    targets = [int(t) for t in np.random.default_rng(1).integers(0, 1000, n)]
    times: dict[str, list[float]] = {}
    differences, first_use = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        export = fusioncam.export_torch(model, "layer4", Path(folder) / "b", input_size=(size, size))
        with fusioncam.Explainer(export.bundle.path, device="cpu", compat="pytorch-grad-cam") as explainer:
            def ours(method):
                return lambda: explainer.explain(images, targets=targets, methods=(method,)).maps[method]

            def theirs(method):
                def run():
                    with getattr(pytorch_grad_cam, LIBRARY[method])(model=model, target_layers=[model.layer4]) as cam:
                        return cam(input_tensor=torch.from_numpy(images),
                                   targets=[ClassifierOutputTarget(t) for t in targets])
                return run

            ours("gradcam")()
            for method in LIBRARY:
                start = time.perf_counter()
                mine = ours(method)()  # first use: builds and opens the derived graph
                first_use[method] = time.perf_counter() - start
                differences[method] = float(np.abs(mine - theirs(method)()).max())
            for _ in range(repeats):  # alternating, one call each per round
                for method in LIBRARY:
                    for side, run in (("fusioncam", ours(method)), ("pytorch_grad_cam", theirs(method))):
                        times.setdefault(f"{side}_{method}", []).append(median_seconds(run, repeats=1, warmup=0)[0])
    per_call = {name: float(np.median(values)) for name, values in times.items()}
    return {"images": n, "repeats": repeats, "model": f"resnet18 layer4 {size}x{size}", "classes": targets,
            "s_per_call": per_call, "times_s": times, "first_use_s": first_use, "max_abs_diff": differences,
            "fullgrad_pass_s": per_call["fusioncam_fullgrad"] - per_call["fusioncam_gradcam"],
            "torch": torch.__version__, "grad_cam": pytorch_grad_cam_version()}


def markdown(report: dict) -> str:
    per_call = report["s_per_call"]
    lines = ["# FullGrad and ShapleyCAM: fusioncam's derived graphs against pytorch-grad-cam", "",
             f"{report['machine']}; {report['model']}, {report['images']} images per call, median of "
             f"{report['repeats']}; torch {report['torch']}, pytorch-grad-cam {report['grad_cam']}; fusioncam on the "
             f"CPU (a shared machine, 1-minute load average {report['load_average_1min'][0]:.0f} before and "
             f"{report['load_average_1min'][1]:.0f} after the run). fusioncam's FullGrad pass (FullGrad minus the explain pass of Grad-CAM): "
             f"{report['fullgrad_pass_s']:.3f} s per call.", "",
             "| method | fusioncam s/call | pytorch-grad-cam s/call | ratio | max abs diff | first use (build) s |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for method in LIBRARY:
        ours, theirs = per_call[f"fusioncam_{method}"], per_call[f"pytorch_grad_cam_{method}"]
        lines.append(f"| {method} | {ours:.3f} | {theirs:.3f} | {theirs / ours:.1f}x | "
                     f"{report['max_abs_diff'][method]:.1e} | {report['first_use_s'][method]:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    n = int(argv[0]) if argv else 1
    repeats = int(argv[1]) if len(argv) > 1 else 3
    size = int(argv[2]) if len(argv) > 2 else 224
    before = os.getloadavg()[0]
    report = {"machine": cpu_label(), **measure(n, repeats, size)}
    report["load_average_1min"] = [before, os.getloadavg()[0]]  # before and after: other work on the machine
    save_report(RESULTS, f"fullgrad-shapleycam-{cpu_label()}", report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

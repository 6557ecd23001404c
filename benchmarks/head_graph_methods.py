"""Time per image of AblationCAM and ReciproCAM on fusioncam's head graph against pytorch-grad-cam's AblationCAM.

Seeded random torchvision ResNet-18 (1000 classes) at SIZE x SIZE, target `layer4` (K=512), a batch of N images with
each image's class given. pytorch-grad-cam 1.5.7's AblationCAM runs the whole network once per ablated channel (its
default batch_size 32); fusioncam's AblationCAM (compat="pytorch-grad-cam": the same map) and ReciproCAM run one
explain pass, then only the head graph (layer4's output -> avgpool -> fc) per ablated channel or kept position.
Each call is timed after one untimed call of each (the map comparison), median of `repeats`, side by side in one run.
`python -m benchmarks.head_graph_methods [N] [repeats] [size]` writes
benchmarks/results/head-graph-methods-<machine>.json/.md.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.gradient_methods_speed import pytorch_grad_cam_version
from benchmarks.report import RESULTS, cpu_label, save_report
from benchmarks.timing import median_seconds


def measure(n: int, repeats: int, size: int) -> dict:
    """Seconds per image of each method, the ratios to pytorch-grad-cam's AblationCAM, the AblationCAM map difference."""
    import torch
    import torchvision
    from pytorch_grad_cam import AblationCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    import fusioncam

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    images = np.random.default_rng(0).standard_normal((n, 3, size, size)).astype(np.float32)
    targets = [int(t) for t in np.random.default_rng(1).integers(0, 1000, n)]
    with tempfile.TemporaryDirectory() as folder:
        export = fusioncam.export_torch(model, "layer4", Path(folder) / "b", input_size=(size, size))
        with fusioncam.Explainer(export.bundle.path, device="cpu", compat="pytorch-grad-cam") as explainer, \
                AblationCAM(model=model, target_layers=[model.layer4]) as cam:
            def theirs():
                return cam(input_tensor=torch.from_numpy(images), targets=[ClassifierOutputTarget(t) for t in targets])

            def ours(method):
                return lambda: explainer.explain(images, targets=targets, methods=(method,)).maps[method]

            difference = float(np.abs(ours("ablationcam")() - theirs()).max())
            ours("reciprocam")()
            times = {}
            for _ in range(repeats):  # alternating, one call each per round
                for name, run in (("pytorch_grad_cam_ablationcam", theirs), ("fusioncam_ablationcam", ours("ablationcam")),
                                  ("fusioncam_reciprocam", ours("reciprocam"))):
                    times.setdefault(name, []).append(median_seconds(run, repeats=1, warmup=0)[0])
    per_image = {name: float(np.median(values)) / n for name, values in times.items()}
    theirs_s = per_image["pytorch_grad_cam_ablationcam"]
    return {"images": n, "repeats": repeats, "model": f"resnet18 layer4 {size}x{size}", "classes": targets,
            "s_per_image": per_image, "times_s": times,
            "speedup_ablationcam": theirs_s / per_image["fusioncam_ablationcam"],
            "speedup_reciprocam_vs_their_ablationcam": theirs_s / per_image["fusioncam_reciprocam"],
            "ablationcam_max_abs_diff": difference, "torch": torch.__version__, "grad_cam": pytorch_grad_cam_version()}


def markdown(report: dict) -> str:
    per_image = report["s_per_image"]
    theirs = per_image["pytorch_grad_cam_ablationcam"]
    lines = ["# Head-graph methods: fusioncam's AblationCAM and ReciproCAM against pytorch-grad-cam's AblationCAM", "",
             f"{report['machine']}; {report['model']}, {report['images']} images per call, median of "
             f"{report['repeats']}; torch {report['torch']}, pytorch-grad-cam {report['grad_cam']}; fusioncam on the "
             f"CPU with compat=\"pytorch-grad-cam\" (a shared, busy machine). AblationCAM maps differ by at most "
             f"{report['ablationcam_max_abs_diff']:.1e}.", "",
             "| method | s/image | pytorch-grad-cam AblationCAM / this |", "| --- | ---: | ---: |"]
    for name, seconds in per_image.items():
        lines.append(f"| {name} | {seconds:.2f} | {theirs / seconds:.1f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    n = int(argv[0]) if argv else 2
    repeats = int(argv[1]) if len(argv) > 1 else 1
    size = int(argv[2]) if len(argv) > 2 else 224
    report = {"machine": cpu_label(), **measure(n, repeats, size)}
    save_report(RESULTS, f"head-graph-methods-{cpu_label()}", report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

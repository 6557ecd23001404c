"""Time per call of several target layers in one bundle (one explain pass for both) against one bundle per layer.

Seeded random torchvision ResNet-18 (1000 classes) at SIZE x SIZE, target layers [layer3, layer4]: one bundle
exported with both (export_torch(model, ["layer3", "layer4"])) against the two one-layer bundles, each explained
and the two maps aggregated as the one-bundle Explainer aggregates them (runtime/layer_aggregation.py,
compat="pytorch-grad-cam", as fusioncam.pytorch_grad_cam runs them). The methods whose cost is the explain pass (the
gradient methods), a batch of N images with each image's class given; alternating calls, median of `repeats`, side
by side in one run; the maps of both ways are compared. `python -m benchmarks.several_layers_bundle [N] [repeats]
[size]` writes benchmarks/results/several-layers-bundle-<machine>.json/.md.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.report import RESULTS, cpu_label, save_report
from benchmarks.timing import median_seconds

LAYERS = ["layer3", "layer4"]
METHODS = ("gradcam", "gradcam++", "layercam")


def measure(n: int, repeats: int, size: int) -> dict:
    """Seconds per call of each way and method, the ratio, the largest map difference between the ways."""
    import onnxruntime
    import torch
    import torchvision

    import fusioncam
    from fusioncam.runtime.layer_aggregation import aggregate_layers

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    images = np.random.default_rng(0).standard_normal((n, 3, size, size)).astype(np.float32)
    targets = [int(t) for t in np.random.default_rng(1).integers(0, 1000, n)]
    compat = "pytorch-grad-cam"
    with tempfile.TemporaryDirectory() as folder:
        both = fusioncam.export_torch(model, LAYERS, Path(folder) / "both", input_size=(size, size))
        alone = [fusioncam.export_torch(model, layer, Path(folder) / layer, input_size=(size, size))
                 for layer in LAYERS]
        one = fusioncam.Explainer(both, device="cpu", compat=compat)
        each = [fusioncam.Explainer(bundle, device="cpu", compat=compat) for bundle in alone]
        sizes = both.bundle.layer_feature_sizes
        try:
            def one_bundle(method):
                return lambda: one.explain(images, targets=targets, methods=(method,)).maps[method]

            def two_bundles(method):
                def run():
                    maps = [explainer.explain(images, targets=targets, methods=(method,)).maps[method]
                            for explainer in each]
                    return aggregate_layers(method, maps, sizes, compat)
                return run

            differences = {method: float(np.abs(one_bundle(method)() - two_bundles(method)()).max())
                           for method in METHODS}
            times: dict[str, list[float]] = {}
            for _ in range(repeats):  # alternating, one call of each per round
                for method in METHODS:
                    for way, run in (("one_bundle", one_bundle(method)), ("two_bundles", two_bundles(method))):
                        times.setdefault(f"{method} {way}", []).append(median_seconds(run, repeats=1, warmup=0)[0])
        finally:
            for explainer in (one, *each):
                explainer.close()
    seconds = {name: float(np.median(values)) for name, values in times.items()}
    return {"images": n, "repeats": repeats, "model": f"resnet18 {' + '.join(LAYERS)} {size}x{size}",
            "classes": targets, "s_per_call": seconds, "times_s": times,
            "speedup": {method: seconds[f"{method} two_bundles"] / seconds[f"{method} one_bundle"] for method in METHODS},
            "max_abs_map_difference": differences, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}


def markdown(report: dict) -> str:
    seconds = report["s_per_call"]
    lines = ["# Several target layers: one bundle (one explain pass) against one bundle per layer", "",
             f"{report['machine']}; {report['model']}, {report['images']} images per call, median of "
             f"{report['repeats']} alternating calls; fusioncam on the CPU with compat=\"pytorch-grad-cam\" (a shared "
             f"machine, 1-minute load average {report['load_average_1min'][0]:.1f} before, "
             f"{report['load_average_1min'][1]:.1f} after). The maps of both ways differ by at most "
             f"{max(report['max_abs_map_difference'].values()):.1e}.", "",
             "| method | one bundle, s/call | two bundles, s/call | two / one |", "| --- | ---: | ---: | ---: |"]
    for method, ratio in report["speedup"].items():
        lines.append(f"| {method} | {seconds[f'{method} one_bundle']:.3f} | {seconds[f'{method} two_bundles']:.3f} | "
                     f"{ratio:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    n = int(argv[0]) if argv else 4
    repeats = int(argv[1]) if len(argv) > 1 else 5
    size = int(argv[2]) if len(argv) > 2 else 224
    before = os.getloadavg()[0]
    report = {"machine": cpu_label(), **measure(n, repeats, size)}
    report["load_average_1min"] = [before, os.getloadavg()[0]]  # the shared machine's load, before and after
    save_report(RESULTS, f"several-layers-bundle-{cpu_label()}", report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

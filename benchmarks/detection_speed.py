"""`python -m benchmarks.detection_speed`: seconds per image and per instance of detection explanations on the CPU.

torchvision SSDlite320-MobileNetV3 (random weights: the timing does not depend on them) exported at 320x320 with the
automatic target, one image, 1 and 4 named instances (anchors), Grad-CAM alone (the explain pass) and all seven
methods (one Score-CAM sweep per instance: each instance's masked forwards score that instance's class and box).
Each configuration once after a warm-up call. Writes benchmarks/results/detection-speed-<cpu>.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from pathlib import Path

import numpy as np

SEVEN = ("gradcam", "gradcam++", "xgradcam", "scorecam", "groupcam", "unioncam", "fusion")


def main(argv: list[str] | None = None) -> dict:
    import torch
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    from fusioncam import Explainer
    from fusioncam.export.detection_torch import export_torch_detection

    from .report import RESULTS, cpu_label, save_report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=91).eval()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        result = export_torch_detection(model, None, Path(folder) / "ssdlite", input_size=(args.size, args.size))
        export_seconds = time.perf_counter() - started
        image = np.random.default_rng(0).random((1, 3, args.size, args.size)).astype(np.float32)
        with Explainer(result, device="cpu") as explainer:
            explainer.explain(image, methods="gradcam", instances=[[0]])  # warm-up
            for methods in (("gradcam",), SEVEN):
                for count in (1, 4):
                    anchors = [[int(a) for a in np.linspace(0, result.bundle.manifest.output_size[0] - 1, count)]]
                    started = time.perf_counter()
                    explained = explainer.explain(image, methods=methods, instances=anchors)
                    seconds = time.perf_counter() - started
                    rows.append({"methods": "+".join(methods) if len(methods) == 1 else "all seven",
                                 "instances": count, "seconds_per_image": seconds,
                                 "seconds_per_instance": seconds / count,
                                 "scorer_forwards_run": int(explained.timings["scorer_forwards_run"])})
    layer = result.layer
    report = {"model": "torchvision ssdlite320_mobilenet_v3_large (random weights, 91 classes)",
              "input_size": [args.size, args.size], "target": result.bundle.manifest.target_layer,
              "channels": int(layer.shape[1]), "anchors": int(result.bundle.manifest.output_size[0]),
              "export_seconds": export_seconds, "rows": rows, "date": datetime.date.today().isoformat()}
    lines = [f"# Detection explanations on the CPU ({cpu_label()}), {report['date']}", "",
             f"{report['model']} at {args.size}x{args.size}, target `{report['target']}` (K={report['channels']}), "
             f"{report['anchors']} anchors; export {export_seconds:.1f} s", "",
             "| methods | instances | s per image | s per instance | masked forwards |", "|---|---|---|---|---|"]
    lines += [f"| {r['methods']} | {r['instances']} | {r['seconds_per_image']:.2f} | {r['seconds_per_instance']:.2f} | "
              f"{r['scorer_forwards_run']} |" for r in rows]
    save_report(RESULTS, f"detection-speed-{cpu_label()}", report, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()

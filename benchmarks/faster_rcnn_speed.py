"""`python -m benchmarks.faster_rcnn_speed`: seconds per image and per instance of Faster R-CNN explanations on the CPU.

torchvision fasterrcnn_resnet50_fpn (random weights, no download: the timing does not depend on them, except
through how many proposals survive NMS, which the report gives) exported at --size (default 320x320) with the
automatic target (backbone.body.layer4, K=2048) and --proposals slots (default 1000, torchvision's own), one image: the export, Grad-CAM (the explain pass) for the 1 and 4
best slots, and Fusion-CAM in fast mode (--fast channels) for 1 slot (every masked forward runs the whole detector,
RPN and NMS included). Each configuration once after a warm-up call. Writes
benchmarks/results/faster-rcnn-speed-<cpu>.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> dict:
    import torch
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    import fusioncam
    from fusioncam import Explainer
    from fusioncam.tasks.detection import InstanceSelection

    from .report import RESULTS, cpu_label, save_report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--fast", type=int, default=32, help="Fusion-CAM's max_channels")
    parser.add_argument("--proposals", type=int, default=1000,
                        help="the RPN's post_nms_top_n in eval mode (torchvision's default is 1000; "
                             "benchmarks/faster_rcnn_memory.py measures that count's memory)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval()
    model.rpn._post_nms_top_n["testing"] = args.proposals
    size = (args.size, args.size)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        result = fusioncam.export_torch(model, None, Path(folder) / "frcnn", input_size=size, task="detection")
        export_seconds = time.perf_counter() - started
        image = np.random.default_rng(0).random((1, 3, *size)).astype(np.float32)
        runs = [("gradcam", 1, None), ("gradcam", 4, None), ("fusion", 1, args.fast)]
        with Explainer(result, device="cpu") as warm:
            warm.explain(image, methods="gradcam", instances=InstanceSelection(min_score=0.0, max_instances=1))
        for method, count, channels in runs:
            with Explainer(result, device="cpu", max_channels=channels) as explainer:
                started = time.perf_counter()
                explained = explainer.explain(image, methods=method,
                                              instances=InstanceSelection(min_score=0.0, max_instances=count))
                seconds = time.perf_counter() - started
            rows.append({"method": method if channels is None else f"{method} (fast {channels})",
                         "instances": len(explained.classes), "seconds_per_image": seconds,
                         "seconds_per_instance": seconds / max(len(explained.classes), 1)})
    manifest = result.bundle.manifest
    report = {"model": f"torchvision fasterrcnn_resnet50_fpn (random weights, 91 classes, post_nms_top_n "
                       f"{args.proposals})", "input_size": list(size),
              "target": manifest.target_layer, "channels": int(result.layer.shape[1]),
              "slots": int(manifest.output_size[0]), "export_seconds": export_seconds, "rows": rows,
              "date": datetime.date.today().isoformat()}
    lines = [f"# Faster R-CNN explanations on the CPU ({cpu_label()}), {report['date']}", "",
             f"{report['model']} at {args.size}x{args.size}, target `{report['target']}` (K={report['channels']}), "
             f"{report['slots']} proposal slots; export {export_seconds:.1f} s", "",
             "| method | instances | s per image | s per instance |", "|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['instances']} | {r['seconds_per_image']:.2f} | {r['seconds_per_instance']:.2f} |"
              for r in rows]
    save_report(RESULTS, f"faster-rcnn-speed-{cpu_label()}", report, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()

"""`python -m benchmarks.faster_rcnn_box_score_speed`: Grad-CAM with FasterRCNNBoxScoreTarget, fusioncam's drop-in
against pytorch-grad-cam 1.5.7, on the CPU, same model, image and references, in one run.

torchvision fasterrcnn_resnet50_fpn (random weights, no download; roi_heads.score_thresh 0 so random weights give
detections; --proposals slots, torchvision's is 1000) at --size x --size with the transform not resizing, target
backbone.body.layer4; the references are the model's --references best detections at least --min-side pixels wide
and high (boxes rounded to integers, as pytorch-grad-cam's tutorial makes them). Both libraries are called once to warm up (fusioncam's exports its graphs
into a temporary cache then), then --repeats times each, alternating; the median seconds per call are reported with
the maps' largest difference. Writes benchmarks/results/faster-rcnn-box-score-speed-<cpu>.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import tempfile
import time

import numpy as np


def main(argv: list[str] | None = None) -> dict:
    import torch
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    from .report import RESULTS, cpu_label, save_report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--proposals", type=int, default=100)
    parser.add_argument("--references", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-side", type=float, default=32.0,
                        help="references only from detections at least this many pixels wide and high (random "
                             "weights also detect slivers a pixel high, where IoU's gradient magnifies the two "
                             "engines' float32 box differences)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval()
    model.rpn._post_nms_top_n["testing"] = args.proposals
    model.roi_heads.score_thresh = 0.0
    model.transform.min_size, model.transform.max_size = (args.size,), args.size
    image = torch.from_numpy(np.random.default_rng(0).random((1, 3, args.size, args.size)).astype(np.float32))
    with torch.no_grad():
        found = model(list(image))[0]
    sides = found["boxes"][:, 2:] - found["boxes"][:, :2]
    chosen = torch.nonzero((sides >= args.min_side).all(dim=1))[: args.references, 0]  # highest scores first
    labels = found["labels"][chosen].tolist()
    boxes = np.round(found["boxes"][chosen].numpy())
    layer = [model.backbone.body.layer4]
    with tempfile.TemporaryDirectory() as cache:
        os.environ["FUSIONCAM_CACHE"] = cache
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

        import fusioncam.pytorch_grad_cam as drop_in

        theirs_cam = pytorch_grad_cam.GradCAM(model, target_layers=layer)
        ours_cam = drop_in.GradCAM(model, target_layers=layer)
        targets = [FasterRCNNBoxScoreTarget(labels, boxes)]
        started = time.perf_counter()
        ours = ours_cam(image, targets=targets)
        first_call = time.perf_counter() - started
        theirs = theirs_cam(image, targets=targets)
        times: dict[str, list[float]] = {"fusioncam": [], "pytorch-grad-cam": []}
        for _ in range(args.repeats):
            for name, cam in (("fusioncam", ours_cam), ("pytorch-grad-cam", theirs_cam)):
                started = time.perf_counter()
                cam(image, targets=targets)
                times[name].append(time.perf_counter() - started)
        ours_cam.release()
    median = {name: statistics.median(values) for name, values in times.items()}
    report = {"model": f"torchvision fasterrcnn_resnet50_fpn (random weights, post_nms_top_n {args.proposals}, "
                       f"score_thresh 0)", "input_size": [args.size, args.size], "target": "backbone.body.layer4",
              "references": len(labels), "min_side": args.min_side, "target_value": float(ours_cam.box_scores[0]),
              "first_call_seconds_fusioncam_with_export": first_call, "seconds": times, "median_seconds": median,
              "ratio": median["pytorch-grad-cam"] / median["fusioncam"],
              "max_map_difference": float(np.abs(ours - theirs).max()), "load_average": os.getloadavg(),
              "date": datetime.date.today().isoformat()}
    lines = [f"# Grad-CAM with FasterRCNNBoxScoreTarget on the CPU ({cpu_label()}), {report['date']}", "",
             f"{report['model']} at {args.size}x{args.size}, target `backbone.body.layer4`, {len(labels)} references; "
             f"load average {report['load_average'][0]:.1f} (other jobs on the machine); first fusioncam call "
             f"(export into the cache) {first_call:.1f} s; maps' largest difference {report['max_map_difference']:.2e}",
             "", "| library | median s per call | calls |", "|---|---|---|"]
    lines += [f"| {name} | {median[name]:.2f} | {len(times[name])} |" for name in times]
    lines += ["", f"pytorch-grad-cam / fusioncam: {report['ratio']:.2f}x"]
    save_report(RESULTS, f"faster-rcnn-box-score-speed-{cpu_label()}", report, "\n".join(lines) + "\n")
    return report


if __name__ == "__main__":
    main()

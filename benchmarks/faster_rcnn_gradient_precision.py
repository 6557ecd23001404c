"""`python -m benchmarks.faster_rcnn_gradient_precision [--layer backbone.body.1]`: where the Faster R-CNN gradient
gap at early backbone layers comes from, measured against a float64 reference.

The seeded fasterrcnn_mobilenet_v3_large_fpn of the tests (128x128, tests/support/faster_rcnn_models.py) exported at
--layer; the default instances of the tests' first two random images (3 per image, min_score 0). For each instance,
the gradient of its score at the layer from: fusioncam's explain graph (float32, ONNX Runtime), torch autograd in
float32 (what the tests compare with), and torch autograd of the same model in float64 (model.double(), the same
proposal boxes). Each pair's max absolute difference relative to the float64 gradient's largest magnitude; and how
many inputs of the backbone's ReLU / Hardswish / Hardsigmoid fall in another piece of the function in float32 than in
float64 (a kink crossed by rounding would be a real difference, not rounding). Writes
benchmarks/results/faster-rcnn-gradient-precision-<cpu>.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
from pathlib import Path

import numpy as np


def _pieces(module, value):
    import torch

    if isinstance(module, torch.nn.ReLU):
        return value > 0
    return (value > -3).int() + (value >= 3).int()  # hardswish / hardsigmoid: three pieces


def kink_crossings(model32, model64, image) -> int:
    """Elements of the backbone's piecewise activations' inputs in another piece in float32 than in float64."""
    import torch

    seen: dict[tuple[str, str], list] = {}
    hooks = []
    for tag, model in (("32", model32), ("64", model64)):
        for name, module in model.backbone.named_modules():
            if isinstance(module, (torch.nn.ReLU, torch.nn.Hardswish, torch.nn.Hardsigmoid)):
                hooks.append(module.register_forward_hook(
                    lambda m, i, o, key=(name, tag): seen.setdefault(key, []).append((m, i[0].detach())) and None))
    try:
        with torch.no_grad():
            model32.backbone(image[None])
            model64.backbone(image[None].double())
    finally:
        for hook in hooks:
            hook.remove()
    crossed = 0
    for (name, tag), calls in seen.items():
        if tag == "32":
            for (module, low), (_, high) in zip(calls, seen[(name, "64")]):
                crossed += int((_pieces(module, low) != _pieces(module, high)).sum())
    return crossed


def main(argv: list[str] | None = None) -> dict:
    import onnxruntime as ort
    import torch

    import fusioncam
    from fusioncam import Explainer
    from fusioncam.tasks.detection import InstanceSelection
    from tests.support.faster_rcnn_models import SIZE, box_head_scores, faster_rcnn, normalised, proposals

    from .report import RESULTS, cpu_label, save_report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", default="backbone.body.1")
    args = parser.parse_args(argv)
    model32, model64 = faster_rcnn(), faster_rcnn().double()
    images = np.random.default_rng(0).random((4, 3, *SIZE)).astype(np.float32)
    inputs = normalised(model32, images[:2]).numpy()
    with tempfile.TemporaryDirectory() as folder:
        bundle = Path(folder) / "frcnn.fcam"
        fusioncam.export_torch(model32, args.layer, bundle, input_size=SIZE, task="detection")
        with Explainer(bundle, device="cpu") as explainer:
            found = explainer.explain(inputs, methods="gradcam",
                                      instances=InstanceSelection(min_score=0.0, max_instances=3))
        session = ort.InferenceSession(str(bundle / "explain.onnx"), providers=["CPUExecutionProvider"])
        index = found.image_index
        (graph,) = session.run(["gradients"], {
            "input": inputs[index], "anchor": found.anchors, "target": found.classes,
            "reference_box": found.reference_boxes, "instance_image": index})

    def autograd(model, image, slot, cls, boxes):
        captured = []
        handle = model.get_submodule(args.layer).register_forward_hook(lambda m, i, o: captured.append(o))
        try:
            scores, _ = box_head_scores(model, image, boxes)
            (gradient,) = torch.autograd.grad(scores[slot, cls], captured[0])
        finally:
            handle.remove()
        return gradient[0].double().numpy()

    rows = []
    crossings = {int(i): kink_crossings(model32, model64, torch.from_numpy(inputs[i])) for i in set(index.tolist())}
    for row, (image, slot, cls) in enumerate(zip(index, found.anchors, found.classes)):
        x = torch.from_numpy(inputs[image])
        boxes = proposals(model32, x)
        low = autograd(model32, x, int(slot), int(cls), boxes)
        high = autograd(model64, x.double(), int(slot), int(cls), boxes.double())
        scale = float(np.abs(high).max())
        rows.append({"image": int(image), "slot": int(slot), "class": int(cls),
                     "fusioncam_vs_torch32": float(np.abs(graph[row] - low).max()) / scale,
                     "fusioncam_vs_torch64": float(np.abs(graph[row] - high).max()) / scale,
                     "torch32_vs_torch64": float(np.abs(low - high).max()) / scale})
    report = {"model": "fasterrcnn_mobilenet_v3_large_fpn, seeded random weights (tests/support/faster_rcnn_models.py)",
              "input_size": list(SIZE), "layer": args.layer, "kink_crossings_per_image": crossings, "rows": rows,
              "date": datetime.date.today().isoformat()}
    lines = [f"# Faster R-CNN gradients at `{args.layer}` against float64 autograd ({cpu_label()}), {report['date']}",
             "", f"{report['model']}, {SIZE[0]}x{SIZE[1]}; max |difference| / max |float64 gradient|; piecewise "
             f"activation inputs in another piece in float32 than float64, per image: {crossings}", "",
             "| image | slot | class | fusioncam f32 vs torch f32 | fusioncam f32 vs torch f64 | torch f32 vs torch f64 |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['image']} | {r['slot']} | {r['class']} | {r['fusioncam_vs_torch32']:.1e} | "
              f"{r['fusioncam_vs_torch64']:.1e} | {r['torch32_vs_torch64']:.1e} |" for r in rows]
    save_report(RESULTS, f"faster-rcnn-gradient-precision-{cpu_label()}", report, "\n".join(lines) + "\n")
    return report


if __name__ == "__main__":
    main()

"""`python -m benchmarks.fpn_levels_speed`: what a feature pyramid target costs against one backbone layer, on the CPU.

torchvision retinanet_resnet50_fpn (random weights, seeded, 91 classes, no download: the timing does not depend on
the weights), its transform set not to resize, exported twice in one run at --size (default 320x320): with the
default target (the FPN's levels; at 320 all five, P3-P7 at 40, 20, 10, 5 and 3 pixels a side, 256 channels each)
and with `backbone.body.layer4` (K=2048). For each bundle: the export's seconds; Grad-CAM (the explain pass) for 1
and for 4 named instances of one image (the centre anchor of levels '0', '1', '2' and 'p7', the same anchors for
both bundles); Fusion-CAM in fast mode (--fast channels, which caps each level: 5 x 32 masked forwards per instance
against 32 at layer4) for the first instance, with the scorer forwards it ran. Each call once, after a warm-up
Grad-CAM call on the same Explainer. For the four instances it also records each level's share of the combined
Grad-CAM map: the maximum of each level's map in result.layer_maps (a level the instance's head output does not
read gets an exactly zero gradient, so a zero map). Writes benchmarks/results/fpn-levels-speed-<cpu>.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import tempfile
import time
from pathlib import Path

import numpy as np

LAYER4 = "backbone.body.layer4"
INSTANCE_LEVELS = ("0", "1", "2", "p7")  # the FPN levels whose centre anchors are explained (first: the 1-instance run)


def level_anchor_ranges(feature_sizes: list[tuple[int, int]], anchors_per_location: int) -> list[tuple[int, int]]:
    """[start, stop) of each level's anchors in a torchvision dense head's output: levels in order, each level's
    locations row-major and, at each location, its anchors_per_location anchors (RetinaNetHead's reshape of
    [N, A*K, H, W] into [N, H*W*A, K], and AnchorGenerator's shifts x base anchors)."""
    ranges, start = [], 0
    for height, width in feature_sizes:
        stop = start + height * width * anchors_per_location
        ranges.append((start, stop))
        start = stop
    return ranges


def centre_anchor(start: int, size: tuple[int, int], anchors_per_location: int, which: int) -> int:
    """The index of base anchor `which` at the centre location of a level whose anchors begin at `start`."""
    height, width = size
    return start + ((height // 2) * width + width // 2) * anchors_per_location + which


def level_maxima(layer_maps: dict[str, dict[str, np.ndarray]], method: str, row: int) -> dict[str, float]:
    """Each level's largest value in one instance's map of `method` (0.0 for a level that adds nothing)."""
    return {label: float(maps[method][row].max()) for label, maps in layer_maps.items()}


def measure_bundle(result, image: np.ndarray, anchors: list[int], fast: int) -> dict:
    """Grad-CAM for the first and for all `anchors` of one image, Fusion-CAM (max_channels=fast) for the first, each
    once after a warm-up Grad-CAM call; max_channels touches only the Score-CAM sweep, so one Explainer serves all."""
    from fusioncam import Explainer

    rows, explained = [], {}
    load_before = os.getloadavg()[0]
    with Explainer(result, device="cpu", max_channels=fast) as explainer:
        explainer.explain(image, methods="gradcam", instances=[anchors[:1]])  # warm-up
        for key, method, chosen in (("gradcam_1", "gradcam", anchors[:1]), ("gradcam_4", "gradcam", anchors),
                                    ("fusion_1", "fusion", anchors[:1])):
            started = time.perf_counter()
            found = explainer.explain(image, methods=method, instances=[chosen])
            seconds = time.perf_counter() - started
            explained[key] = found
            rows.append({"run": key, "method": method if method == "gradcam" else f"fusion (fast {fast})",
                         "instances": len(chosen), "seconds_per_image": seconds,
                         "seconds_per_instance": seconds / len(chosen),
                         "scorer_forwards_run": int(found.timings["scorer_forwards_run"]),
                         "anchors": [int(a) for a in found.anchors], "classes": [int(c) for c in found.classes]})
    return {"rows": rows, "explained": explained, "load_average_1min": [load_before, os.getloadavg()[0]]}


def markdown(report: dict) -> str:
    """The tables people read: both bundles side by side (ratios of numbers from this one run) and each level's
    maximum in the four instances' Grad-CAM maps."""
    fpn, layer4 = report["bundles"]["fpn_levels"], report["bundles"]["layer4"]
    size = report["input_size"]
    levels = ", ".join(f"{label} {h}x{w}" for label, (h, w) in zip(fpn["target_layers"], fpn["feature_sizes"]))
    lines = [f"# Feature pyramid target against one layer, on the CPU ({report['cpu']}), {report['date']}", "",
             f"{report['model']} at {size[0]}x{size[1]}, {report['anchor_count']} anchors, one image; "
             f"1-minute load average {report['load_average_1min'][0]:.1f} before and "
             f"{report['load_average_1min'][1]:.1f} after the run (a shared machine: an upper bound).", "",
             f"FPN target (the default): {len(fpn['target_layers'])} levels of {fpn['channels'][0]} channels "
             f"({levels}); layer4 target: `{layer4['target_layers'][0]}`, K={layer4['channels'][0]} at "
             f"{layer4['feature_sizes'][0][0]}x{layer4['feature_sizes'][0][1]}.", "",
             "| what | FPN levels | layer4 | FPN / layer4 |", "|---|---|---|---|",
             f"| export (s) | {fpn['export_seconds']:.1f} | {layer4['export_seconds']:.1f} | "
             f"{fpn['export_seconds'] / layer4['export_seconds']:.2f}x |"]
    for ours, theirs in zip(fpn["rows"], layer4["rows"]):
        lines.append(f"| {ours['method']}, {ours['instances']} instance{'s' if ours['instances'] > 1 else ''} (s) | "
                     f"{ours['seconds_per_image']:.2f} | {theirs['seconds_per_image']:.2f} | "
                     f"{ours['seconds_per_image'] / theirs['seconds_per_image']:.2f}x |")
        if ours["scorer_forwards_run"] or theirs["scorer_forwards_run"]:
            lines.append(f"| {ours['method']}: scorer forwards run | {ours['scorer_forwards_run']} | "
                         f"{theirs['scorer_forwards_run']} | |")
    labels = fpn["target_layers"]
    lines += ["", "Each level's maximum in the four instances' Grad-CAM maps (FPN bundle; a level the instance's "
                  "head output does not read has an exactly zero gradient, so a zero map and no share of the "
                  "combined map):", "",
              "| instance (anchor, its level) | " + " | ".join(f"`{label}`" for label in labels) + " |",
              "|---|" + "---|" * len(labels)]
    for row in report["level_contributions"]:
        lines.append(f"| {row['anchor']} ({row['level']}) | "
                     + " | ".join(f"{row['gradcam_level_max'][label]:.3g}" for label in labels) + " |")
    fusion = report["fusion_level_max"]
    lines += ["", f"Fusion-CAM (fast {report['fast']}) of the first instance, each level's maximum: "
              + ", ".join(f"`{label}` {fusion[label]:.3g}" for label in labels)
              + " (its Score-CAM part masks the image with every level's channels).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    import torch
    import torchvision
    from torchvision.models.detection import retinanet_resnet50_fpn

    from fusioncam.export.detection_torch import export_torch_detection

    from .report import RESULTS, cpu_label, save_report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--fast", type=int, default=32, help="Fusion-CAM's max_channels (per level)")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    torch.manual_seed(0)
    model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).eval()
    model.transform.min_size, model.transform.max_size = (args.size,), args.size  # no resizing: the bundle's size
    per_location = int(model.anchor_generator.num_anchors_per_location()[0])
    size = (args.size, args.size)
    image = np.random.default_rng(0).random((1, 3, *size)).astype(np.float32)
    bundles, anchors, levels = {}, None, None
    with tempfile.TemporaryDirectory() as folder:
        for key, target in (("fpn_levels", None), ("layer4", LAYER4)):  # in this order, in one process
            started = time.perf_counter()
            result = export_torch_detection(model, target, Path(folder) / key, input_size=size)
            export_seconds = time.perf_counter() - started
            bundle = result.bundle
            if anchors is None:  # from the FPN bundle's levels: the same anchors for both bundles
                labels = bundle.layer_names
                ranges = level_anchor_ranges(bundle.layer_feature_sizes, per_location)
                if ranges[-1][1] != int(bundle.manifest.output_size[0]):
                    raise RuntimeError(f"the FPN levels' anchors add up to {ranges[-1][1]}, the bundle has "
                                       f"{bundle.manifest.output_size[0]}: a level was left out at this size")
                levels = [f"backbone.fpn['{name}']" for name in INSTANCE_LEVELS]
                anchors = [centre_anchor(ranges[labels.index(level)][0], bundle.layer_feature_sizes[
                    labels.index(level)], per_location, per_location // 2) for level in levels]
            measured = measure_bundle(result, image, anchors, args.fast)
            bundles[key] = {"target_layers": bundle.layer_names,
                            "feature_sizes": [list(s) for s in bundle.layer_feature_sizes],
                            "channels": [int(layer.shape[1]) for layer in (result.layers or (result.layer,))],
                            "export_seconds": export_seconds, "notes": list(result.notes), **measured}
    fpn = bundles["fpn_levels"]
    four = fpn["explained"].pop("gradcam_4")
    fusion = fpn["explained"].pop("fusion_1")
    contributions = [{"anchor": int(anchor), "level": level, "class": int(four.classes[row]),
                      "gradcam_level_max": level_maxima(four.layer_maps, "gradcam", row)}
                     for row, (anchor, level) in enumerate(zip(anchors, levels))]
    for entry in bundles.values():
        entry.pop("explained")
    report = {"model": "torchvision retinanet_resnet50_fpn (random weights, torch.manual_seed(0), 91 classes)",
              "torch": torch.__version__, "torchvision": torchvision.__version__, "input_size": list(size),
              "anchor_count": int(result.bundle.manifest.output_size[0]), "anchors_per_location": per_location,
              "instance_anchors": anchors, "instance_levels": levels, "fast": args.fast,
              "order": "FPN bundle exported and explained first, then layer4, in one process",
              "bundles": bundles, "level_contributions": contributions,
              "fusion_level_max": level_maxima(fusion.layer_maps, "fusion", 0), "cpu": cpu_label(),
              "date": datetime.date.today().isoformat()}
    report["load_average_1min"] = [load_before, os.getloadavg()[0]]
    text = markdown(report)
    save_report(RESULTS, f"fpn-levels-speed-{cpu_label()}", report, text + "\n")
    return report


if __name__ == "__main__":
    main()

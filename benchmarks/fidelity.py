"""`python -m benchmarks.fidelity`: what fast mode and the float16 scorer cost in faithfulness, on real weights.

EfficientNet-Lite0 with its ImageNet weights, the five sample images, two target layers: `_blocks.15` (K=320)
and the conv-head ReLU6 output (K=1280). Each variant (float16 scorer; fast mode for k in FAST_K) is compared
with exact fp32 Fusion-CAM: map Pearson r and largest absolute difference per image, scorer forwards, seconds
for the five images, and the metrics of `fusioncam evaluate` (deletion and insertion AUC, average drop,
increase in confidence) of every variant's maps, all scored by the same exact fp32 scorer. Writes
benchmarks/results/fidelity-<device>.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import numpy as np

import fusioncam
from fusioncam.images import IMAGENET_MEAN, IMAGENET_STD, preprocess, sample_images
from fusioncam.metrics.evaluation import evaluate_maps

from .models import build_model, efficientnet_conv_head_bundle, export_bundle
from .report import RESULTS, save_report
from .run import device_label, map_agreement

FAST_K = (16, 32, 64, 128, 256)


def variant_options(bundle) -> dict[str, dict]:
    """Explainer options of each variant this bundle can run, exact first."""
    options = {"exact fp32": {}}
    if bundle.scorer_fp16_path is not None:
        options["fp16 scorer"] = {"precision": "fp16"}
    for k in FAST_K:
        if k < bundle.manifest.channels:
            options[f"fast k={k}"] = {"max_channels": k}
    return options


def study_layer(bundle, device: str, images: np.ndarray, names: list[str]) -> dict:
    """Every variant of one bundle on the images against exact fp32: agreement, forwards, seconds, metrics."""
    rows, maps = {}, {}
    for label, options in variant_options(bundle).items():
        explainer = fusioncam.Explainer(bundle, device=device, **options)
        if not options:
            exact_explainer = explainer  # the metrics score every variant's maps with the exact fp32 scorer
        explainer.explain(images[:1])  # warm-up
        start = time.perf_counter()
        explanation = explainer.explain(images, names=names)
        seconds = time.perf_counter() - start
        maps[label] = explanation.fusion
        rows[label] = {"seconds": seconds, "forwards_run": int(explanation.forwards_run.sum()),
                       "classes": explanation.classes.tolist()}
    exact = maps["exact fp32"]
    for label, row in rows.items():
        per_image = [map_agreement(maps[label][i], exact[i]) for i in range(len(images))]
        row["pearson_per_image"] = [a["pearson"] for a in per_image]
        row["max_abs_diff_per_image"] = [a["max_abs_diff"] for a in per_image]
    classes = np.asarray(rows["exact fp32"]["classes"], dtype=np.int64)
    evaluation = evaluate_maps(exact_explainer, images, maps, targets=classes, names=names)
    for label, scores in evaluation.scores.items():
        rows[label]["metrics_per_image"] = {metric: values.tolist() for metric, values in scores.per_image.items()}
        rows[label]["metrics_mean"] = {metric: float(np.mean(values)) for metric, values in scores.per_image.items()}
    return {"layer": bundle.manifest.target_layer, "channels": bundle.manifest.channels, "variants": rows}


def markdown(report: dict) -> str:
    """One table per layer: each variant's agreement with exact fp32 and its metrics beside exact's."""
    lines = [f"# Fast mode and float16 fidelity: EfficientNet-Lite0 (ImageNet weights), {report['device']}, "
             f"{report['date']}", "", f"Images: {', '.join(report['images'])}. Each variant against exact fp32 "
             "Fusion-CAM; metrics of every variant's maps scored by the exact fp32 scorer (`fusioncam evaluate`'s).", ""]
    for study in report["layers"]:
        exact = study["variants"]["exact fp32"]
        lines += [f"## `{study['layer']}` (K={study['channels']})", "",
                  "| variant | seconds (5 images) | forwards | mean r | min r | max abs diff | deletion AUC | insertion AUC "
                  "| average drop % | increase in conf. % |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for label, row in study["variants"].items():
            m = row["metrics_mean"]
            lines.append(
                f"| {label} | {row['seconds']:.2f} ({exact['seconds'] / row['seconds']:.1f}x) | {row['forwards_run']} | "
                f"{np.mean(row['pearson_per_image']):.4f} | {min(row['pearson_per_image']):.4f} | "
                f"{max(row['max_abs_diff_per_image']):.3f} | {m['deletion_auc']:.4f} | {m['insertion_auc']:.4f} | "
                f"{m['average_drop']:.2f} | {m['increase_in_confidence']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the study on one device and write JSON + markdown."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fidelity", description=__doc__)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fusioncam-fidelity"))
    args = parser.parse_args(argv)

    device = fusioncam.runtime.device_select.select_device(args.device)
    args.work.mkdir(parents=True, exist_ok=True)
    samples = sample_images()
    names = list(samples)
    images = np.stack([preprocess(rgb, (224, 224), IMAGENET_MEAN, IMAGENET_STD) for rgb in samples.values()])
    model, layer, class_names = build_model("efficientnet_lite0")
    bundles = [export_bundle(model, layer, args.work / "blocks15.fcam", class_names),
               efficientnet_conv_head_bundle(args.work, fp16_scorer=True).bundle]
    report = {"date": datetime.date.today().isoformat(), "device": str(device), "images": names,
              "layers": [study_layer(bundle, str(device), images, names) for bundle in bundles]}
    save_report(args.out, "fidelity-" + device_label(device), report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

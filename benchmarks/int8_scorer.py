"""`python -m benchmarks.int8_scorer`: the INT8 scorer (`export(..., int8_scorer=True)`, `Explainer(precision="int8")`)
against exact float32 on the CPU, side by side in one run.

Per model (EfficientNet-Lite0 with its ImageNet weights at `_blocks.15`; torchvision ResNet-50 with seeded random
weights at `layer4`, no ImageNet weights being installed), on the sample photos (`--model-images resnet50=2` explains
only the first two with that model: exact Fusion-CAM at K = 2048 is 2051 scorer forwards per image): the scorer's throughput in float32 and INT8 at the explainer's batch,
Fusion-CAM seconds per image in float32 and INT8 (each image explained by both, alternating, after a warm-up of
each), the Pearson correlation of each INT8 map with the exact float32 map, and the faithfulness metrics of
`fusioncam evaluate` (deletion/insertion AUC, average drop, increase in confidence) of both sets of maps, all scored
by the float32 scorer, with their differences. JSON and markdown land in benchmarks/results/int8-scorer-<cpu>.*.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import fusioncam
from fusioncam.benchmarking.floor import scorer_throughput
from fusioncam.export.int8_scorer import CALIBRATION_METADATA, int8_agreement
from fusioncam.images import IMAGENET_MEAN, IMAGENET_STD, preprocess, sample_images
from fusioncam.metrics.evaluation import evaluate_maps

from .models import build_model
from .report import RESULTS, cpu_label, save_report
from .run import map_agreement

MODELS = ("efficientnet_lite0", "resnet50")


def int8_settings_of(bundle) -> str:
    """How the bundle's INT8 scorer was quantized and calibrated (its graph's metadata)."""
    import onnx

    model = onnx.load(str(bundle.scorer_int8_path), load_external_data=False)
    return next((entry.value for entry in model.metadata_props if entry.key == CALIBRATION_METADATA), "not recorded")


def study(model_name: str, work: Path, images: np.ndarray, names: list[str], faithfulness: bool,
          explain: bool = True, count: int | None = None) -> dict:
    """One model: export with the INT8 scorer, then the float32 and INT8 explainers side by side (with `explain`
    False only the scorers: throughput and logits on the photos; `count` explains only the first `count` photos)."""
    model, layer, class_names = build_model(model_name)
    started = time.perf_counter()
    bundle = fusioncam.export_torch(model, layer, work / f"{model_name}-int8.fcam", class_names=class_names,
                                    int8_scorer=True).bundle
    export_s = time.perf_counter() - started
    exact = fusioncam.Explainer(bundle, device="cpu")
    int8 = fusioncam.Explainer(bundle, device="cpu", precision="int8")
    row: dict = {"model": model_name, "layer": layer, "channels": bundle.manifest.channels,
                 "int8_settings": int8_settings_of(bundle),
                 "weights": "ImageNet" if model_name == "efficientnet_lite0" else "seeded random (torch.manual_seed(0))",
                 "export_with_int8_s": export_s, "batch_size": exact.batch_size}
    row["scorer_images_per_s"] = {"fp32": scorer_throughput(exact, seconds=3.0), "int8": scorer_throughput(int8, seconds=3.0)}
    row["scorer_speedup"] = row["scorer_images_per_s"]["int8"] / row["scorer_images_per_s"]["fp32"]
    row["logits_on_photos"] = int8_agreement(np.asarray(exact.predict(images)), np.asarray(int8.predict(images)))
    if not explain:
        exact.close()
        int8.close()
        return row
    images, names = images[:count], names[:count]
    row["images"] = names
    for explainer in (exact, int8):  # warm-up: both graphs at every run size (a full Fusion-CAM would cost 2051
        explainer.warm_up()            # forwards per precision on ResNet-50)
    seconds = {"fp32": [], "int8": []}
    maps = {"fp32": [], "int8": []}
    classes = []
    for i in range(len(images)):
        for label, explainer in (("fp32", exact), ("int8", int8)):
            start = time.perf_counter()
            explanation = explainer.explain(images[i : i + 1])
            seconds[label].append(time.perf_counter() - start)
            maps[label].append(explanation.fusion[0])
            if label == "fp32":
                classes.append(int(explanation.classes[0]))
        print(f"{model_name} {names[i]}: fp32 {seconds['fp32'][-1]:.2f} s, int8 {seconds['int8'][-1]:.2f} s", flush=True)
    row["fusion_seconds_per_image"] = {label: float(np.mean(values)) for label, values in seconds.items()}
    row["fusion_seconds"] = seconds
    row["fusion_speedup"] = row["fusion_seconds_per_image"]["fp32"] / row["fusion_seconds_per_image"]["int8"]
    agreement = [map_agreement(maps["int8"][i], maps["fp32"][i]) for i in range(len(images))]
    row["pearson_per_image"] = dict(zip(names, (a["pearson"] for a in agreement)))
    row["pearson_mean"] = float(np.mean([a["pearson"] for a in agreement]))
    row["pearson_min"] = float(np.min([a["pearson"] for a in agreement]))
    row["classes"] = classes
    if faithfulness:
        stacked = {label: np.stack(values) for label, values in maps.items()}
        scores = evaluate_maps(exact, images, stacked, targets=np.asarray(classes), names=names).scores
        means = {label: {metric: float(np.mean(values)) for metric, values in score.per_image.items()}
                 for label, score in scores.items()}
        row["faithfulness_mean"] = means
        row["faithfulness_delta"] = {metric: means["int8"][metric] - means["fp32"][metric] for metric in means["fp32"]}
    exact.close()
    int8.close()
    return row


def markdown(report: dict) -> str:
    """The table people read: speed-ups, agreement and faithfulness deltas per model."""
    lines = [f"# INT8 scorer against exact float32, CPU ({report['machine_record']['cpu_model']}, "
             f"{report['machine_record']['cpu_cores']} cores), {report['machine_record']['recorded_at']}", "",
             f"Images: {', '.join(report['images'])} (per model: the first n given in the table). Maps: "
             f"Fusion-CAM, exact (no fast mode). INT8 scorer: {report['models'][0]['int8_settings']}.", "",
             "| model | K | n | scorer img/s fp32 / int8 | Fusion-CAM s/image fp32 / int8 | speed-up | mean / min r vs fp32 "
             "| deletion AUC delta | insertion AUC delta | average drop delta |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in report["models"]:
        tput, logits = row["scorer_images_per_s"], row["logits_on_photos"]
        if "fusion_seconds_per_image" not in row:
            lines.append(f"| {row['model']} `{row['layer']}` ({row['weights']}) | {row['channels']} | 0 | "
                         f"{tput['fp32']:.1f} / {tput['int8']:.1f} ({row['scorer_speedup']:.2f}x) | not measured | | | | "
                         f"| |")
            continue
        sec = row["fusion_seconds_per_image"]
        delta = row.get("faithfulness_delta", {})
        fmt = lambda key: f"{delta[key]:+.4f}" if key in delta else "not measured"  # noqa: E731
        lines.append(f"| {row['model']} `{row['layer']}` ({row['weights']}) | {row['channels']} | {len(row['classes'])} | "
                     f"{tput['fp32']:.1f} / {tput['int8']:.1f} ({row['scorer_speedup']:.2f}x) | "
                     f"{sec['fp32']:.2f} / {sec['int8']:.2f} | "
                     f"{row['fusion_speedup']:.2f}x | {row['pearson_mean']:.4f} / {row['pearson_min']:.4f} | "
                     f"{fmt('deletion_auc')} | {fmt('insertion_auc')} | {fmt('average_drop')} |")
    lines += ["", "INT8 logits against float32 on the photos (largest difference relative to the largest float logit; "
              "images with the same top class):"]
    lines += [f"- {row['model']}: {row['logits_on_photos']['max_relative_difference']:.3f}, top-1 agreement "
              f"{row['logits_on_photos']['top1_agreement']:.0%}" for row in report["models"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Measure each model and write JSON + markdown."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.int8_scorer", description=__doc__)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--images", type=int, default=5, help="how many of the five sample photos (default all)")
    parser.add_argument("--model-images", nargs="*", default=[], metavar="MODEL=N",
                        help="explain only the first N photos with MODEL (e.g. resnet50=2)")
    parser.add_argument("--skip-faithfulness", action="store_true")
    parser.add_argument("--scorer-only", nargs="*", choices=MODELS, default=[],
                        help="models measured by their scorers only (throughput, logits on the photos), no Fusion-CAM")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--label", default="", help="suffix of the result files' names (int8-scorer-<cpu>-<label>)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fusioncam-int8"))
    args = parser.parse_args(argv)

    args.work.mkdir(parents=True, exist_ok=True)
    samples = dict(list(sample_images().items())[: args.images])
    names = list(samples)
    images = np.stack([preprocess(rgb, (224, 224), IMAGENET_MEAN, IMAGENET_STD) for rgb in samples.values()])
    counts = {}
    for item in args.model_images:
        model_name, _, count = item.partition("=")
        if model_name not in MODELS or not count.isdigit() or int(count) < 1:
            parser.error(f"--model-images takes MODEL=N with MODEL one of {', '.join(MODELS)}; got {item!r}")
        counts[model_name] = int(count)
    from .report import machine_record

    stem = "int8-scorer-" + cpu_label() + (f"-{args.label}" if args.label else "")
    report: dict = {"images": names, "models": []}
    for name in args.models:  # saved after each model: a long run that is stopped keeps what it measured
        report["models"].append(study(name, args.work, images, names, not args.skip_faithfulness,
                                      explain=name not in args.scorer_only, count=counts.get(name)))
        report["machine_record"] = machine_record()
        save_report(args.out, stem, report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

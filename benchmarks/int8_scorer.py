"""`python -m benchmarks.int8_scorer`: the INT8 scorer (`export(..., int8_scorer=True)`, `Explainer(precision="int8")`)
against exact float32 on the CPU, side by side in one run.

Per model (EfficientNet-Lite0 with its ImageNet weights at `_blocks.15`; torchvision ResNet-50 with seeded random
weights at `layer4`, no ImageNet weights being installed), on the sample photos (`--model-images resnet50=2` explains
only the first two with that model: exact Fusion-CAM at K = 2048 is 2051 scorer forwards per image; `--photos
coffee,rocket,motorcycle` or `--photos 2,3,4` takes those photos only, to measure the rest in another run): the scorer's
throughput in float32 and INT8 at the explainer's batch, then Fusion-CAM with the float32 explainer and one INT8
explainer per `--rescore M` (`Explainer(precision="int8", int8_rescore=M)`: the sweep's M top channels per image
rescored in float32): seconds per image (each image explained by every explainer in turn, the first rotating from
image to image, after a warm-up of each),
the Pearson correlation of each INT8 map with the exact float32 map, and the faithfulness metrics of
`fusioncam evaluate` (deletion/insertion AUC, average drop, increase in confidence) of every set of maps, all scored
by the float32 scorer, with their differences. `--layer MODEL=LAYER` explains MODEL at another module path (e.g.
efficientnet_lite0=_conv_head), or at EfficientNet-Lite0's conv-head ReLU6 output (`efficientnet_lite0=head-relu6`:
the last feature map before the pooling, bundled from the model's plain ONNX export, where no module path names it).
JSON and markdown land in benchmarks/results/int8-scorer-<cpu>.*.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

import fusioncam
from fusioncam.benchmarking.floor import scorer_throughput
from fusioncam.export.int8_scorer import CALIBRATION_METADATA, int8_agreement
from fusioncam.images import IMAGENET_MEAN, IMAGENET_STD, preprocess, sample_images
from fusioncam.metrics.evaluation import evaluate_maps

from .models import build_model, efficientnet_conv_head_bundle
from .report import RESULTS, cpu_label, save_report
from .run import map_agreement

MODELS = ("efficientnet_lite0", "resnet50")
HEAD_RELU6 = "head-relu6"  # --layer efficientnet_lite0=head-relu6: Lite0's conv-head ReLU6 output (ONNX tensor)


def int8_settings_of(bundle) -> str:
    """How the bundle's INT8 scorer was quantized and calibrated (its graph's metadata)."""
    import onnx

    model = onnx.load(str(bundle.scorer_int8_path), load_external_data=False)
    return next((entry.value for entry in model.metadata_props if entry.key == CALIBRATION_METADATA), "not recorded")


def chosen_photos(text: str, available: list[str]) -> list[str]:
    """The sample photos `--photos` names (comma-separated names or 0-based indices into `available`), in the order
    given; ValueError, naming the item and the choices, for an unknown or repeated photo."""
    chosen = []
    for item in (part.strip() for part in text.split(",")):
        if item.isdigit() and int(item) < len(available):
            item = available[int(item)]
        if item not in available:
            raise ValueError(f"--photos: {item!r} is not a sample photo; give names or indices 0-{len(available) - 1} "
                             f"of {', '.join(available)}")
        if item in chosen:
            raise ValueError(f"--photos: {item!r} is given twice")
        chosen.append(item)
    return chosen


def variant_label(rescore: int) -> str:
    """The name of the INT8 explainer with `rescore` channels per image rescored in float32."""
    return f"int8 m={rescore}"


def study(model_name: str, work: Path, images: np.ndarray, names: list[str], faithfulness: bool,
          explain: bool = True, count: int | None = None, rescores: tuple[int, ...] = (0,),
          calibrate=None, settings=None, layer: str | None = None) -> dict:
    """One model: export with the INT8 scorer, then the float32 explainer and one INT8 explainer per `rescores`
    entry (Explainer(precision="int8", int8_rescore=m): the sweep's m top channels per image rescored in float32)
    side by side (with `explain` False only the scorers: throughput and logits on the photos; `count` explains only
    the first `count` photos). `calibrate(bundle) -> (images, described)`, if given, calibrates the INT8 scorer on
    those images instead of the export's default, quantized with `settings` (an Int8Settings; None: the default)
    (benchmarks/int8_masked_calibration.py). `layer` replaces the model's default target: a module path, or
    HEAD_RELU6 (EfficientNet-Lite0's conv-head ReLU6 output)."""
    model, default_layer, class_names = build_model(model_name)
    layer = layer or default_layer
    started = time.perf_counter()
    if layer == HEAD_RELU6:
        bundle = efficientnet_conv_head_bundle(work, int8_scorer=calibrate is None).bundle
        layer = f"{HEAD_RELU6} ({bundle.manifest.target_tensor})"
    else:
        bundle = fusioncam.export_torch(model, layer, work / f"{model_name}-int8.fcam", class_names=class_names,
                                        int8_scorer=calibrate is None).bundle
    if calibrate is not None:
        from .int8_settings import _WithCandidate
        import onnx
        from fusioncam.export.int8_scorer import Int8Settings, int8_scorer

        calibration, described = calibrate(bundle)
        candidate = work / f"{model_name}-scorer-int8-calibrated.onnx"
        candidate.write_bytes(int8_scorer(onnx.load(str(bundle.scorer_path)), calibration, described, model_name,
                                          settings or Int8Settings()))
        bundle = _WithCandidate(path=bundle.path, manifest=bundle.manifest, candidate=candidate)
    export_s = time.perf_counter() - started
    exact = fusioncam.Explainer(bundle, device="cpu")
    variants = {variant_label(m): fusioncam.Explainer(bundle, device="cpu", precision="int8", int8_rescore=m)
                for m in rescores}
    first_int8 = next(iter(variants.values()))
    row: dict = {"model": model_name, "layer": layer, "channels": bundle.manifest.channels,
                 "int8_settings": int8_settings_of(bundle), "rescores": list(rescores),
                 "weights": "ImageNet" if model_name == "efficientnet_lite0" else "seeded random (torch.manual_seed(0))",
                 "export_with_int8_s": export_s, "batch_size": exact.batch_size}
    row["scorer_images_per_s"] = {"fp32": scorer_throughput(exact, seconds=3.0),
                                  "int8": scorer_throughput(first_int8, seconds=3.0)}
    row["scorer_speedup"] = row["scorer_images_per_s"]["int8"] / row["scorer_images_per_s"]["fp32"]
    row["logits_on_photos"] = int8_agreement(np.asarray(exact.predict(images)), np.asarray(first_int8.predict(images)))
    explainers = {"fp32": exact, **variants}
    if not explain:
        for explainer in explainers.values():
            explainer.close()
        return row
    images, names = images[:count], names[:count]
    row["images"] = names
    for explainer in explainers.values():  # warm-up: both graphs at every run size (a full Fusion-CAM would cost
        explainer.warm_up()                # 2051 forwards per precision on ResNet-50)
    seconds: dict[str, list[float]] = {label: [] for label in explainers}
    maps: dict[str, list[np.ndarray]] = {label: [] for label in explainers}
    forwards: dict[str, list[int]] = {label: [] for label in explainers}
    classes, loads = [], [os.getloadavg()[0]]  # the machine is shared: how busy it was before and after each image
    for i in range(len(images)):
        labels = list(explainers)
        order = labels[i % len(labels):] + labels[: i % len(labels)]  # who goes first rotates: no variant always
        for label in order:                                              # runs right after another (the load drifts)
            explainer = explainers[label]
            start = time.perf_counter()
            explanation = explainer.explain(images[i : i + 1])
            seconds[label].append(time.perf_counter() - start)
            maps[label].append(explanation.fusion[0])
            forwards[label].append(int(explanation.forwards_run[0]) + int(explanation.timings["method_forwards_run"]))
            if label == "fp32":
                classes.append(int(explanation.classes[0]))
        loads.append(os.getloadavg()[0])
        agreement = {label: map_agreement(maps[label][-1], maps["fp32"][-1])["pearson"] for label in variants}
        print(f"{model_name} {names[i]}: " + ", ".join(f"{label} {values[-1]:.2f} s" for label, values in seconds.items())
              + "; r vs fp32: " + ", ".join(f"{label} {value:.4f}" for label, value in agreement.items())
              + f"; load {loads[-1]:.1f}", flush=True)
    row["classes"] = classes
    row["load_average_1min"] = loads
    row["fusion_seconds"] = seconds
    row["forwards_per_image"] = {label: float(np.mean(values)) for label, values in forwards.items()}
    row["fusion_seconds_per_image"] = {label: float(np.mean(values)) for label, values in seconds.items()}
    row["fusion_speedup"] = {label: row["fusion_seconds_per_image"]["fp32"] / row["fusion_seconds_per_image"][label]
                             for label in variants}
    row["pearson_per_image"], row["pearson_mean"], row["pearson_min"] = {}, {}, {}
    for label in variants:
        agreement = [map_agreement(maps[label][i], maps["fp32"][i])["pearson"] for i in range(len(images))]
        row["pearson_per_image"][label] = dict(zip(names, agreement))
        row["pearson_mean"][label] = float(np.mean(agreement))
        row["pearson_min"][label] = float(np.min(agreement))
    if faithfulness:
        stacked = {label: np.stack(values) for label, values in maps.items()}
        scores = evaluate_maps(exact, images, stacked, targets=np.asarray(classes), names=names).scores
        means = {label: {metric: float(np.mean(values)) for metric, values in score.per_image.items()}
                 for label, score in scores.items()}
        row["faithfulness_mean"] = means
        row["faithfulness_delta"] = {label: {metric: means[label][metric] - means["fp32"][metric]
                                             for metric in means["fp32"]} for label in variants}
    for explainer in explainers.values():
        explainer.close()
    return row


def markdown(report: dict) -> str:
    """The table people read: per model and INT8 variant, speed-up, agreement and faithfulness deltas."""
    record = report["machine_record"]
    lines = [f"# INT8 scorer against exact float32, CPU ({record['cpu_model']}, {record['cpu_cores']} cores), "
             f"{record['recorded_at']}", "",
             f"Images: {', '.join(report['images'])} (per model: the first n given in the table). Maps: Fusion-CAM, "
             f"exact (no fast mode). INT8 scorer: {report['models'][0]['int8_settings']}. `int8 m=M`: "
             f"`Explainer(precision=\"int8\", int8_rescore=M)`, the sweep's M top channels per image rescored in "
             f"float32 (z0 and the probes in float32 in every INT8 variant). Targets: speed-up >= 1.8x, mean r >= 0.99.",
             "", "| model | K | n | scorer img/s fp32 / int8 | variant | forwards/image | Fusion-CAM s/image | speed-up "
             "| mean / min r vs fp32 | r per photo | deletion AUC delta | insertion AUC delta | average drop delta "
             "| increase in confidence delta |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in report["models"]:
        tput = row["scorer_images_per_s"]
        head = (f"| {row['model']} `{row['layer']}` ({row['weights']}) | {row['channels']} | "
                f"{len(row.get('classes', []))} | {tput['fp32']:.1f} / {tput['int8']:.1f} ({row['scorer_speedup']:.2f}x)")
        if "fusion_seconds_per_image" not in row:
            lines.append(head + " | not measured | | | | | | | | | |")
            continue
        sec = row["fusion_seconds_per_image"]
        lines.append(head + f" | fp32 | {row['forwards_per_image']['fp32']:.0f} | {sec['fp32']:.2f} | | | | | | | |")
        for label in row["fusion_speedup"]:
            delta = row.get("faithfulness_delta", {}).get(label, {})
            fmt = lambda key: f"{delta[key]:+.4f}" if key in delta else "not measured"  # noqa: E731
            per_photo = ", ".join(f"{value:.3f}" for value in row["pearson_per_image"][label].values())
            lines.append(f"| | | | | {label} | {row['forwards_per_image'][label]:.0f} | {sec[label]:.2f} | "
                         f"{row['fusion_speedup'][label]:.2f}x | {row['pearson_mean'][label]:.4f} / "
                         f"{row['pearson_min'][label]:.4f} | {per_photo} | {fmt('deletion_auc')} | "
                         f"{fmt('insertion_auc')} | {fmt('average_drop')} | {fmt('increase_in_confidence')} |")
    loads = [value for row in report["models"] for value in row.get("load_average_1min", [])]
    if loads:
        lines += ["", f"1-minute load average before and after each image: {min(loads):.1f} to {max(loads):.1f} "
                      f"(the machine is shared; each image is explained by every variant in turn)."]
    lines += ["", "INT8 logits against float32 on the photos (largest difference relative to the largest float logit; "
              "images with the same top class):"]
    lines += [f"- {row['model']}: {row['logits_on_photos']['max_relative_difference']:.3f}, top-1 agreement "
              f"{row['logits_on_photos']['top1_agreement']:.0%}" for row in report["models"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Measure each model and write JSON + markdown."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.int8_scorer", description=__doc__)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--images", type=int, default=5, help="how many of the five sample photos (default all)")
    chosen.add_argument("--photos", metavar="PHOTO,PHOTO,...",
                        help="these sample photos, by name or 0-based index (e.g. coffee,rocket,motorcycle or 2,3,4)")
    parser.add_argument("--model-images", nargs="*", default=[], metavar="MODEL=N",
                        help="explain only the first N photos with MODEL (e.g. resnet50=2)")
    parser.add_argument("--layer", nargs="*", default=[], metavar="MODEL=LAYER",
                        help=f"explain MODEL at LAYER, a module path (e.g. efficientnet_lite0=_conv_head), or "
                             f"efficientnet_lite0={HEAD_RELU6}: its conv-head ReLU6 output")
    parser.add_argument("--skip-faithfulness", action="store_true")
    parser.add_argument("--scorer-only", nargs="*", choices=MODELS, default=[],
                        help="models measured by their scorers only (throughput, logits on the photos), no Fusion-CAM")
    parser.add_argument("--rescore", type=lambda text: tuple(int(v) for v in text.split(",")), default=(0,),
                        metavar="M,M,...", help="one INT8 explainer per M: int8_rescore=M (default 0)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--label", default="", help="suffix of the result files' names (int8-scorer-<cpu>-<label>)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fusioncam-int8"))
    args = parser.parse_args(argv)

    samples = sample_images()
    if args.photos is not None:
        try:
            samples = {name: samples[name] for name in chosen_photos(args.photos, list(samples))}
        except ValueError as error:
            parser.error(str(error))
    else:
        samples = dict(list(samples.items())[: args.images])
    names = list(samples)
    images = np.stack([preprocess(rgb, (224, 224), IMAGENET_MEAN, IMAGENET_STD) for rgb in samples.values()])
    counts = {}
    for item in args.model_images:
        model_name, _, count = item.partition("=")
        if model_name not in MODELS or not count.isdigit() or int(count) < 1:
            parser.error(f"--model-images takes MODEL=N with MODEL one of {', '.join(MODELS)}; got {item!r}")
        counts[model_name] = int(count)
    layers = {}
    for item in args.layer:
        model_name, _, layer = item.partition("=")
        if model_name not in MODELS or not layer:
            parser.error(f"--layer takes MODEL=LAYER with MODEL one of {', '.join(MODELS)}; got {item!r}")
        if layer == HEAD_RELU6 and model_name != "efficientnet_lite0":
            parser.error(f"--layer {item!r}: {HEAD_RELU6} is EfficientNet-Lite0's conv-head ReLU6 output; "
                         f"give {model_name} a module path")
        layers[model_name] = layer
    from .report import machine_record

    args.work.mkdir(parents=True, exist_ok=True)
    stem = "int8-scorer-" + cpu_label() + (f"-{args.label}" if args.label else "")
    report: dict = {"images": names, "models": []}
    for name in args.models:  # saved after each model: a long run that is stopped keeps what it measured
        report["models"].append(study(name, args.work, images, names, not args.skip_faithfulness,
                                      explain=name not in args.scorer_only, count=counts.get(name),
                                      rescores=args.rescore, layer=layers.get(name)))
        report["machine_record"] = machine_record()
        save_report(args.out, stem, report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

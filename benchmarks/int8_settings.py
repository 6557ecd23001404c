"""`python -m benchmarks.int8_settings`: which quantization of the INT8 scorer keeps Fusion-CAM closest to exact
float32, and at what speed (EfficientNet-Lite0 with its ImageNet weights at `_blocks.15`, the five sample photos).

One export (float32 scorer), the exact float32 Fusion-CAM maps and their time per image; then per candidate
(`fusioncam.export.int8_scorer.Int8Settings`: calibration method, per-channel or per-tensor weights, uint8 or
symmetric int8 activations, reduce_range, node groups kept float32; and the default settings calibrated on the sweep's
own masked images, recorded from the float32 explainer's scorer runs, beside the photos): the INT8 scorer, the
scorer's throughput against float32's measured right before it (the ratio is robust to the shared machine's load
changing between candidates), Fusion-CAM seconds per image, the Pearson r of each INT8 map with the exact one, and
the INT8 logits' agreement with float32's. JSON and markdown land in benchmarks/results/int8-settings-<cpu>.*.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

import fusioncam
from fusioncam.bundle import Bundle
from fusioncam.benchmarking.floor import scorer_throughput
from fusioncam.export.int8_scorer import Int8Settings, calibration_images, int8_agreement, int8_scorer
from fusioncam.images import IMAGENET_MEAN, IMAGENET_STD, preprocess, sample_images

from .models import build_model
from .report import RESULTS, cpu_label, machine_record, save_report
from .run import map_agreement

MASKED_CALIBRATION = 200  # masked images (from the float32 sweep) added to the photos by the "masked" candidate
CANDIDATES: dict[str, tuple[Int8Settings, bool]] = {  # label: (settings, calibrate on masked images too)
    "default (MinMax, per-channel, uint8 activations)": (Int8Settings(), False),
    "Percentile 99.999": (Int8Settings(method="Percentile"), False),
    "Percentile 99.99": (Int8Settings(method="Percentile", percentile=99.99), False),
    "Entropy": (Int8Settings(method="Entropy"), False),
    "symmetric int8 activations": (Int8Settings(symmetric_activations=True), False),
    "reduce_range": (Int8Settings(reduce_range=True), False),
    "per-tensor weights": (Int8Settings(per_channel=False), False),
    "first conv and classifier float32": (Int8Settings(float_nodes=("first_conv", "classifier")), False),
    "depthwise convs float32": (Int8Settings(float_nodes=("depthwise",)), False),
    "calibrated on masked images too": (Int8Settings(), True),
}


@dataclasses.dataclass
class _WithCandidate(Bundle):
    """The export's bundle with a candidate INT8 scorer in place of its own (the candidate lies outside the bundle,
    so the manifest is not touched)."""

    candidate: Path | None = None

    @property
    def scorer_int8_path(self) -> Path | None:
        return self.candidate


def exact_maps(bundle: Bundle, images: np.ndarray) -> dict:
    """Float32 Fusion-CAM maps, classes and seconds per image, and the masked inputs its scorer ran (recorded)."""
    explainer = fusioncam.Explainer(bundle, device="cpu")
    backend = explainer.scorer.backend
    score_rows, recorded = backend.score_rows, []

    def recording(count, *rest):
        recorded.append(np.array(backend.input_buffer()[:count]))
        return score_rows(count, *rest)

    explainer.explain(images[:1])  # warm-up
    backend.score_rows = recording
    maps, classes, seconds = [], [], []
    for i in range(len(images)):
        start = time.perf_counter()
        explanation = explainer.explain(images[i : i + 1])
        seconds.append(time.perf_counter() - start)
        maps.append(explanation.fusion[0])
        classes.append(int(explanation.classes[0]))
    backend.score_rows = score_rows
    logits = np.asarray(explainer.predict(images))
    explainer.close()
    return {"maps": maps, "classes": classes, "seconds": seconds, "logits": logits, "masked": np.concatenate(recorded)}


def measure(label: str, settings: Int8Settings, calibration: np.ndarray, bundle: Bundle, images: np.ndarray,
            exact: dict, folder: Path) -> dict:
    """One candidate: quantize, then speed and agreement with the exact maps."""
    started = time.perf_counter()
    quantized = int8_scorer(onnx.load(str(bundle.scorer_path)), calibration, f"{len(calibration)} images", "lite0",
                            settings)
    quantize_s = time.perf_counter() - started
    path = folder / f"candidate-{abs(hash(label))}.onnx"
    path.write_bytes(quantized)
    candidate = _WithCandidate(path=bundle.path, manifest=bundle.manifest, candidate=path)
    fp32 = fusioncam.Explainer(bundle, device="cpu")
    fp32_rate = scorer_throughput(fp32, seconds=2.0)
    fp32.close()
    int8 = fusioncam.Explainer(candidate, device="cpu", precision="int8")
    int8_rate = scorer_throughput(int8, seconds=2.0)
    agreement = int8_agreement(exact["logits"], np.asarray(int8.predict(images)))
    int8.explain(images[:1])  # warm-up
    pearson, seconds = [], []
    for i in range(len(images)):
        start = time.perf_counter()
        explanation = int8.explain(images[i : i + 1], targets=exact["classes"][i : i + 1])
        seconds.append(time.perf_counter() - start)
        pearson.append(map_agreement(explanation.fusion[0], exact["maps"][i])["pearson"])
    int8.close()
    row = {"label": label, "settings": settings.describe(), "calibration_images": len(calibration),
           "quantize_s": quantize_s, "scorer_images_per_s": {"fp32": fp32_rate, "int8": int8_rate},
           "scorer_speedup": int8_rate / fp32_rate, "fusion_seconds_per_image": float(np.mean(seconds)),
           "fusion_speedup": float(np.mean(exact["seconds"]) / np.mean(seconds)),
           "pearson_per_image": [float(r) for r in pearson], "pearson_mean": float(np.mean(pearson)),
           "pearson_min": float(np.min(pearson)), "logits_on_photos": agreement}
    print(f"{label}: r {row['pearson_mean']:.4f} (min {row['pearson_min']:.4f}), scorer {row['scorer_speedup']:.2f}x, "
          f"Fusion-CAM {row['fusion_speedup']:.2f}x", flush=True)
    return row


def markdown(report: dict) -> str:
    """The trade-off table: agreement with exact float32 against speed, per candidate."""
    record = report["machine_record"]
    lines = [f"# INT8 scorer settings, EfficientNet-Lite0 `_blocks.15` (ImageNet weights), CPU ({record['cpu_model']}, "
             f"{record['cpu_cores']} cores), {record['recorded_at']}", "",
             f"Images: {', '.join(report['images'])}. Exact float32 Fusion-CAM: "
             f"{report['fp32_fusion_seconds_per_image']:.2f} s per image (timed once, at the start). Scorer speed-up: "
             f"INT8 against float32 measured right before it; Fusion-CAM speed-up: against the float32 time at the "
             f"start (the machine's load changes between candidates, so read it as approximate).", "",
             "| candidate | mean / min r vs fp32 | r per image | scorer speed-up | Fusion-CAM s/image (speed-up) "
             "| logits: max rel. diff, top-1 agreement |", "| --- | --- | --- | --- | --- | --- |"]
    for row in report["candidates"]:
        logits = row["logits_on_photos"]
        lines.append(f"| {row['label']} | {row['pearson_mean']:.4f} / {row['pearson_min']:.4f} | "
                     f"{', '.join(f'{r:.3f}' for r in row['pearson_per_image'])} | {row['scorer_speedup']:.2f}x | "
                     f"{row['fusion_seconds_per_image']:.2f} ({row['fusion_speedup']:.2f}x) | "
                     f"{logits['max_relative_difference']:.3f}, {logits['top1_agreement']:.0%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Measure every candidate (or those named) and write JSON + markdown."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.int8_settings", description=__doc__)
    parser.add_argument("--candidates", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
    parser.add_argument("--images", type=int, default=5, help="how many of the five sample photos (default all)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=None, help="where the export goes (default: a temporary folder)")
    args = parser.parse_args(argv)

    samples = dict(list(sample_images().items())[: args.images])
    names = list(samples)
    images = np.stack([preprocess(rgb, (224, 224), IMAGENET_MEAN, IMAGENET_STD) for rgb in samples.values()])
    with tempfile.TemporaryDirectory(prefix="fusioncam-int8-settings-") as temporary:
        folder = args.work or Path(temporary)
        folder.mkdir(parents=True, exist_ok=True)
        model, layer, class_names = build_model("efficientnet_lite0")
        bundle = fusioncam.export_torch(model, layer, folder / "lite0.fcam", class_names=class_names).bundle
        exact = exact_maps(bundle, images)
        photos, _ = calibration_images(None, (224, 224), IMAGENET_MEAN, IMAGENET_STD)
        picked = np.random.default_rng(0).choice(len(exact["masked"]), MASKED_CALIBRATION, replace=False)
        with_masked = np.concatenate([photos, exact["masked"][np.sort(picked)]])
        rows = [measure(label, settings, with_masked if masked else photos, bundle, images, exact, folder)
                for label, (settings, masked) in CANDIDATES.items() if label in args.candidates]
    report = {"images": names, "fp32_fusion_seconds_per_image": float(np.mean(exact["seconds"])),
              "masked_calibration_images": MASKED_CALIBRATION, "candidates": rows, "machine_record": machine_record()}
    save_report(args.out, "int8-settings-" + cpu_label(), report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

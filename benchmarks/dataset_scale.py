"""Throughput of `explain-dataset` on Ray against single-process `Explainer.explain` at the same block size, and a
scaling model for N GPUs from the measured single-GPU numbers.

    python -m benchmarks.dataset_scale [--images 16] [--batch-images 4] [--methods fusion]

Measured side by side in one run, on the same images, model and block size: (1) one process, one Explainer using
every core, explaining blocks of B images read with images.load_batch; (2) explain-dataset with 1 worker (all
cores); (3) with 2 workers (cores / 2 threads each). Each time is the wall time from start to the last row (the
Explainer's or the actors' construction included; the model export and ray.init, one-time costs, excluded). The
N-GPU model takes the per-image seconds measured on one H100 (benchmarks/results/cuda-nvidia-h100-80gb-hbm3.json)
and Ray's per-block cost measured here. JSON and markdown go to benchmarks/results/dataset-scale-<machine>.*.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from benchmarks.report import RESULTS, cpu_label, save_report

H100_RESULTS = RESULTS / "cuda-nvidia-h100-80gb-hbm3.json"
GPU_COUNTS = (1, 2, 4, 8, 16, 64)


def benchmark_images(folder: Path, count: int) -> list[Path]:
    """`count` distinct real photographs: the five sample photos, then their mirror images and crops, as PNG files."""
    from fusioncam.images import sample_images

    samples = list(sample_images().items())
    paths = []
    for i in range(count):
        name, rgb = samples[i % len(samples)]
        variant = i // len(samples)
        if variant % 2:
            rgb = rgb[:, ::-1]
        if variant >= 2:
            rgb = rgb[variant * 7:, variant * 5:]
        path = folder / f"{i:03d}-{name}-{variant}.png"
        cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def single_process(bundle, paths: list[Path], batch_images: int, methods: tuple[str, ...]) -> dict:
    """One Explainer (every core), blocks of `batch_images` files read with load_batch and explained together."""
    from fusioncam import Explainer
    from fusioncam.images import load_batch

    start = time.perf_counter()
    explainer = Explainer(bundle, device="cpu")
    manifest = explainer.bundle.manifest
    for first in range(0, len(paths), batch_images):
        images, _ = load_batch(paths[first:first + batch_images], manifest.input_size, manifest.mean, manifest.std)
        explainer.explain(images, methods=methods)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "images_per_s": len(paths) / seconds}


def ray_run(bundle, folder: Path, out: Path, workers: int, batch_images: int, methods: tuple[str, ...]) -> dict:
    """explain-dataset on the running Ray: wall seconds to the last row, and the run's own summary numbers."""
    from fusioncam.dataset import explain_dataset

    start = time.perf_counter()
    run = explain_dataset(folder, bundle, out=out, methods=methods, workers=workers, batch_images=batch_images)
    seconds = time.perf_counter() - start
    return {"workers": workers, "threads_per_worker": run.summary["run"]["threads_per_worker"], "seconds": seconds,
            "images_per_s": run.summary["explained"] / seconds, "errors": run.summary["errors"]}


def gpu_model(per_block_overhead_s: float, batch_images: int) -> dict:
    """Images/hour on N GPUs: N * 3600 / (s per image) * efficiency, efficiency = block time / (block time + Ray's
    per-block cost), from the H100 per-image seconds (ResNet-50 layer4, K = 2048, batch 256, chelsea)."""
    measured = json.loads(H100_RESULTS.read_text())
    variants = measured["fusioncam_variants"]
    throughput32 = measured["throughput"]["32"]["images_per_s"]
    modes = {
        "exact fp32 (throughput at N = 32)": 1.0 / throughput32,
        "exact fp32 (one image)": measured["fusioncam_n1"]["seconds"],
        "fp16 scorer (one image)": variants["fp16"]["seconds"],
        "fast k=256, fp32 (one image)": variants["fast k=256"]["seconds"],
        "fast k=256, fp16 (one image)": variants["fast k=256, fp16"]["seconds"],
    }
    table = {}
    for mode, per_image in modes.items():
        block = per_image * batch_images
        efficiency = block / (block + max(per_block_overhead_s, 0.0))
        table[mode] = {"seconds_per_image_one_gpu": per_image, "efficiency": efficiency,
                       "images_per_hour": {n: n * 3600.0 / per_image * efficiency for n in GPU_COUNTS}}
    return {"source": f"{H100_RESULTS.name} ({measured['date']}, {measured['model']} {measured['layer']}, "
                      f"K = {measured['channels']}, batch {measured['batch_size']})", "modes": table}


def machine() -> dict:
    """CPU model, cores, versions and commit: what the numbers were measured on."""
    import onnxruntime
    import ray

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "ray": ray.__version__,
            "onnxruntime": onnxruntime.__version__, "commit": commit or "unknown"}


def markdown(report: dict) -> str:
    """The tables people read."""
    m, r = report["machine"], report["runs"]
    base = r["single_process"]["images_per_s"]
    lines = [f"# explain-dataset scaling: {report['model']}, {', '.join(report['methods'])}, {report['date']}", "",
             f"{m['cpu']}, {m['cores']} cores; Ray {m['ray']}, ONNX Runtime {m['onnxruntime']}, Python {m['python']}, "
             f"commit {m['commit']}. {report['images']} images (the sample photos, mirrored and cropped), blocks of "
             f"{report['batch_images']}. {report['note']}", "",
             "| run | seconds | images/s | vs one process |", "| --- | ---: | ---: | ---: |",
             f"| one process, one Explainer (all cores) | {r['single_process']['seconds']:.1f} | {base:.3f} | 1.00x |"]
    for key in ("ray_1_worker", "ray_2_workers"):
        run = r[key]
        lines.append(f"| explain-dataset, {run['workers']} worker(s) x {run['threads_per_worker']} thread(s) | "
                     f"{run['seconds']:.1f} | {run['images_per_s']:.3f} | {run['images_per_s'] / base:.2f}x |")
    lines += ["", f"Ray's overhead at 1 worker: {report['ray_overhead_1_worker']:.1%} of the single-process time "
                  f"({report['per_block_overhead_s']:.2f} s per block of {report['batch_images']}).", "",
              f"## Scaling model for N GPUs (one worker per GPU), from {report['gpu_model']['source']}", "",
              "images/hour = N x 3600 / (seconds per image on one GPU) x efficiency, efficiency = block time / (block "
              "time + Ray's per-block cost measured above). It assumes the GPUs are the bottleneck: decoding is "
              "milliseconds per image on a core and a Fusion-CAM map is 100 kB of float16, so a few cores and any "
              "disk keep up with dozens of GPUs. Measured on one GPU only; the multi-GPU numbers are this model, "
              "not a measurement.", "",
              "| mode | s/image, 1 GPU | efficiency | " + " | ".join(f"N = {n}" for n in GPU_COUNTS) + " |",
              "| --- | ---: | ---: | " + " | ".join("---:" for _ in GPU_COUNTS) + " |"]
    for mode, row in report["gpu_model"]["modes"].items():
        cells = " | ".join(f"{row['images_per_hour'][n]:,.0f}" for n in GPU_COUNTS)
        lines.append(f"| {mode} | {row['seconds_per_image_one_gpu']:.3f} | {row['efficiency']:.3f} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-images", type=int, default=4)
    parser.add_argument("--methods", default="fusion")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--note", default="", help="context for the numbers (e.g. that the machine was shared)")
    args = parser.parse_args(argv)
    from fusioncam.dataset.ray_support import import_ray
    from fusioncam.default_model import bundle_for

    ray = import_ray(local=True)  # listening on 127.0.0.1 only

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    bundle = bundle_for(args.model).path  # exported once, before any timing
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "images"
        folder.mkdir()
        paths = benchmark_images(folder, args.images)
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            runs = {"single_process": single_process(bundle, paths, args.batch_images, methods),
                    "ray_1_worker": ray_run(bundle, folder, Path(scratch) / "one", 1, args.batch_images, methods),
                    "ray_2_workers": ray_run(bundle, folder, Path(scratch) / "two", 2, args.batch_images, methods)}
        finally:
            ray.shutdown()
    blocks = -(-args.images // args.batch_images)
    overhead = runs["ray_1_worker"]["seconds"] - runs["single_process"]["seconds"]
    report = {"date": datetime.date.today().isoformat(), "machine": machine(), "model": args.model,
              "methods": list(methods), "images": args.images, "batch_images": args.batch_images,
              "note": args.note, "runs": runs,
              "ray_overhead_1_worker": overhead / runs["single_process"]["seconds"],
              "per_block_overhead_s": overhead / blocks}
    report["gpu_model"] = gpu_model(report["per_block_overhead_s"], args.batch_images)
    save_report(RESULTS, f"dataset-scale-{cpu_label()}", report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

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


def _rates(arrivals: list[tuple[float, int]], start: float) -> dict:
    """Wall seconds, seconds to the first block, and the steady rate: images after the first block / their time."""
    total = sum(rows for _, rows in arrivals)
    first_time, first_rows = arrivals[0]
    last_time = arrivals[-1][0]
    steady = (total - first_rows) / (last_time - first_time) if last_time > first_time else float("nan")
    return {"seconds": last_time - start, "first_block_s": first_time - start, "images": total,
            "images_per_s": total / (last_time - start), "steady_images_per_s": steady}


def single_process(bundle, paths: list[Path], batch_images: int, methods: tuple[str, ...]) -> dict:
    """One Explainer (every core), blocks of `batch_images` files read with load_batch and explained together."""
    from fusioncam import Explainer
    from fusioncam.images import load_batch

    start = time.perf_counter()
    explainer = Explainer(bundle, device="cpu")
    manifest = explainer.bundle.manifest
    arrivals = []
    for first in range(0, len(paths), batch_images):
        images, _ = load_batch(paths[first:first + batch_images], manifest.input_size, manifest.mean, manifest.std)
        explainer.explain(images, methods=methods)
        arrivals.append((time.perf_counter(), len(images)))
    return _rates(arrivals, start)


def ray_run(bundle, folder: Path, workers: int, batch_images: int, methods: tuple[str, ...]) -> dict:
    """explain-dataset's rows (the lazy Dataset) consumed block by block on the running Ray: when each arrives."""
    from fusioncam.dataset import explain_dataset

    start = time.perf_counter()
    rows = explain_dataset(folder, bundle, methods=methods, workers=workers, batch_images=batch_images)
    arrivals = [(time.perf_counter(), block.num_rows)
                for block in rows.iter_batches(batch_size=None, batch_format="pyarrow")]
    return {"workers": workers, "threads_per_worker": max(1, (os.cpu_count() or 1) // workers),
            **_rates(arrivals, start)}


class _PassThrough:
    """An actor that does no work: the block's sources back, its bytes dropped (Ray's own cost per block)."""

    def __call__(self, batch):
        return batch.select(["source"])


def ray_block_cost(ray, folder: Path, batch_images: int) -> dict:
    """Ray Data's cost per block with no compute: the same reader tasks and a one-actor pool that passes rows on."""
    from fusioncam.dataset.sources import plan_inputs, source_dataset

    start = time.perf_counter()
    rows = source_dataset(ray, plan_inputs([str(folder)]), frozenset(), batch_images).map_batches(
        _PassThrough, batch_size=batch_images, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=1)
    arrivals = [(time.perf_counter(), block.num_rows) for block in rows.iter_batches(batch_size=None,
                                                                                     batch_format="pyarrow")]
    rates = _rates(arrivals, start)
    blocks = len(arrivals)
    rates["seconds_per_block_steady"] = (arrivals[-1][0] - arrivals[0][0]) / (blocks - 1) if blocks > 1 else None
    return rates


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
    single = [r["single_process"], r["single_process_again"]]
    steady_single = sum(x["steady_images_per_s"] for x in single) / 2
    lines = [f"# explain-dataset scaling: {report['model']}, {', '.join(report['methods'])}, {report['date']}", "",
             f"{m['cpu']}, {m['cores']} cores; Ray {m['ray']}, ONNX Runtime {m['onnxruntime']}, Python {m['python']}, "
             f"commit {m['commit']}. {report['images']} images (the sample photos, mirrored and cropped), blocks of "
             f"{report['batch_images']}, one run of each, in the order of the table. {report['note']}", "",
             "Steady images/s: the images after the first block over the time they took (start-up excluded: the "
             "Explainer's construction, and for Ray the actors' processes and imports); the ratio is against the mean "
             "of the two single-process runs.", "",
             "| run | seconds | first block after (s) | images/s overall | steady images/s | steady vs one process |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    labels = {"single_process": "one process, one Explainer (all cores)",
              "ray_1_worker": "explain-dataset, 1 worker", "ray_2_workers": "explain-dataset, 2 workers",
              "single_process_again": "one process again"}
    for key, label in labels.items():
        run = r[key]
        threads = f" x {run['threads_per_worker']} thread(s)" if "workers" in run else ""
        lines.append(f"| {label}{threads} | {run['seconds']:.1f} | {run['first_block_s']:.1f} | "
                     f"{run['images_per_s']:.3f} | {run['steady_images_per_s']:.3f} | "
                     f"{run['steady_images_per_s'] / steady_single:.2f}x |")
    cost = report["ray_block_cost"]
    lines += ["", f"Ray Data's own cost per block, measured with an actor that does no work on the same blocks (reader "
                  f"tasks, object store, one-actor pool): {report['per_block_overhead_s']:.3f} s per block of "
                  f"{report['batch_images']} in steady state, {cost['first_block_s']:.1f} s to the first block "
                  f"(an actor's start).", "",
              f"## Scaling model for N GPUs (one worker per GPU), from {report['gpu_model']['source']}", "",
              "images/hour = N x 3600 / (seconds per image on one GPU) x efficiency, efficiency = block time / (block "
              "time + Ray's per-block cost above), blocks of the same size. It assumes the GPUs are the bottleneck: "
              "decoding takes milliseconds per image on a core and a Fusion-CAM map is 100 kB of float16, so a few "
              "cores and any disk keep up with dozens of GPUs, and each GPU's worker pays its start-up once. Only one "
              "GPU was measured; the multi-GPU numbers are this model, not a measurement.", "",
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
    from fusioncam.bundle_cache import bundle_for

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
                    "ray_1_worker": ray_run(bundle, folder, 1, args.batch_images, methods),
                    "ray_2_workers": ray_run(bundle, folder, 2, args.batch_images, methods),
                    "single_process_again": single_process(bundle, paths, args.batch_images, methods)}
            block_cost = ray_block_cost(ray, folder, args.batch_images)
        finally:
            ray.shutdown()
    single = [runs["single_process"], runs["single_process_again"]]
    steady_single = sum(r["steady_images_per_s"] for r in single) / 2
    per_block = block_cost["seconds_per_block_steady"] or 0.0
    report = {"date": datetime.date.today().isoformat(), "machine": machine(), "model": args.model,
              "methods": list(methods), "images": args.images, "batch_images": args.batch_images,
              "note": args.note, "runs": runs, "ray_block_cost": block_cost,
              "steady_ratio_1_worker": runs["ray_1_worker"]["steady_images_per_s"] / steady_single,
              "steady_ratio_2_workers": runs["ray_2_workers"]["steady_images_per_s"] / steady_single,
              "per_block_overhead_s": per_block}
    report["gpu_model"] = gpu_model(per_block, args.batch_images)
    save_report(RESULTS, f"dataset-scale-{cpu_label()}", report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

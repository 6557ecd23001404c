"""Markdown summary of a benchmark run (the JSON holds everything; this is the table people read)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fusioncam.atomic import write_text_atomic
# what produced a result, as fusioncam bench records it
from fusioncam.benchmarking.machine import cpu_model, machine_record  # noqa: F401

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_label() -> str:
    """This machine's label in result file names: cpu-<cores>cores."""
    return f"cpu-{os.cpu_count()}cores"


def run_json_child(source: str, *argv: str) -> dict:
    """Run `python -c source argv...` in a fresh process (its own peak RSS) and parse the last JSON line it prints;
    a failure is a row with the last line of its stderr."""
    done = subprocess.run([sys.executable, "-c", source, *argv], capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    return json.loads(lines[-1])


def save_report(folder: Path, stem: str, report: dict, text: str) -> None:
    """Write `<stem>.json` (everything, with the machine_record of what produced it) and `<stem>.md` (the table)
    atomically into `folder`, and print the table."""
    folder.mkdir(parents=True, exist_ok=True)
    report = {**report, "machine_record": report.get("machine_record") or machine_record()}
    write_text_atomic(folder / f"{stem}.json", json.dumps(report, indent=2, default=float) + "\n")
    write_text_atomic(folder / f"{stem}.md", text)
    print(text)


def _s(value) -> str:
    return f"{value:.3f} s" if isinstance(value, (int, float)) else str(value)


def markdown_report(r: dict) -> str:
    """A table of latencies side by side, ratios computed from numbers of the same run."""
    fc = r["fusioncam_n1"]
    lines = [
        f"# fusioncam benchmark: {r['model']} `{r['layer']}` (K={r['channels']}), {r['device']} ({r['machine']}), {r['date']}",
        "",
        f"Scorer: {r['scorer_images_per_s']:.1f} images/s at batch {r['batch_size']}; floor for one image "
        f"((K+3) masked forwards): {_s(r['floor_n1_s'])}; fusioncam N=1 is {fc['ratio_to_floor']:.2f}x the floor.",
        "",
        "| what (one image, chelsea) | seconds | vs fusioncam |",
        "| --- | --- | --- |",
        f"| fusioncam Fusion-CAM, fp32 (constant channels skipped: {fc['forwards_skipped']} of {r['channels']}) | {fc['seconds']:.3f} | 1.0x |",
        f"| fusioncam Fusion-CAM, fp32, no skipping | {r['fusioncam_n1_no_skip']['seconds']:.3f} | "
        f"{r['fusioncam_n1_no_skip']['seconds'] / fc['seconds']:.2f}x |",
        f"| floor: (K+3) forwards at the scorer's throughput | {r['floor_n1_s']:.3f} | {r['floor_n1_s'] / fc['seconds']:.2f}x |",
    ]
    for key, label in (("gradcam_s", "pytorch-grad-cam GradCAM"), ("scorecam_batch16_s", "pytorch-grad-cam ScoreCAM, batch 16"),
                       ("scorecam_batch128_s", "pytorch-grad-cam ScoreCAM, batch 128"),
                       ("scorecam_batch128_strict_fp32_s", "pytorch-grad-cam ScoreCAM, batch 128, TF32 off (strict fp32)")):
        value = r.get("pytorch_grad_cam", {}).get(key)
        if value is not None:
            lines.append(f"| {label} | {value:.3f} | {value / fc['seconds']:.2f}x |")
    eager = r.get("eager_reference", {}).get("fusion_cam_s")
    if eager is not None:
        lines.append(f"| eager PyTorch Fusion-CAM, one masked forward per channel (authors' style, "
                     f"tests/support/torch_reference.py, {r['eager_reference'].get('device', 'cpu')}) | {eager:.3f} | "
                     f"{eager / fc['seconds']:.2f}x |")
    variants = r.get("fusioncam_variants")
    if variants:
        lines += ["", "Faster variants against the exact fp32 Fusion-CAM map above (same image):", "",
                  "| variant | seconds | speed-up | scorer forwards | Pearson r | max abs diff | its own floor (ratio) |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for label, v in variants.items():
            if "error" in v:
                lines.append(f"| {label} | failed: {v['error'][:120]} | | | | | |")
                continue
            floor = f"{v['floor_s']:.3f} s ({v['seconds'] / v['floor_s']:.2f}x)" if "floor_s" in v else ""
            lines.append(f"| {label} | {v['seconds']:.3f} | {fc['seconds'] / v['seconds']:.2f}x | {v['forwards_run']} | "
                         f"{v['pearson']:.5f} | {v['max_abs_diff']:.2g} | {floor} |")
    lines += ["", "Per-stage seconds (fusioncam, N=1): " + ", ".join(
        f"{k} {v:.3f}" for k, v in fc["stages"].items() if isinstance(v, float)), "",
        f"Peak host memory (RSS) during fusioncam N=1: {fc['peak_rss_bytes'] / 2**20:.0f} MiB.", ""]
    if r.get("gpu_used_bytes") is not None:
        lines += [f"GPU memory in use after the runs (driver's total - free: ONNX Runtime arena, CuPy pool, contexts): "
                  f"{r['gpu_used_bytes'] / 2**20:.0f} MiB; CuPy pool {r['gpu_pool_bytes'] / 2**20:.0f} MiB.", ""]
    if r.get("throughput"):
        lines += ["| N | images/s | floor images/s | ratio |", "| --- | --- | --- | --- |"]
        for n, t in r["throughput"].items():
            lines.append(f"| {n} | {t['images_per_s']:.2f} | {t['floor_images_per_s']:.2f} | {t['images_per_s'] / t['floor_images_per_s']:.2f} |")
        lines.append("")
    skip = r.get("constant_channel_skip")
    if skip:
        lines += [f"Constant-channel skip at `{skip['layer']}` (K={skip['channels']}), five sample images:", "",
                  "| image | constant channels | seconds, skip on | seconds, skip off | speed-up |", "| --- | --- | --- | --- | --- |"]
        for name, row in skip["per_image"].items():
            lines.append(f"| {name} | {row['skipped_fraction']:.0%} | {row['seconds_skip_on']:.2f} | "
                         f"{row['seconds_skip_off']:.2f} | {row['speedup']:.2f}x |")
        lines.append("")
    return "\n".join(lines)

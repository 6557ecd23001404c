"""Seconds per image of every classification method, fusioncam's pytorch-grad-cam drop-in against pytorch-grad-cam.

Every method of methods_for_task("classification"), each through fusioncam.pytorch_grad_cam's class (what a user
gets by changing the import: it runs on fusioncam's engine with compat="pytorch-grad-cam"), and pytorch-grad-cam
1.5.7's class of the same name where it has one, side by side in one run: torchvision ResNet-18 with seeded random
weights (torch.manual_seed(0), 1000 classes; no pretrained weights are downloaded), target `layer4` (K=512, 7x7),
skimage's chelsea at 224x224 (ImageNet normalisation), each image's top class, on the CPU. Batch 1 and batch 8 (eight
copies of chelsea); each call timed after one untimed warm-up call (the warm-up also exports the bundle into a
temporary cache and gives the maps compared), median of `repeats` calls, alternating between the libraries.

pytorch-grad-cam's Score-CAM (512 whole-network forwards per image) and AblationCAM (512 whole-network forwards per
image, its ablation layer looping in Python) take minutes per image on 2 cores: they run at batch 1 only, once,
without warm-up (`--slow-repeats`), and their batch-8 cells are left empty (not measured). The load average before
and after the run is recorded: on a shared machine every number is an upper bound, the ratios (same run) are what
compares. `python -m benchmarks.every_method_speed [--repeats 3] [--slow-repeats 1] [--batches 1 8]` writes
benchmarks/results/every-method-speed-<machine>.json/.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.gradient_methods_speed import pytorch_grad_cam_version
from benchmarks.report import RESULTS, cpu_label, save_report

SIZE = 224
SLOW_IN_PYTORCH_GRAD_CAM = ("ScoreCAM", "AblationCAM")  # whole-network forwards per channel: batch 1, no warm-up


def chelsea(n: int) -> np.ndarray:
    """n copies of skimage's chelsea, [n, 3, 224, 224] float32, ImageNet-normalised."""
    from fusioncam.images import IMAGENET_MEAN, IMAGENET_STD, preprocess, sample_images

    image = preprocess(sample_images()["chelsea"], (SIZE, SIZE), IMAGENET_MEAN, IMAGENET_STD)
    return np.ascontiguousarray(np.repeat(image[None], n, axis=0), dtype=np.float32)


def classes_by_method() -> dict[str, str]:
    """Each classification method and its drop-in class name."""
    from fusioncam.pytorch_grad_cam import CLASS_METHODS
    from fusioncam.runtime.methods.registry import methods_for_task

    by_method = {cls.method: name for name, cls in CLASS_METHODS.items()}
    return {method: by_method.get(method, "") for method in methods_for_task("classification")}


def timed(run, repeats: int, warmup: bool) -> tuple[float, list[float], object]:
    """(median seconds, the times, the warm-up's or first call's result)."""
    first = run() if warmup else None
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
        first = result if first is None else first
    return statistics.median(times), times, first


def measure(batches: list[int], repeats: int, slow_repeats: int, only: list[str] | None = None,
            save=None, skip_slow_library: bool = False, rows: dict | None = None,
            exclude_at: dict[int, list[str]] | None = None) -> dict:
    """Every method at every batch size (all methods at the first batch size first); `save(rows)` after each cell,
    so a run cut short keeps what it measured."""
    import pytorch_grad_cam
    import torch
    import torchvision

    import fusioncam.pytorch_grad_cam as drop_in

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    rows = {} if rows is None else rows  # a resumed run's cells are kept and not measured again
    for n in batches:
        x = torch.from_numpy(chelsea(n))
        for method, name in classes_by_method().items():
            if only and method not in only:
                continue
            row = rows.setdefault(method, {"class": name or None, "batches": {}})
            if str(n) in row["batches"] or method in (exclude_at or {}).get(n, []):
                continue
            cell: dict = {}
            kwargs = {"model": model, "target_layers": [model.layer4]}
            try:
                if name and hasattr(drop_in, name):
                    with getattr(drop_in, name)(device="cpu", **kwargs) as cam:
                        our_s, our_times, ours = timed(lambda: cam(input_tensor=x, targets=None), repeats, True)
                    cell.update(fusioncam_s_per_image=our_s / n, fusioncam_times_s=our_times)
                else:  # a registry method without a drop-in class: the Explainer, as the drop-in would run it
                    our_s, our_times, ours = explainer_seconds(model, method, x.numpy(), repeats)
                    cell.update(fusioncam_s_per_image=our_s / n, fusioncam_times_s=our_times, via="Explainer")
            except Exception as exc:  # a method that fails is a row that says so, not a missing row
                cell["fusioncam_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                ours = None
            slow = name in SLOW_IN_PYTORCH_GRAD_CAM
            if name and hasattr(pytorch_grad_cam, name) and not (slow and (n > 1 or skip_slow_library)):
                try:
                    with getattr(pytorch_grad_cam, name)(**kwargs) as cam:
                        their_s, their_times, theirs = timed(lambda: cam(input_tensor=x, targets=None),
                                                             slow_repeats if slow else repeats, not slow)
                    cell.update(pytorch_grad_cam_s_per_image=their_s / n, pytorch_grad_cam_times_s=their_times)
                    if ours is not None:
                        cell["speedup"] = their_s / our_s
                        cell["max_abs_diff"] = float(np.abs(np.asarray(ours) - np.asarray(theirs)).max())
                except Exception as exc:
                    cell["pytorch_grad_cam_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            elif name and hasattr(pytorch_grad_cam, name):
                cell["pytorch_grad_cam_note"] = "not measured (minutes per image on this machine)"
            cell["load_average_1min"] = os.getloadavg()[0]
            row["batches"][str(n)] = cell
            print(method, n, {k: v for k, v in cell.items() if not k.endswith("times_s")}, flush=True)
            if save is not None:
                save(rows)
    return rows


def explainer_seconds(model, method: str, images: np.ndarray, repeats: int):
    """A registry method with no drop-in class, through fusioncam.Explainer on the drop-in's bundle."""
    from fusioncam.bundle_cache import module_bundle
    from fusioncam.runtime import Explainer

    bundle = module_bundle(model, "layer4", (SIZE, SIZE))
    with Explainer(bundle, device="cpu", compat="pytorch-grad-cam") as explainer:
        return timed(lambda: explainer.explain(images, methods=(method,)).maps[method], repeats, True)


def markdown(report: dict) -> str:
    load = report["load_average_1min"]
    lines = ["# Every classification method: fusioncam.pytorch_grad_cam and pytorch-grad-cam, seconds per image", "",
             f"{report['machine']}, {report['date']}; {report['model']}; {report['image']}; {report['targets']}; "
             f"median of {report['repeats']} calls after a warm-up (pytorch-grad-cam's ScoreCAM and AblationCAM: "
             f"batch 1, {report['slow_repeats']} call, no warm-up); torch {report['torch']} "
             f"({report['torch_threads']} threads), pytorch-grad-cam {report['grad_cam']}; 1-minute load average "
             f"{load['before']:.1f} before and {load['after']:.1f} at the last cell (a shared machine: other jobs ran; "
             f"each cell's load average is in the JSON)." + ("" if report.get("complete") else
                                                              " **Partial: the run was cut short.**"), "",
             "| method | class | fusioncam s/image, batch 1 | pytorch-grad-cam, batch 1 | speed-up | "
             "fusioncam, batch 8 | pytorch-grad-cam, batch 8 | speed-up | max abs diff |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def seconds(cell: dict, key: str) -> str:
        value = cell.get(f"{key}_s_per_image")
        return f"{value:.3f}" if value is not None else ("error" if f"{key}_error" in cell else "-")

    for method, row in report["methods"].items():
        cells = [row["batches"].get(str(n), {}) for n in (1, 8)]
        diffs = [c["max_abs_diff"] for c in cells if "max_abs_diff" in c]
        parts = []
        for cell in cells:
            speedup = f"{cell['speedup']:.1f}x" if "speedup" in cell else "-"
            parts += [seconds(cell, "fusioncam"), seconds(cell, "pytorch_grad_cam"), speedup]
        difference = f"{max(diffs):.1e}" if diffs else "-"
        lines.append(f"| {method} | {row['class'] or '-'} | " + " | ".join(parts) + f" | {difference} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slow-repeats", type=int, default=1)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--methods", nargs="+", default=None, help="only these registry methods (a quick check)")
    parser.add_argument("--resume", action="store_true", help="keep the cells of the saved results, measure the rest")
    parser.add_argument("--exclude-at-8", nargs="+", default=[],
                        help="methods not measured at batch 8 (fusioncam's Score-CAM sweep methods take minutes)")
    parser.add_argument("--skip-slow-library", action="store_true",
                        help="leave pytorch-grad-cam's ScoreCAM and AblationCAM out (minutes per image)")
    args = parser.parse_args(argv)
    import pytorch_grad_cam  # noqa: F401  (its version below)
    import torch

    folder = RESULTS if args.methods is None else Path(tempfile.gettempdir()) / "every-method-speed-check"
    header = {"machine": cpu_label(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "batches": args.batches, "repeats": args.repeats, "slow_repeats": args.slow_repeats,
              "model": f"torchvision resnet18, seeded random weights (torch.manual_seed(0)), layer4, {SIZE}x{SIZE}",
              "image": "skimage chelsea, ImageNet-normalised (batch 8: eight copies)",
              "targets": "each image's top class", "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
              "grad_cam": pytorch_grad_cam_version()}
    before = os.getloadavg()[0]
    rows = None
    if args.resume and (folder / f"every-method-speed-{cpu_label()}.json").exists():
        import json

        saved = json.loads((folder / f"every-method-speed-{cpu_label()}.json").read_text())
        rows, header["date"] = saved["methods"], saved["date"] + " (resumed " + header["date"] + ")"
        before = saved["load_average_1min"]["before"]
    header["not_measured_at_batch_8"] = args.exclude_at_8

    def save(rows: dict, complete: bool = False) -> None:
        report = {**header, "complete": complete, "methods": rows,
                  "load_average_1min": {"before": before, "after": os.getloadavg()[0]}}
        save_report(folder, f"every-method-speed-{cpu_label()}", report, markdown(report))

    with tempfile.TemporaryDirectory() as cache:
        os.environ["FUSIONCAM_CACHE"] = cache  # the drop-in's exports go here, not into the user's cache
        rows = measure(args.batches, args.repeats, args.slow_repeats, args.methods, save, args.skip_slow_library,
                       rows, {8: args.exclude_at_8})
    save(rows, complete=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

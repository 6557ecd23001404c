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

`--cells ablationcam@1 scorecam@8 ...` measures just those cells again (both libraries, side by side; pytorch-grad-cam's
slow classes at any batch size there) and merges them into the saved results, every other cell kept as it was; each
such cell records when it ran and the load average before and after it. `--warmup one-image` warms up on the first
image only (the export and session set-up, without paying a minutes-long batch-8 sweep twice).
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
from benchmarks.report import RESULTS, cpu_label, machine_record, save_report

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


def timed(run, repeats: int, warmup: bool, warm_up=None) -> tuple[float, list[float], object]:
    """(median seconds, the times, the warm-up's or first timed call's result). `warm_up`, when given, is the untimed
    warm-up call instead of `run` itself (a smaller one), and the result is the first timed call's."""
    if warm_up is not None:
        warm_up()
    first = run() if warmup and warm_up is None else None
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
        first = result if first is None else first
    return statistics.median(times), times, first


def parse_cells(cells: list[str]) -> set[tuple[str, int]]:
    """`method@batch` strings as (method, batch) pairs; an unknown method or a malformed cell is a clear error."""
    known = classes_by_method()
    parsed = set()
    for cell in cells:
        method, _, batch = cell.rpartition("@")
        if method not in known or not batch.isdigit() or int(batch) < 1:
            raise SystemExit(f"--cells {cell!r}: expected METHOD@BATCH with METHOD one of {', '.join(known)} and "
                             "BATCH a positive integer, e.g. ablationcam@1")
        parsed.add((method, int(batch)))
    return parsed


def measure(batches: list[int], repeats: int, slow_repeats: int, only: list[str] | None = None,
            save=None, skip_slow_library: bool = False, rows: dict | None = None,
            exclude_at: dict[int, list[str]] | None = None, cells: set[tuple[str, int]] | None = None,
            one_image_warmup: bool = False) -> dict:
    """Every method at every batch size (all methods at the first batch size first); `save(rows)` after each cell,
    so a run cut short keeps what it measured. With `cells`, only those (method, batch) cells, measured again even
    where saved, pytorch-grad-cam's slow classes included at any batch size."""
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
            if cells is not None:
                if (method, n) not in cells:
                    continue
            elif str(n) in row["batches"] or method in (exclude_at or {}).get(n, []):
                continue
            cell: dict = {"measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                          "load_average_1min_before": os.getloadavg()[0]}
            if cells is not None:
                cell["measured_alone"] = True  # with --cells, at another time than the rest of the table
            if one_image_warmup:
                cell["warmup"] = "one image"
            kwargs = {"model": model, "target_layers": [model.layer4]}
            try:
                if name and hasattr(drop_in, name):
                    with getattr(drop_in, name)(device="cpu", **kwargs) as cam:
                        small = (lambda: cam(input_tensor=x[:1], targets=None)) if one_image_warmup else None
                        our_s, our_times, ours = timed(lambda: cam(input_tensor=x, targets=None), repeats, True, small)
                    cell.update(fusioncam_s_per_image=our_s / n, fusioncam_times_s=our_times)
                else:  # a registry method without a drop-in class: the Explainer, as the drop-in would run it
                    our_s, our_times, ours = explainer_seconds(model, method, x.numpy(), repeats, one_image_warmup)
                    cell.update(fusioncam_s_per_image=our_s / n, fusioncam_times_s=our_times, via="Explainer")
            except Exception as exc:  # a method that fails is a row that says so, not a missing row
                cell["fusioncam_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                ours = None
            slow = name in SLOW_IN_PYTORCH_GRAD_CAM
            slow_skipped = slow and cells is None and (n > 1 or skip_slow_library)
            if name and hasattr(pytorch_grad_cam, name) and not slow_skipped:
                try:
                    with getattr(pytorch_grad_cam, name)(**kwargs) as cam:
                        small = (lambda: cam(input_tensor=x[:1], targets=None)) if one_image_warmup else None
                        their_s, their_times, theirs = timed(lambda: cam(input_tensor=x, targets=None),
                                                             slow_repeats if slow else repeats, not slow,
                                                             None if slow else small)
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


def explainer_seconds(model, method: str, images: np.ndarray, repeats: int, one_image_warmup: bool = False):
    """A registry method with no drop-in class, through fusioncam.Explainer on the drop-in's bundle."""
    from fusioncam.bundle_cache import module_bundle
    from fusioncam.runtime import Explainer

    bundle = module_bundle(model, "layer4", (SIZE, SIZE))
    with Explainer(bundle, device="cpu", compat="pytorch-grad-cam") as explainer:
        small = (lambda: explainer.explain(images[:1], methods=(method,))) if one_image_warmup else None
        return timed(lambda: explainer.explain(images, methods=(method,)).maps[method], repeats, True, small)


def markdown(report: dict) -> str:
    load = report["load_average_1min"]
    lines = ["# Every classification method: fusioncam.pytorch_grad_cam and pytorch-grad-cam, seconds per image", "",
             f"{report['machine']}, {report['date']}; {report['model']}; {report['image']}; {report['targets']}; "
             f"median of {report['repeats']} calls after a warm-up (pytorch-grad-cam's ScoreCAM and AblationCAM: "
             f"{report['slow_repeats']} call, no warm-up); torch {report['torch']} "
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
    later = [(method, n, cell) for method, row in report["methods"].items() for n, cell in row["batches"].items()
             if cell.get("measured_alone")]
    if later:
        lines += ["", "Cells measured on their own (`--cells`), both libraries side by side in that cell:", ""]
        for method, n, cell in sorted(later, key=lambda item: item[2]["measured_at"]):
            warmup = "a one-image warm-up" if cell.get("warmup") == "one image" else "a warm-up call"

            def calls(key: str) -> str:
                count = len(cell.get(f"{key}_times_s", []))
                return f"{count} timed call{'s' if count != 1 else ''}"

            if "pytorch_grad_cam_error" in cell:
                library = "pytorch-grad-cam failed (the JSON has its error)"
            elif cell.get("pytorch_grad_cam_s_per_image") is None:
                library = "pytorch-grad-cam has no such class"
            elif report["methods"][method]["class"] in SLOW_IN_PYTORCH_GRAD_CAM:
                library = f"pytorch-grad-cam {calls('pytorch_grad_cam')} without warm-up"
            else:
                library = f"pytorch-grad-cam {calls('pytorch_grad_cam')} after {warmup}"
            lines.append(f"- {method}, batch {n}: {cell['measured_at']}, 1-minute load average "
                         f"{cell['load_average_1min_before']:.1f} before and {cell['load_average_1min']:.1f} after; "
                         f"fusioncam {calls('fusioncam')} after {warmup}, {library}")
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
    parser.add_argument("--cells", nargs="+", default=None, metavar="METHOD@BATCH",
                        help="measure only these cells again (both libraries) and merge them into the saved results")
    parser.add_argument("--warmup", choices=("full", "one-image"), default="full",
                        help="the untimed warm-up call: the whole batch, or its first image only")
    args = parser.parse_args(argv)
    cells = parse_cells(args.cells) if args.cells else None
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
    saved_path = folder / f"every-method-speed-{cpu_label()}.json"
    if cells is not None:
        import json

        if not saved_path.exists():
            raise SystemExit(f"--cells merges into the saved results, and {saved_path} does not exist; run the whole "
                             "table first")
        saved = json.loads(saved_path.read_text())  # the header and every other cell stay as they were
        header = {key: value for key, value in saved.items() if key not in ("methods", "complete")}
        header["cells_machine_record"] = machine_record()  # what measured the --cells (the rest: machine_record)
        rows, before = saved["methods"], saved["load_average_1min"]["before"]
        header["not_measured_at_batch_8"] = [method for method in saved.get("not_measured_at_batch_8", [])
                                             if (method, 8) not in cells]
    elif args.resume and saved_path.exists():
        import json

        saved = json.loads(saved_path.read_text())
        rows, header["date"] = saved["methods"], saved["date"] + " (resumed " + header["date"] + ")"
        before = saved["load_average_1min"]["before"]
    if cells is None:
        header["not_measured_at_batch_8"] = args.exclude_at_8

    def save(rows: dict, complete: bool = False) -> None:
        load = header.get("load_average_1min") or {"before": before, "after": os.getloadavg()[0]}  # --cells: kept
        if cells is not None:
            complete = bool(saved.get("complete"))  # merging cells does not change whether the whole run finished
        report = {**header, "complete": complete, "methods": rows, "load_average_1min": load}
        save_report(folder, f"every-method-speed-{cpu_label()}", report, markdown(report))

    with tempfile.TemporaryDirectory() as cache:
        os.environ["FUSIONCAM_CACHE"] = cache  # the drop-in's exports go here, not into the user's cache
        batches = sorted({n for _, n in cells}) if cells is not None else args.batches
        rows = measure(batches, args.repeats, args.slow_repeats, args.methods, save, args.skip_slow_library,
                       rows, {8: args.exclude_at_8}, cells, args.warmup == "one-image")
    save(rows, complete=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

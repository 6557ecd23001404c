"""`python -m benchmarks.road_imputation`: seconds per image of ROAD's noisy linear imputation
(fusioncam/metrics/road_imputation.py) with each of its two exact solvers, and pytorch-grad-cam 1.5.7's
NoisyLinearImputer, side by side in one run.

Per size (square images, 3 channels; half of each image's pixels removed: those at or above the median of a smooth
random map, as ROAD's MoRF at percentile 50 removes a CAM's blob), interleaved repeats of: a batch imputed with the
banded Cholesky (LAPACK on one BLAS thread), the same batch with SuperLU, and (for a few images) pytorch-grad-cam
one image at a time; the median over repeats, and the largest difference between the solvers. The crossover sets
`BANDED_MAX_WIDTH`. JSON and markdown land in benchmarks/results/road-imputation-<cpu>.*.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

import fusioncam.metrics.road_imputation as imputation

from .report import RESULTS, cpu_label, save_report

SIZES = (28, 64, 112, 160, 224)


def half_removed(batch: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 [B, 3, S, S], removed bool [B, S, S]): standard-normal images, the top half of a blurred map."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    maps = gaussian_filter(rng.random((batch, size, size)), (0, size / 10, size / 10))
    removed = maps >= np.median(maps.reshape(batch, -1), axis=1)[:, None, None]
    return rng.standard_normal((batch, 3, size, size)).astype(np.float32), removed


def timed(function) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def measure(size: int, batch: int, repeats: int, reference_images: int) -> dict:
    """Median seconds per image of each solver at this size, and their largest disagreement."""
    import torch
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    images, removed = half_removed(batch, size, seed=size)
    seconds = {"banded": [], "superlu": [], "pytorch_grad_cam": []}
    saved = imputation.BANDED_MAX_WIDTH
    difference = 0.0
    try:
        for _ in range(repeats):
            imputation.BANDED_MAX_WIDTH = size
            took, banded = timed(lambda: imputation.imputed_images(images, removed))
            seconds["banded"].append(took / batch)
            imputation.BANDED_MAX_WIDTH = 0
            took, superlu = timed(lambda: imputation.imputed_images(images, removed))
            seconds["superlu"].append(took / batch)
            difference = max(difference, float(np.abs(banded - superlu).max()))
            imputer = NoisyLinearImputer(noise=0)
            took, _ = timed(lambda: [imputer(torch.from_numpy(images[i]), torch.from_numpy((~removed[i]).astype(
                np.float32))) for i in range(reference_images)])
            seconds["pytorch_grad_cam"].append(took / reference_images)
    finally:
        imputation.BANDED_MAX_WIDTH = saved
    return {"size": size, "batch": batch, "unknowns_per_image": int(removed[0].sum()),
            "seconds_per_image": {k: float(np.median(v)) for k, v in seconds.items()},
            "all_seconds_per_image": seconds, "max_abs_difference_banded_superlu": difference}


def markdown(report: dict) -> str:
    machine = report["machine_record"]
    lines = [f"# ROAD imputation: seconds per image ({machine['cpu_model']}, {machine['cpu_cores']} cores, "
             f"load average {report['load_average']}), {machine['recorded_at']}", "",
             "Half of each image's pixels removed (a smooth blob), 3 channels; median of interleaved repeats.", "",
             "| size | unknowns | banded Cholesky | SuperLU | pytorch-grad-cam | max diff banded vs SuperLU |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in report["sizes"]:
        s = row["seconds_per_image"]
        lines.append(f"| {row['size']}x{row['size']} | {row['unknowns_per_image']} | {s['banded'] * 1e3:.2f} ms | "
                     f"{s['superlu'] * 1e3:.2f} ms | {s['pytorch_grad_cam'] * 1e3:.2f} ms | "
                     f"{row['max_abs_difference_banded_superlu']:.1e} |")
    lines += ["", f"fusioncam uses the banded solver up to width {report['banded_max_width']} (BANDED_MAX_WIDTH)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        batch = max(2, min(256, 200_000 // (size * size)))
        rows.append(measure(size, batch, args.repeats, reference_images=min(batch, 16 if size <= 64 else 2)))
        print(rows[-1]["size"], rows[-1]["seconds_per_image"], flush=True)
    report = {"sizes": rows, "banded_max_width": imputation.BANDED_MAX_WIDTH,
              "load_average": [round(v, 2) for v in os.getloadavg()]}
    from .report import machine_record

    report["machine_record"] = machine_record()
    save_report(args.out, "road-imputation-" + cpu_label(), report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Peak memory of reading and drawing huge images, each case in a fresh child process, side by side in one run.

    python -m benchmarks.memory_bounds

Cases: a 20000x20000 PNG decompression bomb (refused from its header), a 9000x9000 JPEG decoded at full size and
reduced (max_side=4096, as the CLI reads), and the overlay of a 4096x4096 and of an 8000x6000 image by
`fusioncam.overlay` (banded, capped at 4096) next to the previous whole-image float64 formula. Each child reports
its own peak RSS (VmHWM) after its imports and after the case; the rise is what the case cost.
Results: benchmarks/results/memory-bounds-<cpu>.{json,md}.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .report import RESULTS, cpu_label, run_json_child, save_report

from tests.support.huge_images import write_huge_jpeg, write_png_bomb

CHILD_PRELUDE = """
import json, sys
import cv2, numpy as np
from fusioncam.errors import FusionCamError
from fusioncam.images import read_rgb
from fusioncam.report.pictures import overlay
def high_water():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
def previous_overlay(image, cam):  # fusioncam's overlay before the cap and the bands: float64 over the whole image
    levels = np.rint(np.clip(cv2.resize(cam, (image.shape[1], image.shape[0])), 0, 1) * 255).astype(np.uint8)
    heat = cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return np.clip(np.rint(0.5 * heat.astype(np.float64) + 0.5 * image.astype(np.float64)), 0, 255).astype(np.uint8)
path, case = sys.argv[1], sys.argv[2]
image = None
if case.startswith("overlay"):
    height, width = (int(v) for v in sys.argv[3:5])
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
cam = np.random.default_rng(1).random((7, 7)).astype(np.float32)
before = high_water()
row = {}
try:
    if case == "read":
        row["shape"] = list(read_rgb(path).shape)
    elif case == "read_reduced":
        row["shape"] = list(read_rgb(path, max_side=4096).shape)
    elif case == "overlay":
        row["shape"] = list(overlay(image, cam).shape)
    elif case == "overlay_previous":
        row["shape"] = list(previous_overlay(image, cam).shape)
except FusionCamError as exc:
    row["refused"] = str(exc)
row["rise_bytes"] = high_water() - before
row["pixels_in"] = int(image.shape[0] * image.shape[1]) if image is not None else None
print(json.dumps(row))
"""


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="fusioncam-memory-"))
    bomb, jpeg = folder / "bomb.png", folder / "huge.jpg"
    write_png_bomb(bomb, 20000)
    write_huge_jpeg(jpeg, 9000)
    cases = [
        ("20000x20000 PNG bomb (400 MP, %d KB on disk): read_rgb" % (bomb.stat().st_size // 1024), bomb, "read"),
        ("9000x9000 JPEG: read_rgb, full size", jpeg, "read"),
        ("9000x9000 JPEG: read_rgb(max_side=4096), as the CLI reads", jpeg, "read_reduced"),
        ("overlay 4096x4096: fusioncam.overlay (banded)", bomb, "overlay", "4096", "4096"),
        ("overlay 4096x4096: previous whole-image float64 formula", bomb, "overlay_previous", "4096", "4096"),
        ("overlay 8000x6000: fusioncam.overlay (capped at 4096, banded)", bomb, "overlay", "6000", "8000"),
        ("overlay 8000x6000: previous whole-image float64 formula", bomb, "overlay_previous", "6000", "8000"),
    ]
    rows = []
    for label, path, *argv in cases:
        row = run_json_child(CHILD_PRELUDE, str(path), *argv)
        row["case"] = label
        if row.get("pixels_in"):
            row["bytes_per_input_pixel"] = row["rise_bytes"] / row["pixels_in"]
        rows.append(row)
    lines = ["| case | result | peak RSS rise (MiB) | bytes per input pixel |", "| --- | --- | ---: | ---: |"]
    for row in rows:
        result = "refused: " + row["refused"][:60] + "..." if "refused" in row else row.get("shape", row.get("error"))
        per_pixel = f"{row['bytes_per_input_pixel']:.1f}" if "bytes_per_input_pixel" in row else ""
        lines.append(f"| {row['case']} | {result} | {row.get('rise_bytes', 0) / 2**20:.1f} | {per_pixel} |")
    text = ("# Memory of huge images (each case in a fresh process; shared machine, busy with other work)\n\n"
            + "\n".join(lines) + "\n")
    save_report(RESULTS, f"memory-bounds-{cpu_label()}", {"cases": rows}, text)


if __name__ == "__main__":
    main()

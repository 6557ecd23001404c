"""One image's output files for a segmentation bundle (report.py's layout, the same file names and record).

The panel starts with the predicted segmentation (a colour per class) with the explained region outlined, then
Grad-CAM, Score-CAM, Fusion-CAM and the other chosen methods, each with the region outlined; each chosen method's
overlay PNG (region outlined) and raw .npy map; the record adds the region (its area at the output resolution and
the predicted classes' pixel counts) to results.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .report import ImageRecord, ImageSource, _npy_bytes, _png_bytes, _write_all, output_files, panel_methods
from .runtime.methods import METHOD_TITLES
from .segmentation_pictures import outline_region, segmentation_panel
from .visualize import overlay


def _class_name(names: list[str] | None, index: int) -> str:
    return names[index] if names and 0 <= index < len(names) else f"class {index}"


def parse_region(text: str | None):
    """The CLI's --region: predicted (default), all, or x0,y0,x1,y1 in the model's input pixels."""
    from .errors import InputError

    if text is None or text in ("predicted", "all"):
        return text
    parts = text.split(",")
    if len(parts) != 4 or not all(part.strip().lstrip("-").isdigit() for part in parts):
        raise InputError(f"--region {text!r}: give predicted, all, or a box x0,y0,x1,y1 (integers, in the model's "
                         f"input pixels)")
    return tuple(int(part) for part in parts)


def write_segmentation_outputs(out: Path, source: ImageSource, rgb: np.ndarray, explanation, seconds: float,
                               methods: Sequence[str], colormap: str = "jet") -> ImageRecord:
    """Encode one segmentation explanation's files in memory, write them (all or none), and return its record."""
    files = output_files(source.name, methods)
    weights = explanation.region_weights[0]
    shown = panel_methods(methods)
    encoded = {files["panel"]: _png_bytes(segmentation_panel(rgb, explanation, 0, shown, colormap=colormap,
                                                             labels=METHOD_TITLES))}
    for method in methods:
        cam = explanation.maps[method][0]
        encoded[files[f"{method}_overlay"]] = _png_bytes(outline_region(overlay(rgb, cam, colormap), weights))
        encoded[files[f"{method}_npy"]] = _npy_bytes(cam.astype(np.float32))
    _write_all(out, encoded)
    fusion = explanation.fusion[0]
    peak = np.unravel_index(int(np.argmax(fusion)), fusion.shape)
    predicted = explanation.predicted[0]
    counts = np.bincount(predicted.ravel(), minlength=explanation.logits.shape[1])
    return ImageRecord(
        name=source.name, input=source.label, class_index=int(explanation.classes[0]),
        class_name=explanation.class_name(0), probability=float(explanation.probabilities[0]),
        betas=explanation.beta_row(0), degenerate=bool(explanation.degenerate[0]), seconds=float(seconds),
        forwards_run=int(explanation.forwards_run[0]), files=files,
        fusion_stats={"shape": list(fusion.shape), "min": float(fusion.min()), "max": float(fusion.max()),
                      "mean": float(fusion.mean()), "peak_yx": [int(peak[0]), int(peak[1])]},
        union_betas=explanation.union_beta_row(0),
        region={"output_size": list(weights.shape), "area": float(weights.sum()),
                "predicted_pixels": {_class_name(explanation.class_names, c): int(n)
                                     for c, n in enumerate(counts) if n}},
    )

"""One image's output files for a segmentation bundle (report.py's layout, the same file names and record).

The panel starts with the predicted segmentation (a colour per class) with the explained region outlined, then
the chosen methods' maps, each with the region outlined; each chosen method's
overlay PNG (region outlined) and raw .npy map; the record adds the region (its area at the output resolution and
the predicted classes' pixel counts) to results.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .explain_folder import ImageRecord, ImageSource, image_record, output_files, panel_methods, write_map_files
from ..runtime.methods import METHOD_TITLES
from .segmentation_pictures import outline_region, segmentation_panel


def _class_name(names: list[str] | None, index: int) -> str:
    return names[index] if names and 0 <= index < len(names) else f"class {index}"


def parse_region(text: str | None):
    """The CLI's --region: predicted (default), all, or x0,y0,x1,y1 in the model's input pixels."""
    from ..errors import InputError

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
    write_map_files(out, files, segmentation_panel(rgb, explanation, 0, shown, colormap=colormap, labels=METHOD_TITLES),
                    rgb, explanation, methods, colormap, outline=lambda picture: outline_region(picture, weights))
    predicted = explanation.predicted[0]
    counts = np.bincount(predicted.ravel(), minlength=explanation.logits.shape[1])
    return image_record(
        source, explanation, seconds, files,
        region={"output_size": list(weights.shape), "area": float(weights.sum()),
                "predicted_pixels": {_class_name(explanation.class_names, c): int(n)
                                     for c, n in enumerate(counts) if n}},
    )

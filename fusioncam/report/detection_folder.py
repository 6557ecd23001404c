"""`fusioncam explain` on a detection bundle: per image NAME, `NAME_detections.png` (the image with its explained
instances' boxes, labels and scores drawn), and per instance k `NAME_instance{k}_panel.png` (image | box | each
method's map) and `NAME_instance{k}_{method}.npy` (the raw float32 map). results.json's image record lists the
instances (anchor, box in input pixels, class, class name, score, betas, files)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..runtime.methods import METHOD_TITLES
from .detection_pictures import detections_picture, instance_panel
from .explain_folder import (FILE_TAGS, ImageRecord, ImageSource, _npy_bytes, _png_bytes, _write_all,
                             panel_methods)


@dataclass
class DetectionRecord(ImageRecord):
    """An image record of a detection bundle: class_index -1, class_name "N detections", probability the highest
    instance score (0 without one); the instances themselves in `instances`."""

    instances: list[dict] = field(default_factory=list)


def detection_files(name: str, methods: Sequence[str], count: int) -> dict[str, str]:
    """File names of one image with `count` instances: the detections picture ("panel", what index.html shows),
    and per instance its panel and one .npy map per chosen method."""
    files = {"panel": f"{name}_detections.png"}
    for k in range(count):
        files[f"instance{k}_panel"] = f"{name}_instance{k}_panel.png"
        for method in methods:
            files[f"instance{k}_{method}_npy"] = f"{name}_instance{k}_{FILE_TAGS.get(method, method)}.npy"
    return files


def write_detection_outputs(out: Path, source: ImageSource, rgb: np.ndarray, explanation, seconds: float,
                            methods: Sequence[str], input_size: tuple[int, int], num_classes: int,
                            colormap: str = "jet") -> DetectionRecord:
    """Encode the image's detections picture, instance panels and maps in memory, write them all (or none), and
    return its record."""
    count = len(explanation.classes)
    files = detection_files(source.name, methods, count)
    shown = panel_methods(methods)
    encoded = {files["panel"]: _png_bytes(detections_picture(rgb, explanation, input_size, num_classes))}
    instances = []
    for k in range(count):
        encoded[files[f"instance{k}_panel"]] = _png_bytes(instance_panel(
            rgb, explanation, k, shown, input_size, num_classes, METHOD_TITLES, colormap=colormap))
        for method in methods:
            encoded[files[f"instance{k}_{method}_npy"]] = _npy_bytes(explanation.maps[method][k].astype(np.float32))
        instances.append({"index": k, "anchor": int(explanation.anchors[k]),
                          "box": [float(v) for v in explanation.boxes[k]], "class_index": int(explanation.classes[k]),
                          "class_name": explanation.class_name(k), "score": float(explanation.probabilities[k]),
                          "betas": explanation.beta_row(k),
                          "files": {key.split("_", 1)[1]: value for key, value in files.items()
                                    if key.startswith(f"instance{k}_")}})
    _write_all(out, encoded)
    forwards = explanation.forwards_run
    return DetectionRecord(
        name=source.name, input=source.label, class_index=-1, class_name=f"{count} detections",
        probability=float(explanation.probabilities.max()) if count else 0.0, betas={}, degenerate=False,
        seconds=float(seconds), forwards_run=int(np.sum(forwards)) if forwards is not None else 0, files=files,
        instances=instances)


__all__ = ["DetectionRecord", "detection_files", "write_detection_outputs"]

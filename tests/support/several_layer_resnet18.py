"""The seeded random ResNet-18 with the sharpened head (sharp_resnet18.py) exported with two target layers,
`layer3` and `layer4`, at 64x64: one several-layer classification bundle, built once per test process (the export
takes several seconds on 2 cores) and shared by the serving, dataset and `fusioncam explain` tests of such bundles."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from tests.support.sharp_resnet18 import SIZE, sharp_resnet18

LAYERS = ["layer3", "layer4"]


@functools.lru_cache(maxsize=None)
def several_layer_resnet18_bundle() -> Path:
    """sharp_resnet18() exported at LAYERS for SIZE inputs into a temporary folder removed at exit; tests read it
    and never change it."""
    import fusioncam

    folder = Path(tempfile.mkdtemp(prefix="several-layer-resnet18-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    bundle = folder / "resnet18-layer3-layer4.fcam"
    fusioncam.export_torch(sharp_resnet18(), LAYERS, bundle, input_size=SIZE)
    return bundle


def noise_photos(folder: Path, sizes: list[tuple[int, int]], seed: int) -> list[Path]:
    """PNG files of seeded uniform noise, one per (height, width) in `sizes` (image0.png, ...), in `folder`: images
    of other sizes than the bundle's, resized on reading as `fusioncam explain` and explain-dataset read files."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    paths = []
    for index, (height, width) in enumerate(sizes):
        path = folder / f"image{index}.png"
        cv2.imwrite(str(path), rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
        paths.append(path)
    return paths

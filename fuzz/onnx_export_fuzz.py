"""Fuzz ONNX loading and export: the input is an .onnx file given to fusioncam.export_onnx, and a bundle that exports
is loaded by an Explainer and explains one image.

Seeds are small hand-built classifiers (tests/support/tiny_models.py) with different heads, sizes and opsets; half of the
mutations change one field of the parsed model (mutators.mutate_onnx), the rest are libFuzzer's byte mutations.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from harness import REPOSITORY, instrumented_imports, run  # noqa: E402
from mutators import mutate_onnx, structured  # noqa: E402

with instrumented_imports():
    import fusioncam

sys.path.insert(0, str(REPOSITORY))  # the repository: tests.support holds the seed models
from tests.support.tiny_models import tiny_classifier  # noqa: E402

WORK = Path(tempfile.mkdtemp(prefix="fusioncam-onnx-fuzz-"))


def seeds():
    """Tiny classifiers: plain, with a head op between the features and the pooling, other sizes, opset 13."""
    variants = {
        "plain": tiny_classifier(size=8),
        "sigmoid-head": tiny_classifier(size=8, head_op="Sigmoid"),
        "relu-head": tiny_classifier(size=6, head_op="Relu", classes=3),
        "one-channel": tiny_classifier(channels=1, size=5, classes=2),
        "opset13": tiny_classifier(size=8, opset=13),
    }
    for name, model in variants.items():
        yield f"{name}.onnx", model.SerializeToString()


def test(data: bytes) -> None:
    """Export the bytes as an .onnx model; when that works, the bundle must explain one image into a map in [0, 1]."""
    model_path, out = WORK / "model.onnx", WORK / "model.fcam"
    shutil.rmtree(out, ignore_errors=True)
    model_path.write_bytes(data)
    fusioncam.export_onnx(model_path, out)
    explainer = fusioncam.Explainer(out, device="cpu", batch_size=4)
    height, width = explainer.bundle.manifest.input_size
    images = np.random.default_rng(len(data)).standard_normal((1, 3, height, width)).astype(np.float32)
    fusion = explainer.explain(images).fusion
    if fusion.shape != (1, height, width) or not np.isfinite(fusion).all() or fusion.min() < 0 or fusion.max() > 1:
        raise AssertionError(f"an exported bundle gave a fusion map {fusion.shape} out of [0, 1] or not finite")


if __name__ == "__main__":
    run(test, seeds, structured(0, mutate_onnx))

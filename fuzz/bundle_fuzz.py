"""Fuzz bundle loading: a tiny exported bundle with its manifest or one of its graphs replaced by the input, then
loaded and run by an Explainer on one image.

The first byte picks what the rest replaces: 0 the manifest's text, 1 explain.onnx, 2 scorer.onnx. A replaced graph
gets its true SHA-256 in the manifest, and a manifest that parses is re-sealed (its manifest_sha256 recomputed), as a
careless tool or an attacker would do: the hashes then pass and the bundle's facts and graphs themselves are tested.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from harness import REPOSITORY, instrumented_imports, run  # noqa: E402
from mutators import mutate_json, mutate_onnx, structured  # noqa: E402

with instrumented_imports():
    import fusioncam
    from fusioncam.bundle import EXPLAIN_GRAPH, MANIFEST, SCORER_GRAPH, Manifest
    from fusioncam.hashing import file_sha256

sys.path.insert(0, str(REPOSITORY))  # the repository: tests.support holds the seed models
from tests.support.tiny_models import save, tiny_classifier  # noqa: E402

WORK = Path(tempfile.mkdtemp(prefix="fusioncam-bundle-fuzz-"))
PRISTINE = WORK / "pristine.fcam"
TARGETS = {0: MANIFEST, 1: EXPLAIN_GRAPH, 2: SCORER_GRAPH}


def _export_pristine() -> None:
    """The tiny classifier (8x8 inputs, 5 classes) exported once: every input starts from a copy of it."""
    if not PRISTINE.exists():
        fusioncam.export_onnx(save(tiny_classifier(size=8), WORK / "tiny.onnx"), PRISTINE)


def seeds():
    """The pristine bundle's three files, each behind its selector byte."""
    _export_pristine()
    for selector, name in TARGETS.items():
        yield f"{selector}-{name}", bytes([selector]) + (PRISTINE / name).read_bytes()


def resealed(text: bytes) -> bytes:
    """A manifest that parses as a JSON object comes back with its manifest_sha256 recomputed; anything else as is."""
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or not hasattr(Manifest, "seal"):
            return text
        data.pop("manifest_sha256", None)
        manifest = Manifest(**data)
        manifest.seal()
        return manifest.to_json().encode("utf-8")
    except Exception:  # not a manifest the dataclass can even hold: load_bundle must refuse it as it is
        return text


def test(data: bytes) -> None:
    """Replace one file of a copy of the bundle, then load it and explain one image of the size it declares."""
    if not data:
        return
    _export_pristine()
    bundle = WORK / "case.fcam"
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(PRISTINE, bundle)
    name = TARGETS[data[0] % len(TARGETS)]
    payload = data[1:]
    if name == MANIFEST:
        (bundle / MANIFEST).write_bytes(resealed(payload))
    else:
        (bundle / name).write_bytes(payload)
        manifest = json.loads((bundle / MANIFEST).read_text())
        manifest["files"][name] = file_sha256(bundle / name)
        (bundle / MANIFEST).write_bytes(resealed(json.dumps(manifest).encode()))
    explainer = fusioncam.Explainer(bundle, device="cpu", batch_size=2)
    height, width = explainer.bundle.manifest.input_size
    images = np.random.default_rng(len(data)).standard_normal((1, 3, height, width)).astype(np.float32)
    explanation = explainer.explain(images, methods=("gradcam", "fusion"))
    fusion = explanation.fusion
    if fusion.shape != (1, height, width) or not np.isfinite(fusion).all() or fusion.min() < 0 or fusion.max() > 1:
        raise AssertionError(f"a bundle that loads gave a fusion map {fusion.shape} out of [0, 1] or not finite")


def mutate_file(data: bytes, rng) -> bytes | None:
    """The manifest's JSON or a graph's protobuf, changed in one field (data is the payload after the selector)."""
    return mutate_json(data, rng) or mutate_onnx(data, rng)


if __name__ == "__main__":
    run(test, seeds, structured(1, mutate_file))

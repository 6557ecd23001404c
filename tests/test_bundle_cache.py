"""The export cache of `.onnx` models is keyed by the graph file and its external data: new weights, new bundle."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

import fusioncam
from fusioncam.bundle_cache import onnx_bundle
from fusioncam.export.onnx_loading import onnx_fingerprint
from fusioncam.hashing import file_sha256
from tests.support.tiny_models import tiny_classifier


def save_with_external_data(model: onnx.ModelProto, path) -> None:
    """Every tensor in `<name>.data` beside the graph file (onnx appends to an existing data file: start afresh)."""
    (path.parent / f"{path.name}.data").unlink(missing_ok=True)
    onnx.save(model, str(path), save_as_external_data=True, location=f"{path.name}.data", size_threshold=0)


def test_new_external_weights_beside_an_unchanged_graph_are_a_new_model(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONCAM_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "model.onnx"
    save_with_external_data(tiny_classifier(size=16, seed=0), path)
    graph_bytes = path.read_bytes()
    first = onnx_bundle(path)
    assert onnx_bundle(path).path == first.path  # unchanged: served from the cache

    save_with_external_data(tiny_classifier(size=16, seed=1), path)  # retrained: same graph, other weights
    assert path.read_bytes() == graph_bytes  # the graph file alone cannot tell them apart
    second = onnx_bundle(path)
    assert second.path != first.path
    assert second.manifest.source_sha256 == onnx_fingerprint(path) != first.manifest.source_sha256

    images = np.random.default_rng(5).standard_normal((2, 3, 16, 16)).astype(np.float32)
    got = fusioncam.Explainer(second, device="cpu").explain(images)
    fresh = fusioncam.Explainer(fusioncam.export_onnx(path, tmp_path / "fresh.fcam").bundle, device="cpu").explain(images)
    np.testing.assert_array_equal(got.fusion, fresh.fusion)
    stale = fusioncam.Explainer(first, device="cpu").explain(images)
    assert not np.array_equal(stale.probabilities, got.probabilities)


def test_fingerprint_of_a_self_contained_file_is_its_hash(tmp_path):
    path = tmp_path / "inline.onnx"
    onnx.save(tiny_classifier(), str(path))
    assert onnx_fingerprint(path) == file_sha256(path)


def test_weights_loaded_are_those_of_the_external_file(tmp_path):
    path = tmp_path / "model.onnx"
    model = tiny_classifier(seed=2)
    save_with_external_data(model, path)
    loaded = fusioncam.export.onnx_loading.load_onnx(path).model
    want = {t.name: numpy_helper.to_array(t) for t in tiny_classifier(seed=2).graph.initializer}
    got = {t.name: numpy_helper.to_array(t) for t in loaded.graph.initializer}
    assert want.keys() == got.keys() and all(np.array_equal(want[k], got[k]) for k in want)

"""Bundles are verified whole: the manifest is covered by its own hash, and its facts must agree with the graphs
(read without their weights), so edited manifests and swapped graphs are a BundleError naming the field; a damaged
cache entry is exported again instead of failing forever."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest

import fusioncam
from fusioncam.bundle import MANIFEST, Manifest, load_bundle
from fusioncam.cli.main import main
from fusioncam.bundle_cache import onnx_bundle
from fusioncam.errors import BundleError
from fusioncam.hashing import file_sha256
from tests.support.safety_helpers import leftovers, one_error_line, tiny_bundle, tiny_onnx, write_images


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return tiny_bundle(tmp_path_factory.mktemp("tiny"))


@pytest.fixture()
def copy(bundle, tmp_path) -> Path:
    shutil.copytree(bundle, tmp_path / "copy.fcam")
    return tmp_path / "copy.fcam"


def _manifest(path: Path) -> dict:
    return json.loads((path / MANIFEST).read_text())


def _rewrite(path: Path, document: dict, reseal: bool) -> None:
    """Write a manifest; with `reseal`, recompute every file hash and the manifest's own hash, as a forger would."""
    if reseal:
        document["files"] = {name: file_sha256(path / name) for name in document["files"]}
        fields = {k: (tuple(v) if k in ("input_size", "feature_size", "mean", "std") else v) for k, v in document.items()}
        fields.pop("manifest_sha256", None)
        if fields.get("output_size") is not None:
            fields["output_size"] = tuple(fields["output_size"])
        sealed = Manifest(**fields)
        sealed.seal()
        document = asdict(sealed)
    (path / MANIFEST).write_text(json.dumps(document, indent=2))


@pytest.mark.parametrize("field,value", [("input_size", [32, 32]), ("num_classes", 7), ("channels", 8),
                                         ("feature_size", [8, 8]), ("target_layer", "other")])
def test_an_edited_manifest_fails_its_own_hash(copy, field, value):
    document = _manifest(copy)
    document[field] = value
    _rewrite(copy, document, reseal=False)
    with pytest.raises(BundleError, match="manifest.json was changed after export"):
        load_bundle(copy)


@pytest.mark.parametrize("field,value", [("input_size", [32, 32]), ("num_classes", 7), ("channels", 8),
                                         ("feature_size", [8, 8])])
def test_a_resealed_manifest_that_disagrees_with_the_graphs_names_the_field(copy, field, value):
    document = _manifest(copy)
    document[field] = value
    if field == "num_classes":
        document["class_names"] = [f"c{i}" for i in range(value)]
    _rewrite(copy, document, reseal=True)
    with pytest.raises(BundleError, match=f"manifest field '{field}' says"):
        load_bundle(copy)
    with pytest.raises(BundleError, match=f"'{field}'"):
        fusioncam.Explainer(copy, device="cpu")


def test_class_names_must_match_num_classes(copy):
    document = _manifest(copy)
    document["class_names"] = ["only", "two"]
    _rewrite(copy, document, reseal=True)
    with pytest.raises(BundleError, match="'class_names' has 2 names but 'num_classes' is 5"):
        load_bundle(copy)


@pytest.mark.parametrize("std", [["a", "b", "c"], [0.2, 0.0, 0.2], [0.2, 0.2]])
def test_mean_and_std_must_be_three_positive_numbers(copy, std):
    document = _manifest(copy)
    document["std"] = std
    _rewrite(copy, document, reseal=True)
    with pytest.raises(BundleError, match="'std'.* must be"):
        load_bundle(copy)


def test_swapped_graphs_with_recomputed_hashes(copy):
    explain, scorer = (copy / "explain.onnx").read_bytes(), (copy / "scorer.onnx").read_bytes()
    (copy / "explain.onnx").write_bytes(scorer)
    (copy / "scorer.onnx").write_bytes(explain)
    _rewrite(copy, _manifest(copy), reseal=True)
    with pytest.raises(BundleError, match="explain.onnx has inputs \\['input'\\] and outputs \\['logits'\\].*swapped"):
        load_bundle(copy)


def test_graphs_of_another_model_with_recomputed_hashes(copy, tmp_path):
    """A scorer from a 3-class model dropped into a 5-class bundle, every hash recomputed: num_classes disagrees."""
    other = tiny_onnx(tmp_path / "other", seed=1, classes=3)
    fusioncam.export_onnx(other, tmp_path / "other.fcam", "feat")
    shutil.copy(tmp_path / "other.fcam" / "scorer.onnx", copy / "scorer.onnx")
    if (tmp_path / "other.fcam" / "weights.bin").exists():
        shutil.copy(tmp_path / "other.fcam" / "weights.bin", copy / "weights.bin")
    _rewrite(copy, _manifest(copy), reseal=True)
    with pytest.raises(BundleError, match="manifest field 'num_classes' says 5 but scorer.onnx's logits has shape"):
        load_bundle(copy)


def test_a_graph_that_is_not_onnx_with_recomputed_hashes(copy):
    (copy / "scorer.onnx").write_bytes(b"\x00\xff not a protobuf at all" * 10)
    _rewrite(copy, _manifest(copy), reseal=True)
    with pytest.raises(BundleError, match="scorer.onnx is not a readable ONNX graph"):
        load_bundle(copy)


def test_a_bundle_from_before_manifest_hashing_asks_for_a_re_export(copy):
    document = _manifest(copy)
    del document["manifest_sha256"]
    _rewrite(copy, document, reseal=False)
    with pytest.raises(BundleError, match="predates manifest hashing.*re-export"):
        load_bundle(copy)


def test_an_intact_bundle_passes_every_check(bundle):
    """The checks refuse nothing real: a fresh export's manifest carries its own hash and agrees with its graphs."""
    manifest = load_bundle(bundle).manifest
    assert manifest.manifest_sha256 == manifest.content_sha256()
    assert fusioncam.Explainer(bundle, device="cpu").bundle.manifest == manifest


def test_the_cli_reports_a_tampered_bundle_in_one_line(copy, tmp_path, capsys):
    document = _manifest(copy)
    document["num_classes"] = 1000
    _rewrite(copy, document, reseal=False)
    images = write_images(tmp_path / "in", ["cat.png"])
    out = tmp_path / "out"
    assert main(["explain", str(images[0]), "--model", str(copy), "--out", str(out)]) == 2
    err = one_error_line(capsys.readouterr().err, "explain")
    assert "manifest.json was changed after export" in err and str(copy) in err
    assert not out.exists()


@pytest.mark.parametrize("damage", ["edited manifest", "garbage manifest", "a file instead of a folder"])
def test_a_damaged_cache_entry_is_rebuilt(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("FUSIONCAM_CACHE", str(tmp_path / "cache"))
    model = tiny_onnx(tmp_path / "models")
    entry = onnx_bundle(model, "feat").path
    good = _manifest(entry)
    if damage == "edited manifest":
        _rewrite(entry, {**good, "input_size": [99, 99]}, reseal=False)
    elif damage == "garbage manifest":
        (entry / MANIFEST).write_text("{ not json")
    else:
        shutil.rmtree(entry)
        entry.write_text("not a bundle")
    with pytest.raises(BundleError):
        load_bundle(entry)
    rebuilt = onnx_bundle(model, "feat")
    assert rebuilt.path == entry and _manifest(entry)["input_size"] == good["input_size"]
    assert load_bundle(entry).manifest.manifest_sha256 == good["manifest_sha256"]  # same content, same hash
    assert leftovers(tmp_path / "cache") == []

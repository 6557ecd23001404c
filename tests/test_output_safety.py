"""Nothing a user does loses their data: export and every CLI output folder write only to new paths or over what
fusioncam itself wrote, refuse anything else before any work (naming the path), and leave no partial output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import fusioncam
from fusioncam.atomic import atomic_directory
from fusioncam.bundle import check_bundle_destination, load_bundle
from fusioncam.cli.main import main
from fusioncam.errors import OutputError
from tests.support.safety_helpers import leftovers, one_error_line, snapshot, tiny_bundle, tiny_onnx, write_images


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return tiny_bundle(tmp_path_factory.mktemp("tiny"))


@pytest.fixture()
def model(tmp_path) -> Path:
    return tiny_onnx(tmp_path / "models")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FUSIONCAM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# --- export: a new path or a previous bundle, nothing else -------------------------------------------------------

def _refused_export(args: list[str], capsys) -> str:
    assert main(["export", *args]) == 2
    return one_error_line(capsys.readouterr().err, "export")


def test_export_refuses_a_folder_of_user_files(model, tmp_path, capsys):
    docs = tmp_path / "mydocs"
    docs.mkdir()
    (docs / "thesis.txt").write_text("four years of work")
    before = snapshot(tmp_path)
    err = _refused_export([str(model), "--out", str(docs)], capsys)
    assert str(docs) in err and "not a fusioncam bundle" in err and "thesis.txt" in err and "new path" in err
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["photo.jpg", "tiny.onnx"])
def test_export_refuses_an_existing_file_and_the_source_model(model, tmp_path, capsys, name):
    target = model.parent / name
    if not target.exists():
        write_images(model.parent, [name])
    before = snapshot(tmp_path)
    err = _refused_export([str(model), "--out", str(target)], capsys)
    assert str(target) in err
    assert ("model being exported" in err) if name == "tiny.onnx" else ("existing file" in err)
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []


@pytest.mark.parametrize("where,reason", [(".", "is the current directory"), ("..", "contains the current directory")])
def test_export_refuses_the_current_directory_and_its_parents(model, tmp_path, monkeypatch, capsys, where, reason):
    work = tmp_path / "place" / "work"  # `..` is `place`, which does not hold the model
    work.mkdir(parents=True)
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    before = snapshot(tmp_path)
    err = _refused_export([str(model), "--out", where], capsys)
    assert reason in err and "new path" in err
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []


def test_export_refuses_the_home_directory(model, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(OutputError, match="is your home directory"):
        check_bundle_destination(home)  # empty: only the home rule refuses it


def test_export_refuses_a_symbolic_link(model, tmp_path, capsys):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link.fcam"
    link.symlink_to(real)
    assert "symbolic link" in _refused_export([str(model), "--out", str(link)], capsys)
    assert link.is_symlink()


def test_export_below_a_file_and_a_failed_export_leave_nothing(model, tmp_path, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    err = _refused_export([str(model), "--out", str(blocker / "m.fcam")], capsys)
    assert "not writable" in err and f"{blocker} is a file" in err
    before = snapshot(tmp_path)
    err = _refused_export([str(model), "--out", str(tmp_path / "new" / "nested" / "m.fcam"), "--layer", "fet"], capsys)
    assert "Closest names: feat" in err
    assert not (tmp_path / "new").exists()  # the folders made for it are gone again
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []


def _docs_folder(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("x")
    return docs


def _no_work(*args, **kwargs):
    raise AssertionError("the model was loaded before the destination was checked")


def test_export_onnx_refuses_before_any_work(model, tmp_path, monkeypatch):
    import fusioncam.export.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "load_classifier", _no_work)
    docs = _docs_folder(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(OutputError, match="not a fusioncam bundle"):
        fusioncam.export_onnx(model, docs, "feat")
    with pytest.raises(OutputError, match="existing file"):
        fusioncam.export_onnx(model, docs / "a.txt", "feat")
    with pytest.raises(OutputError, match="model being exported"):
        fusioncam.export_onnx(model, model, "feat")
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []


def test_segmentation_export_refuses_before_any_work(model, tmp_path, monkeypatch):
    import fusioncam.export.segmentation_export as segmentation_export

    monkeypatch.setattr(segmentation_export, "load_onnx", _no_work)
    docs = _docs_folder(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(OutputError, match="not a fusioncam bundle"):
        segmentation_export.export_onnx_segmentation(model, docs)
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []


@pytest.mark.slow  # imports torch (about 4 s on its own)
def test_export_torch_refuses_before_any_work(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    import fusioncam.export.torch_export as torch_export

    monkeypatch.setattr(torch_export, "_torch_to_onnx", _no_work)
    docs = _docs_folder(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(OutputError, match="not a fusioncam bundle"):
        fusioncam.export_torch(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), "0", docs)
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []


def test_a_previous_bundle_is_replaced_whole_and_atomically(model, tmp_path, capsys):
    out = tmp_path / "m.fcam"
    assert main(["export", str(model), "--out", str(out), "--layer", "feat"]) == 0
    first = load_bundle(out).manifest
    other = tiny_onnx(tmp_path / "other", seed=9)
    assert main(["export", str(other), "--out", str(out), "--layer", "feat"]) == 0
    second = load_bundle(out).manifest
    assert second.source_sha256 != first.source_sha256 and second.source == str(other)
    assert leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["m.fcam", "models", "other"]
    # A previous bundle that also holds a file of the user's is refused, naming it.
    (out / "my_notes.txt").write_text("keep me")
    before = snapshot(tmp_path)
    err = _refused_export([str(model), "--out", str(out)], capsys)
    assert "my_notes.txt" in err and "did not write" in err
    assert snapshot(tmp_path) == before


def test_a_file_added_while_exporting_stops_the_swap(bundle, tmp_path):
    """The destination is checked again right before the swap: the previous bundle and the new file survive."""
    out = tmp_path / "b.fcam"
    fusioncam.export_onnx(tiny_onnx(tmp_path / "src"), out, "feat")
    with pytest.raises(OutputError, match="added.txt"):
        with atomic_directory(out, guard=check_bundle_destination) as staging:
            (staging / "explain.onnx").write_bytes(b"new")
            (out / "added.txt").write_text("written during the export")
    assert (out / "added.txt").read_text() == "written during the export"
    load_bundle(out)  # the previous bundle is intact
    assert leftovers(tmp_path) == []


def test_atomic_directory_default_guard_replaces_only_new_or_empty(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    with pytest.raises(OutputError, match="not empty"):
        with atomic_directory(full):
            raise AssertionError("never staged")
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_directory(empty) as staging:
        (staging / "made").write_text("ok")
    assert (empty / "made").read_text() == "ok" and (full / "x").read_text() == "x" and leftovers(tmp_path) == []


# --- explain / evaluate output folders ---------------------------------------------------------------------------

def _explain(inputs, bundle, out, *extra) -> int:
    return main(["explain", *map(str, inputs), "--model", str(bundle), "--out", str(out), "--device", "cpu", *extra])


def test_explain_refuses_a_folder_of_user_files(bundle, tmp_path, capsys):
    images = write_images(tmp_path / "in", ["cat.png"])
    out = tmp_path / "photos"
    write_images(out, ["holiday.jpg"])
    before = snapshot(tmp_path)
    assert _explain(images, bundle, out) == 2
    err = one_error_line(capsys.readouterr().err, "explain")
    assert str(out) in err and "holiday.jpg" in err and "did not write" in err
    assert snapshot(tmp_path) == before


def test_explain_refuses_a_file_it_did_not_write_in_its_own_folder(bundle, tmp_path, capsys):
    cat, dog = write_images(tmp_path / "in", ["cat.png", "dog.png"])
    out = tmp_path / "out"
    assert _explain([cat], bundle, out) == 0
    write_images(out, ["dog_overlay.png"], seed=7)  # the user's own file, where an output of dog.png would go
    (out / "notes.txt").write_text("a note beside the outputs is fine")
    before = snapshot(tmp_path)
    assert _explain([cat, dog], bundle, out) == 2
    err = one_error_line(capsys.readouterr().err, "explain")
    assert "dog_overlay.png already exists and was not written by fusioncam" in err
    assert snapshot(tmp_path) == before
    # A file fusioncam wrote but the user has since edited is theirs now: refused too (its recorded hash differs).
    (out / "dog_overlay.png").unlink()
    write_images(out, ["cat_overlay.png"], seed=8)
    before = snapshot(tmp_path)
    assert _explain([cat, dog], bundle, out) == 2
    err = one_error_line(capsys.readouterr().err, "explain")
    assert "cat_overlay.png was changed since fusioncam wrote it" in err
    assert snapshot(tmp_path) == before


def test_reruns_into_a_previous_output_folder_keep_its_record(bundle, tmp_path, capsys):
    first, second = write_images(tmp_path / "in", ["a.png", "b.png"])
    out = tmp_path / "out"
    assert _explain([first], bundle, out, "--methods", "fusion,gradcam") == 0
    assert _explain([second], bundle, out) == 0
    assert _explain([first, second], bundle, out, "--methods", "fusion,gradcam") == 0  # a's files were recorded
    record = json.loads((out / "results.json").read_text())
    on_disk = {p.name for p in out.iterdir()}
    assert set(record["written_files"]) == on_disk and record["complete"] is True
    assert {"a_gradcam.npy", "b_panel.png", "index.html", "results.json"} <= on_disk


def test_colliding_output_names_are_numbered_and_recorded(bundle, tmp_path, capsys):
    """a.png and a.jpg, and an input named like another's output file (a_gradcam.png): distinct, deterministic names,
    each image's map written under its own name."""
    one = write_images(tmp_path / "x", ["a.png", "a_gradcam.png"], seed=1)
    two = write_images(tmp_path / "y", ["a.jpg"], seed=2)
    inputs = [one[0], two[0], one[1]]
    out = tmp_path / "out"
    assert _explain(inputs, bundle, out, "--methods", "fusion,gradcam") == 0
    record = json.loads((out / "results.json").read_text())
    names = {Path(r["input"]).name: r["name"] for r in record["images"]}
    assert names == {"a.png": "a", "a.jpg": "a_2", "a_gradcam.png": "a_gradcam_2"}
    files = [f for r in record["images"] for f in r["files"].values()]
    assert len(files) == len(set(files)) == 3 * 5
    explainer = fusioncam.Explainer(bundle, device="cpu")
    for r in record["images"]:
        want = explainer.explain_files([r["input"]], methods=("fusion", "gradcam"))
        np.testing.assert_allclose(np.load(out / r["files"]["gradcam_npy"]), want.maps["gradcam"][0], atol=1e-6)
        np.testing.assert_allclose(np.load(out / r["files"]["fusion_npy"]), want.maps["fusion"][0], atol=1e-6)


def test_failed_model_load_leaves_no_output_folder(tmp_path, capsys):
    images = write_images(tmp_path / "in", ["cat.png"])
    for command in (["explain", str(images[0])], ["evaluate", str(images[0])]):
        out = tmp_path / f"{command[0]}-out" / "nested"
        assert main([*command, "--model", str(tmp_path / "missing.onnx"), "--out", str(out)]) == 2
        one_error_line(capsys.readouterr().err, command[0])
        assert not out.parent.exists()


def test_evaluate_refuses_user_files_and_accepts_its_older_reports(bundle, tmp_path, capsys):
    images = write_images(tmp_path / "in", ["cat.png"])
    out = tmp_path / "evaluation"
    out.mkdir()
    (out / "metrics.md").write_text("# My own metrics\n")
    before = snapshot(tmp_path)
    args = ["evaluate", str(images[0]), "--model", str(bundle), "--out", str(out), "--step", "64", "--device", "cpu"]
    assert main(args) == 2
    err = one_error_line(capsys.readouterr().err, "evaluate")
    assert "metrics.md" in err and "did not write" in err
    assert snapshot(tmp_path) == before
    # A report written before results.json recorded outputs is recognised by its own first bytes and replaced.
    (out / "metrics.md").write_text("# Faithfulness metrics\n\nolder report\n")
    assert main(args) == 0
    record = json.loads((out / "results.json").read_text())
    assert record["command"] == "evaluate" and record["complete"] is True
    assert set(record["written_files"]) == {"curves.png", "metrics.csv", "metrics.md", "results.json"}
    assert "n = 1 images" in (out / "metrics.md").read_text()


def test_evaluate_skips_unreadable_files_like_explain(bundle, tmp_path, capsys):
    good = write_images(tmp_path / "in", ["good.png", "also.png"])
    broken = tmp_path / "in" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    out = tmp_path / "evaluation"
    code = main(["evaluate", str(tmp_path / "in"), "--model", str(bundle), "--out", str(out), "--step", "64",
                 "--device", "cpu", "--methods", "gradcam,fusion"])
    captured = capsys.readouterr()
    assert code == 1 and "Traceback" not in captured.err
    assert "skipped" in captured.err and "broken.png" in captured.err
    record = json.loads((out / "results.json").read_text())
    assert [Path(f["input"]).name for f in record["failed"]] == ["broken.png"]
    assert [r["name"] for r in record["images"]] == ["also", "good"]
    # The recorded values are the metric functions' own, on the readable files alone.
    from fusioncam.images import load_batch
    from fusioncam.metrics import average_drop, deletion_auc

    explainer = fusioncam.Explainer(bundle, device="cpu")
    manifest = explainer.bundle.manifest
    batch, _ = load_batch(sorted(good), manifest.input_size, manifest.mean, manifest.std)
    explanation = explainer.explain(batch, methods=("gradcam", "fusion"))
    for method in ("gradcam", "fusion"):
        maps = explanation.maps[method]
        drops = [r["metrics"][method]["average_drop"] for r in record["images"]]
        deletions = [r["metrics"][method]["deletion_auc"] for r in record["images"]]
        assert np.mean(drops) == pytest.approx(average_drop(explainer, batch, maps, explanation.classes), rel=1e-6)
        np.testing.assert_allclose(deletions, deletion_auc(explainer, batch, maps, explanation.classes, step=64),
                                   rtol=1e-6)


def test_records_from_before_written_files_and_foreign_records(bundle, tmp_path, capsys):
    """An older results.json (no written_files) still vouches for the files it lists; a results.json that is not
    fusioncam's vouches for nothing."""
    images = write_images(tmp_path / "in", ["cat.png"])
    out = tmp_path / "out"
    assert _explain(images, bundle, out) == 0
    record = json.loads((out / "results.json").read_text())
    del record["written_files"]
    (out / "results.json").write_text(json.dumps(record))
    assert _explain(images, bundle, out) == 0
    assert set(json.loads((out / "results.json").read_text())["written_files"]) == {p.name for p in out.iterdir()}

    other = tmp_path / "other"
    other.mkdir()
    (other / "results.json").write_text(json.dumps({"accuracy": 0.93}))
    before = snapshot(tmp_path)
    assert _explain(images, bundle, other) == 2
    assert "results.json" in one_error_line(capsys.readouterr().err, "explain")
    assert snapshot(tmp_path) == before

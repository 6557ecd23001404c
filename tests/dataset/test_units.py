"""fusioncam.dataset without a Ray cluster: input listing, the output table's round trip, the output folder's guard,
and the command's one-line answer when Ray is not installed."""

from __future__ import annotations

import json
import sys

import cv2
import numpy as np
import pytest

from fusioncam.cli.main import main
from fusioncam.dataset.output import RUN_JSON, done_sources, prepare_output, read_results, write_part
from fusioncam.dataset.rows import BatchRows, RowLayout, map_column, tensor_maps
from fusioncam.dataset.sources import plan_inputs, read_source_bytes, table_columns
from fusioncam.errors import InputError, OutputError


def _image(path, seed: int = 0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 255, (9, 11, 3), dtype=np.uint8))
    return str(path.resolve())


def test_folders_are_listed_recursively_and_lists_resolve_relative_paths(tmp_path):
    a = _image(tmp_path / "data" / "a.png")
    b = _image(tmp_path / "data" / "deep" / "er" / "b.JPG")
    (tmp_path / "data" / "notes.txt").write_text("not an image")
    assert plan_inputs([str(tmp_path / "data")]).paths == [a, b]
    assert plan_inputs([str(tmp_path / "data" / "**" / "*.JPG")]).paths == [b]
    listing = tmp_path / "data" / "list.txt"
    listing.write_text("# chosen\na.png\n\ndeep/er/b.JPG\na.png\n")
    assert plan_inputs([str(listing)]).paths == [a, b]  # relative to the list, repeats once
    table = tmp_path / "list.csv"
    table.write_text(f"label,path\ncat,data/a.png\ndog,{b}\n")
    assert plan_inputs([str(table)]).paths == [a, b]
    assert plan_inputs([f"file://{tmp_path / 'data'}"]).paths == [f"file://{a}", f"file://{b}"]


@pytest.mark.parametrize("given, message", [("missing-folder", "does not exist"), ("nothing-*.png", "matches no file")])
def test_inputs_that_name_nothing_are_clear_errors(tmp_path, given, message):
    with pytest.raises(InputError, match=message):
        plan_inputs([str(tmp_path / given)])


def test_unreadable_files_give_a_reason_not_an_exception(tmp_path):
    assert read_source_bytes(str(tmp_path / "gone.png")) == (None, f"image file {str(tmp_path / 'gone.png')!r} does not exist")
    assert "directory" in read_source_bytes(str(tmp_path))[1]
    (tmp_path / "x.png").write_bytes(b"123")
    assert read_source_bytes(f"file://{tmp_path / 'x.png'}") == (b"123", None)


def test_table_columns_are_found_by_type_and_name():
    import pyarrow as pa

    schema = pa.schema([("name", pa.string()), ("image", pa.binary()), ("label", pa.int64())])
    found = table_columns(schema)
    assert (found.image, found.image_is_path, found.identity) == ("image", False, "name")
    paths = table_columns(pa.schema([("path", pa.string())]))
    assert (paths.image, paths.image_is_path) == ("path", True)
    with pytest.raises(InputError, match="no image column"):
        table_columns(pa.schema([("label", pa.int64())]))
    with pytest.raises(InputError, match="no column 'pixels'"):
        table_columns(schema, image_column="pixels")


def _rows(layout: RowLayout, maps: np.ndarray):
    block = BatchRows(layout)
    block.add({"source": "b.png", "class_index": 2, "class_name": "two", "probability": 0.5, "b_den": 0.25},
              {"fusion": maps[0]})
    block.add({"source": "a.png", "error": "image file 'a.png' is corrupt"})
    return block.table()


@pytest.mark.parametrize("dtype, tolerance", [("float32", 0.0), ("float16", 2.0 ** -11)])
def test_part_files_round_trip_maps_and_error_rows(tmp_path, dtype, tolerance):
    layout = RowLayout(("fusion",), False, (6, 5), dtype)
    maps = np.random.default_rng(1).random((1, 6, 5), dtype=np.float32)
    out = prepare_output(tmp_path / "out", {"methods": ["fusion"]})
    path = write_part(out, _rows(layout, maps))
    assert path.parent == out / "parts" and not [p for p in path.parent.iterdir() if p.name.startswith(".")]
    table = read_results(out)
    assert table.column("source").to_pylist() == ["a.png", "b.png"]  # sorted by source
    assert table.column("error").to_pylist() == ["image file 'a.png' is corrupt", None]
    got = tensor_maps(table.column(map_column("fusion")))
    assert np.isnan(got[0]).all()
    np.testing.assert_allclose(got[1], maps[0], rtol=0, atol=tolerance)
    assert done_sources(out) == {"a.png", "b.png"}


def test_output_folder_guard(tmp_path):
    settings = {"methods": ["fusion"], "evaluate": False}
    out = prepare_output(tmp_path / "run", settings)
    assert json.loads((out / RUN_JSON).read_text())["methods"] == ["fusion"]
    assert prepare_output(out, settings) == out  # the same settings: a resume
    with pytest.raises(OutputError, match="other settings .*evaluate"):
        prepare_output(out, {**settings, "evaluate": True})
    foreign = tmp_path / "photos"
    _image(foreign / "mine.png")
    with pytest.raises(OutputError, match="did not write .*mine.png"):
        prepare_output(foreign, settings)
    assert [p.name for p in foreign.iterdir()] == ["mine.png"]


def test_without_ray_the_command_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code = main(["explain-dataset", str(tmp_path), "--model", "efficientnet_lite0", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "pip install 'fusioncam[dataset]'" in err[0]
    assert not (tmp_path / "o").exists()


def test_a_bundle_shipped_to_another_machine_is_written_once_and_explains_the_same(tmp_path, monkeypatch):
    import fusioncam
    from fusioncam.dataset.bundle_shipping import bundle_files, local_bundle
    from tests.support.tiny_models import save, tiny_classifier

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "node-tmp"))
    (tmp_path / "node-tmp").mkdir()
    source = tmp_path / "tiny.bundle"
    fusioncam.export_onnx(save(tiny_classifier(size=8), tmp_path / "tiny.onnx"), source, "feat")
    sha = fusioncam.bundle.load_bundle(source).manifest.manifest_sha256
    assert local_bundle(str(source), sha, None) == str(source)  # seen here: used in place
    fetched = []

    def fetch():
        fetched.append(1)
        return bundle_files(source)

    elsewhere = str(tmp_path / "driver-only" / "tiny.bundle")  # the driver's path, absent on this "node"
    copy = local_bundle(elsewhere, sha, fetch)
    assert copy.startswith(str(tmp_path / "node-tmp")) and local_bundle(elsewhere, sha, fetch) == copy
    assert fetched == [1]  # written once per node
    images = np.random.default_rng(3).standard_normal((2, 3, 8, 8)).astype(np.float32)
    want = fusioncam.Explainer(source, device="cpu").explain(images).fusion
    np.testing.assert_array_equal(fusioncam.Explainer(copy, device="cpu").explain(images).fusion, want)

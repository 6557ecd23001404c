"""`fusioncam explain`: bad files are skipped by name, nothing half-written, inputs untouched, clear errors."""

import hashlib
import json
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import fusioncam  # noqa: E402
from fusioncam.cli.main import main  # noqa: E402
from fusioncam.report.pictures import PanelLayout, tile_size  # noqa: E402

SIZE = (64, 64)
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=len(CLASS_NAMES)).eval()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "resnet18.bundle"
    fusioncam.export_torch(_resnet18(), "layer3", out, input_size=SIZE, class_names=CLASS_NAMES)
    return out


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "resnet18.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_resnet18(), (torch.zeros(1, 3, *SIZE),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    return path


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FUSIONCAM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture()
def folder(tmp_path) -> Path:
    """Three readable images of unusual kinds and one corrupt file."""
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "gray.png"), rng.integers(0, 256, (40, 50), dtype=np.uint8))
    cv2.imwrite(str(images / "rgba.png"), rng.integers(0, 256, (48, 48, 4), dtype=np.uint8))
    cv2.imwrite(str(images / "deep16.png"), rng.integers(0, 65536, (70, 60, 3), dtype=np.uint16))
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    (images / "notes.txt").write_text("not an image: folders only list image extensions")
    return images


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _leftovers(out: Path) -> list[str]:
    return [p.name for p in out.rglob("*") if p.name.endswith((".tmp", ".partial", ".old")) or p.name.startswith(".")]


@pytest.mark.slow
def test_folder_with_a_corrupt_file_explains_the_good_ones(folder, bundle, tmp_path, capsys):
    before = _hashes(folder)
    out = tmp_path / "out" / "nested"  # created if missing
    code = main(["explain", str(folder), "--model", str(bundle), "--out", str(out), "--methods", "fusion,gradcam"])
    captured = capsys.readouterr()

    assert code == 1
    assert "broken.png" in captured.err and "corrupt" in captured.err
    assert "\r" not in captured.err  # no progress bar when stderr is not a terminal
    assert _hashes(folder) == before
    assert _leftovers(out) == []

    results = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in results["images"]] == ["deep16", "gray", "rgba"]
    assert [Path(f["input"]).name for f in results["failed"]] == ["broken.png"]
    expected = set()
    for name, hw in (("deep16", (70, 60)), ("gray", (40, 50)), ("rgba", (48, 48))):
        files = {f"{name}_panel.png", f"{name}_overlay.png", f"{name}_gradcam_overlay.png",
                 f"{name}_fusion.npy", f"{name}_gradcam.npy"}
        expected |= files
        assert cv2.imread(str(out / f"{name}_overlay.png")).shape == (*hw, 3)
        assert cv2.imread(str(out / f"{name}_gradcam_overlay.png")).shape == (*hw, 3)
        assert cv2.imread(str(out / f"{name}_panel.png")).shape[:2] == PanelLayout(*tile_size(hw), 4).size
        fusion = np.load(out / f"{name}_fusion.npy")
        assert fusion.dtype == np.float32 and fusion.shape == SIZE
        record = next(r for r in results["images"] if r["name"] == name)
        assert record["fusion_stats"]["mean"] == pytest.approx(float(fusion.mean()), abs=1e-6)
        assert record["class_name"] == CLASS_NAMES[record["class_index"]]
        assert record["class_name"] in captured.out  # the printed table
    assert {p.name for p in out.iterdir()} == expected | {"index.html", "results.json"}
    page = (out / "index.html").read_text()
    assert page.count("<img ") == 3 and 'src="gray_panel.png"' in page and "broken.png" in page
    assert "http" not in page  # no external assets


@pytest.mark.slow
def test_globs_targets_by_name_and_index(folder, bundle, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["explain", str(folder / "g*.png"), str(folder / "rgba.png"), "--model", str(bundle),
                 "--out", str(out), "--target", "cat"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [(r["name"], r["class_index"]) for r in results["images"]] == [("gray", 3), ("rgba", 3)]
    assert main(["explain", str(folder / "gray.png"), "--model", str(bundle), "--out", str(out), "--target", "7"]) == 0
    assert json.loads((out / "results.json").read_text())["images"][0]["class_name"] == "horse"


@pytest.mark.slow
def test_onnx_model_is_exported_into_the_cache_once(folder, onnx_file, tmp_path, cache, capsys):
    args = ["explain", str(folder / "gray.png"), "--model", str(onnx_file), "--out", str(tmp_path / "out")]
    assert main(args) == 0
    assert main(args) == 0
    assert len([p for p in (cache / "bundles").iterdir() if not p.name.startswith(".")]) == 1
    assert capsys.readouterr().err.count("exporting") == 1


def _error(args, capsys) -> str:
    """Run the CLI expecting a usage/model error; return its one-line message (status lines may precede it)."""
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.splitlines()[-1].startswith("fusioncam explain: error:")
    return err.splitlines()[-1]


def test_missing_model_file(folder, tmp_path, capsys):
    err = _error(["explain", str(folder), "--model", str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "o")], capsys)
    assert "model file not found" in err and "missing.onnx" in err


def test_unknown_layer(folder, onnx_file, bundle, tmp_path, capsys):
    err = _error(["explain", str(folder), "--model", str(onnx_file), "--layer", "no_such_tensor",
                  "--out", str(tmp_path / "o")], capsys)
    assert "unknown target layer 'no_such_tensor'" in err
    err = _error(["explain", str(folder), "--model", str(bundle), "--layer", "layer4", "--out", str(tmp_path / "o")], capsys)
    assert "explains layer 'layer3'" in err


def test_unknown_class_name_gets_suggestions(folder, bundle, tmp_path, capsys):
    out = tmp_path / "o"
    err = _error(["explain", str(folder), "--model", str(bundle), "--target", "aeroplane", "--out", str(out)], capsys)
    assert "unknown class name 'aeroplane'" in err and "'airplane'" in err
    assert not out.exists()  # nothing explained or written, no empty folder left behind


def test_output_folder_not_writable(folder, bundle, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    err = _error(["explain", str(folder), "--model", str(bundle), "--out", str(blocker / "out")], capsys)
    assert "not writable" in err and str(blocker) in err
    err = _error(["explain", str(folder), "--model", str(bundle), "--out", str(blocker)], capsys)
    assert "is a file" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod 0o500; the file-parent case covers root")
def test_read_only_output_folder(folder, bundle, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        err = _error(["explain", str(folder), "--model", str(bundle), "--out", str(locked)], capsys)
        assert "not writable" in err
    finally:
        locked.chmod(0o700)


def test_no_images_found(tmp_path, bundle, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    err = _error(["explain", str(empty), str(tmp_path / "*.jpg"), "--model", str(bundle), "--out", str(tmp_path / "o")], capsys)
    assert "no images found" in err


def test_refuses_to_write_over_an_input(tmp_path, bundle, capsys):
    images = tmp_path / "images"
    images.mkdir()
    pixels = np.random.default_rng(3).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    cv2.imwrite(str(images / "x.png"), pixels)
    cv2.imwrite(str(images / "x_overlay.png"), pixels)
    before = _hashes(images)
    err = _error(["explain", str(images), "--model", str(bundle), "--out", str(images)], capsys)
    assert "would overwrite the input image" in err and "x_overlay.png" in err
    assert _hashes(images) == before


def test_bad_methods_is_a_usage_error(folder, bundle, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["explain", str(folder), "--model", str(bundle), "--methods", "fusion,gradcamm"])
    assert exc.value.code == 2
    assert "gradcamm" in capsys.readouterr().err


def test_output_folder_that_refuses_writes(folder, bundle, tmp_path, monkeypatch, capsys):
    """What a read-only folder does for a normal user (root ignores chmod, so the refusal is simulated)."""
    import fusioncam.output_guard

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(fusioncam.output_guard.tempfile, "mkstemp", refuse)
    err = _error(["explain", str(folder), "--model", str(bundle), "--out", str(tmp_path / "ro")], capsys)
    assert "not writable (Permission denied)" in err


def test_progress_bar_only_on_a_terminal():
    import io

    from fusioncam.progress import ProgressBar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    quiet, tty = io.StringIO(), Terminal()
    for stream in (quiet, tty):
        bar = ProgressBar(2, stream)
        bar.show("a.png")
        bar.advance("a.png")
        bar.close()
    assert quiet.getvalue() == ""
    assert "[" + "#" * 12 + "." * 12 + "] 1/2 a.png" in tty.getvalue()


@pytest.mark.slow
def test_fast_mode_flag_writes_the_fast_map_and_records_k(folder, bundle, tmp_path, capsys):
    """--fast 8 gives exactly the map of Explainer(max_channels=8) (not the exact one) and says so in results.json."""
    from fusioncam.images import load_batch

    out = tmp_path / "out"
    assert main(["explain", str(folder / "gray.png"), "--model", str(bundle), "--out", str(out), "--fast", "8",
                 "--device", "cpu"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["max_channels"] == 8 and results["precision"] == "fp32"
    manifest = fusioncam.bundle.load_bundle(bundle).manifest
    images, _ = load_batch([folder / "gray.png"], manifest.input_size, manifest.mean, manifest.std)
    fast = fusioncam.Explainer(bundle, device="cpu", max_channels=8).explain(images)
    exact = fusioncam.Explainer(bundle, device="cpu").explain(images)
    written = np.load(out / "gray_fusion.npy")
    np.testing.assert_allclose(written, fast.fusion[0], atol=1e-6, rtol=0)
    assert np.abs(written - exact.fusion[0]).max() > 1e-3
    assert int(fast.forwards_run[0]) <= 8


@pytest.mark.slow
def test_fast_without_k_uses_the_documented_default(monkeypatch, folder, bundle, tmp_path, capsys):
    from fusioncam.runtime.channel_selection import DEFAULT_FAST_CHANNELS

    out = tmp_path / "out"
    assert main(["explain", str(folder / "gray.png"), "--model", str(bundle), "--out", str(out), "--fast"]) == 0
    assert json.loads((out / "results.json").read_text())["max_channels"] == DEFAULT_FAST_CHANNELS


def test_fp16_precision_needs_a_float16_scorer(folder, bundle, tmp_path, capsys):
    message = _error(["explain", str(folder / "gray.png"), "--model", str(bundle), "--out", str(tmp_path / "o"),
                      "--precision", "fp16"], capsys)
    assert "float16 scorer" in message and "--fp16-scorer" in message

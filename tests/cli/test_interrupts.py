"""Interrupted runs keep their record: on SIGINT or SIGTERM, explain / evaluate / export stop at a clean point,
write what finished (marked incomplete), remove temporaries, print one line and exit 130."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fusioncam
from fusioncam.cli.main import main
from fusioncam.runtime import Explainer
from tests.support.safety_helpers import env_without_gpu, leftovers, tiny_bundle, tiny_onnx, write_images

STOPS = [signal.SIGINT, signal.SIGTERM]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return tiny_bundle(tmp_path_factory.mktemp("tiny"))


def _signal_on_call(monkeypatch, owner, name: str, signum: int, on_call: int) -> list[int]:
    """Make owner.name send `signum` to this process at its `on_call`-th call (1-based), then run as usual."""
    original = getattr(owner, name)
    calls = []

    def signalling(*args, **kwargs):
        calls.append(1)
        if len(calls) == on_call:
            os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, signalling)
    return calls


def _image_files(out: Path) -> set[str]:
    return {p.name for p in out.iterdir() if p.name not in ("index.html", "results.json")}


def _run_until(command: list[str], ready, signum: int, timeout: float = 120) -> subprocess.CompletedProcess:
    """Start `command`, wait until `ready()` is true while it runs, send `signum`, and collect its exit."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_without_gpu())
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert process.poll() is None and time.monotonic() < deadline, "the run ended before the signal was sent"
            time.sleep(0.005)
        process.send_signal(signum)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return subprocess.CompletedProcess(command, process.returncode, out, err)


@pytest.mark.parametrize("signum", STOPS, ids=lambda s: s.name)
def test_explain_stops_between_images_and_keeps_its_record(bundle, tmp_path, monkeypatch, capsys, signum):
    images = write_images(tmp_path / "in", [f"im{i}.png" for i in range(4)])
    out = tmp_path / "out"
    calls = _signal_on_call(monkeypatch, Explainer, "explain", signum, on_call=2)  # while explaining im1
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the tests run as a background job
    code = main(["explain", *map(str, images), "--model", str(bundle), "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 130 and len(calls) == 2  # im1 was dropped at its first scorer batch, im2 never started
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        f"fusioncam explain: interrupted ({signum.name}) after 1 of 4 image(s)")
    record = json.loads((out / "results.json").read_text())
    assert record["complete"] is False and record["interrupted_by"] == signum.name
    assert [r["name"] for r in record["images"]] == ["im0"]
    assert [Path(p).name for p in record["not_explained"]] == ["im1.png", "im2.png", "im3.png"]
    assert _image_files(out) == {"im0_panel.png", "im0_overlay.png", "im0_fusion.npy"}  # nothing of im1
    assert set(record["written_files"]) == {p.name for p in out.iterdir()}
    assert "Incomplete: the run was interrupted" in (out / "index.html").read_text()
    assert leftovers(tmp_path) == []
    # The finished image's map is the one an uninterrupted explainer gives.
    want = Explainer(bundle, device="cpu").explain_files([images[0]]).fusion[0]
    np.testing.assert_allclose(np.load(out / "im0_fusion.npy"), want, atol=1e-6)
    assert signal.getsignal(signal.SIGINT) is handler_before  # handlers restored after the run


def test_a_signal_while_files_are_written_lets_the_image_finish(bundle, tmp_path, monkeypatch, capsys):
    """A signal arriving while an image's files are being written takes effect after them: that image is whole."""
    import fusioncam.report.explain_folder as report

    images = write_images(tmp_path / "in", ["a.png", "b.png", "c.png"])
    out = tmp_path / "out"
    _signal_on_call(monkeypatch, report, "_png_bytes", signal.SIGINT, on_call=1)  # during a's panel
    assert main(["explain", *map(str, images), "--model", str(bundle), "--out", str(out), "--device", "cpu"]) == 130
    record = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in record["images"]] == ["a"] and record["complete"] is False
    assert _image_files(out) == {"a_panel.png", "a_overlay.png", "a_fusion.npy"}


def test_evaluate_stops_between_images_and_reports_the_finished_ones(bundle, tmp_path, monkeypatch, capsys):
    images = write_images(tmp_path / "in", ["a.png", "b.png", "c.png"])
    out = tmp_path / "evaluation"
    _signal_on_call(monkeypatch, Explainer, "explain", signal.SIGINT, on_call=3)  # while explaining c
    code = main(["evaluate", *map(str, images), "--model", str(bundle), "--out", str(out), "--step", "64",
                 "--device", "cpu", "--methods", "gradcam,fusion"])
    captured = capsys.readouterr()
    assert code == 130 and "Traceback" not in captured.err
    assert captured.err.strip().splitlines()[-1].startswith("fusioncam evaluate: interrupted (SIGINT) after 2 of 3")
    record = json.loads((out / "results.json").read_text())
    assert record["complete"] is False and record["interrupted_by"] == "SIGINT"
    assert [r["name"] for r in record["images"]] == ["a", "b"] and record["not_evaluated"] == ["c"]
    markdown = (out / "metrics.md").read_text()
    assert "n = 2 images" in markdown and "Incomplete: the run was interrupted (SIGINT)" in markdown
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "metrics.csv", "metrics.md", "results.json"]
    # The two finished images' values are those of the metric functions on those two images.
    from fusioncam.images import load_batch
    from fusioncam.metrics import insertion_auc

    explainer = Explainer(bundle, device="cpu")
    manifest = explainer.bundle.manifest
    batch, _ = load_batch(images[:2], manifest.input_size, manifest.mean, manifest.std)
    explanation = explainer.explain(batch, methods=("gradcam", "fusion"))
    want = insertion_auc(explainer, batch, explanation.maps["fusion"], explanation.classes, step=64)
    np.testing.assert_allclose([r["metrics"]["fusion"]["insertion_auc"] for r in record["images"]], want, rtol=1e-6)
    assert leftovers(tmp_path) == []


def test_evaluate_interrupted_before_any_image_writes_only_its_record(bundle, tmp_path, monkeypatch, capsys):
    images = write_images(tmp_path / "in", ["a.png"])
    out = tmp_path / "evaluation"
    _signal_on_call(monkeypatch, Explainer, "explain", signal.SIGTERM, on_call=1)
    assert main(["evaluate", str(images[0]), "--model", str(bundle), "--out", str(out), "--step", "64",
                 "--device", "cpu"]) == 130
    record = json.loads((out / "results.json").read_text())
    assert record["complete"] is False and record["images"] == [] and sorted(os.listdir(out)) == ["results.json"]


@pytest.mark.parametrize("signum", STOPS, ids=lambda s: s.name)
def test_export_interrupted_leaves_nothing(tmp_path, monkeypatch, capsys, signum):
    import fusioncam.export.bundle_builder as bundle_builder

    model = tiny_onnx(tmp_path / "models")
    out = tmp_path / "m.fcam"
    _signal_on_call(monkeypatch, bundle_builder, "_check_explain", signum, on_call=1)  # the graphs are staged by now
    assert main(["export", str(model), "--out", str(out), "--layer", "feat"]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip() == f"fusioncam export: interrupted ({signum.name}); stopped before " \
                                                     f"anything was written"
    assert not out.exists() and leftovers(tmp_path) == [] and sorted(os.listdir(tmp_path)) == ["models"]


def test_an_interrupted_export_keeps_the_previous_bundle(tmp_path, monkeypatch, capsys):
    import fusioncam.export.bundle_builder as bundle_builder

    model = tiny_onnx(tmp_path / "models")
    out = tmp_path / "m.fcam"
    fusioncam.export_onnx(model, out, "feat")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _signal_on_call(monkeypatch, bundle_builder, "_check_explain", signal.SIGINT, on_call=1)
    assert main(["export", str(model), "--out", str(out), "--layer", "feat"]) == 130
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and leftovers(tmp_path) == []


@pytest.mark.slow  # a real subprocess (1.5 to 3.5 s on 2 cores)
@pytest.mark.parametrize("signum", STOPS, ids=lambda s: s.name)
def test_a_real_signal_to_a_running_explain(bundle, tmp_path, signum):
    """A real subprocess, signalled once its first image's files exist."""
    count = 80
    write_images(tmp_path / "in", [f"im{i:03d}.png" for i in range(count)])
    out = tmp_path / "out"
    result = _run_until([sys.executable, "-m", "fusioncam", "explain", str(tmp_path / "in"), "--model", str(bundle),
                         "--out", str(out), "--device", "cpu"], (out / "im000_fusion.npy").exists, signum)
    err = result.stderr
    assert result.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        f"fusioncam explain: interrupted ({signum.name}) after")
    record = json.loads((out / "results.json").read_text())
    done = [r["name"] for r in record["images"]]
    assert record["complete"] is False and record["interrupted_by"] == signum.name
    assert 1 <= len(done) < count and done == [f"im{i:03d}" for i in range(len(done))]
    assert len(record["not_explained"]) == count - len(done)
    assert _image_files(out) == {f"{name}_{kind}" for name in done for kind in ("panel.png", "overlay.png", "fusion.npy")}
    assert set(record["written_files"]) == {p.name for p in out.iterdir()} and leftovers(tmp_path) == []


@pytest.mark.slow  # a real subprocess over 150 images, signalled mid-run (about 5 s on 2 cores)
def test_a_real_signal_to_a_running_evaluate(bundle, tmp_path):
    count = 1500
    write_images(tmp_path / "in", [f"im{i:04d}.png" for i in range(count)])
    out = tmp_path / "evaluation"
    log = tmp_path / "progress.log"
    started = []

    def ready() -> bool:  # the model is loaded and the images read: the stderr line before the first image
        if not started and log.exists() and "evaluating" in log.read_text():
            started.append(time.monotonic())
        return bool(started) and time.monotonic() - started[0] > 0.3

    command = [sys.executable, "-c",
               "import sys; from fusioncam.cli.main import main; sys.stderr = open(sys.argv[1], 'w', buffering=1); "
               "sys.exit(main(sys.argv[2:]))", str(log),
               "evaluate", str(tmp_path / "in"), "--model", str(bundle), "--out", str(out), "--step", "64",
               "--device", "cpu", "--methods", "gradcam"]
    result = _run_until(command, ready, signal.SIGTERM)
    err = log.read_text()
    assert result.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("fusioncam evaluate: interrupted (SIGTERM)")
    record = json.loads((out / "results.json").read_text())
    done = [r["name"] for r in record["images"]]
    assert record["complete"] is False and 1 <= len(done) < count and done == [f"im{i:04d}" for i in range(len(done))]
    assert f"n = {len(done)} images" in (out / "metrics.md").read_text()
    assert leftovers(tmp_path) == []


@pytest.mark.slow  # exports a ResNet-18 (about 10 s on 2 cores)
def test_a_real_signal_to_a_running_export(tmp_path):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    import warnings

    torch.manual_seed(0)
    model = tmp_path / "resnet18.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torchvision.models.resnet18(num_classes=10).eval(), (torch.zeros(1, 3, 64, 64),), str(model),
                          dynamo=False, opset_version=17, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    out = tmp_path / "r18.fcam"

    def staging() -> bool:  # the bundle's staging folder exists: the export is mid-way
        return any(p.name.endswith(".partial") for p in tmp_path.iterdir())

    result = _run_until([sys.executable, "-m", "fusioncam", "export", str(model), "--out", str(out)], staging,
                        signal.SIGTERM)
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip() == "fusioncam export: interrupted (SIGTERM); stopped before anything was written"
    assert not out.exists() and leftovers(tmp_path) == [] and sorted(os.listdir(tmp_path)) == ["resnet18.onnx"]

"""explain-dataset on a local Ray (2 CPUs, 127.0.0.1, no dashboard, shut down at the end of the module): every
image's maps equal Explainer.explain_files on the same files, a corrupt file is an error row, a resumed run gives the
uninterrupted run's table, and --evaluate gives what `fusioncam evaluate` gives."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported: a loopback-only local Ray
ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'fusioncam[dataset]'")
pytest.importorskip("pyarrow", reason="pyarrow is not installed: pip install 'fusioncam[dataset]'")

import fusioncam  # noqa: E402
from fusioncam.cli.main import main  # noqa: E402
from fusioncam.dataset import explain_dataset  # noqa: E402
from fusioncam.dataset.output import part_files  # noqa: E402
from fusioncam.dataset.rows import map_column, metric_column, tensor_maps  # noqa: E402
from fusioncam.metrics.evaluation import METRICS, explain_and_evaluate  # noqa: E402
from fusioncam.runtime.explanation import BETA_NAMES  # noqa: E402
from fusioncam.runtime.methods import METHODS  # noqa: E402
from tests.support.tiny_models import tiny_bundle_at  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]  # each run starts Ray actors (about 10-20 s on 2 busy cores)

SIZE = 16
STEP = 40
CLASS_NAMES = ["zero", "one", "two", "three", "four"]
TIMING_COLUMNS = ("decode_seconds", "explain_seconds", "evaluate_seconds", "worker", "batch_images")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return tiny_bundle_at(tmp_path_factory.mktemp("tiny"), size=SIZE, classes=len(CLASS_NAMES), seed=4,
                          class_names=CLASS_NAMES)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, list[Path], Path]:
    """(folder, its readable images in path order, its corrupt file): generated images and real skimage.data photos
    (a JPEG, a grayscale PNG, a 16-bit PNG), some in a subfolder."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    (folder / "real").mkdir()
    rng = np.random.default_rng(7)
    cv2.imwrite(str(folder / "noise.png"), rng.integers(0, 255, (23, 31, 3), dtype=np.uint8))
    cv2.imwrite(str(folder / "gradient.bmp"), np.tile(np.arange(40, dtype=np.uint8)[None, :, None], (30, 1, 3)))
    cv2.imwrite(str(folder / "real" / "chelsea.jpg"), cv2.cvtColor(data.chelsea(), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "real" / "camera.png"), data.camera())
    cv2.imwrite(str(folder / "real" / "coffee16.png"),
                cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    corrupt = folder / "real" / "truncated.jpg"
    corrupt.write_bytes((folder / "real" / "chelsea.jpg").read_bytes()[:200])
    readable = sorted(p for p in folder.rglob("*") if p.is_file() and p != corrupt)
    return folder, readable, corrupt


def _comparable(table) -> dict[str, list]:
    """A result table's columns without the timings and worker names, which differ between runs."""
    return {name: table.column(name).to_pylist() for name in table.column_names if name not in TIMING_COLUMNS}


def test_maps_equal_explain_files_and_the_corrupt_file_is_an_error_row(bundle, photos, tmp_path):
    folder, readable, corrupt = photos
    run = explain_dataset(folder, bundle, out=tmp_path / "out", methods=METHODS, workers=2, batch_images=2,
                          map_dtype="float32")
    want = fusioncam.Explainer(bundle, device="cpu").explain_files(readable, methods=METHODS)
    table = run.table()
    sources = table.column("source").to_pylist()
    assert sources == sorted(str(p) for p in [*readable, corrupt])
    errors = dict(zip(sources, table.column("error").to_pylist()))
    assert "corrupt" in errors.pop(str(corrupt)) and set(errors.values()) == {None}
    rows = [sources.index(str(p)) for p in readable]
    for method in METHODS:
        got = tensor_maps(table.column(map_column(method)))
        np.testing.assert_allclose(got[rows], want.maps[method], rtol=0, atol=1e-5, err_msg=method)
    assert [table.column("class_index")[i].as_py() for i in rows] == want.classes.tolist()
    np.testing.assert_allclose([table.column("probability")[i].as_py() for i in rows], want.probabilities, atol=1e-6)
    for name in BETA_NAMES:
        np.testing.assert_allclose([table.column(name)[i].as_py() for i in rows], want.betas[name], atol=1e-6)
    assert [table.column("degenerate")[i].as_py() for i in rows] == want.degenerate.tolist()
    assert run.summary["images"] == len(readable) + 1 and run.summary["errors"] == 1
    assert run.summary["run"]["images_this_run"] == len(readable) + 1 and run.summary["run"]["images_per_second"] > 0
    assert len(part_files(run.out)) == 3  # 6 images in blocks of 2, one part file each

    # The same images as a Parquet table of encoded bytes named by a column: the same maps.
    import pyarrow as pa
    import pyarrow.parquet as pq

    table_file = tmp_path / "images.parquet"
    pq.write_table(pa.table({"name": [p.name for p in readable], "image": [p.read_bytes() for p in readable]}),
                   table_file)
    from_table = explain_dataset(table_file, bundle, out=tmp_path / "from-table", methods=("fusion",),
                                 batch_images=3, map_dtype="float32").table()
    names = from_table.column("source").to_pylist()
    order = [names.index(p.name) for p in readable]
    np.testing.assert_allclose(tensor_maps(from_table.column(map_column("fusion")))[order], want.maps["fusion"],
                               rtol=0, atol=1e-5)


def test_a_resumed_run_gives_the_uninterrupted_table(bundle, photos, tmp_path):
    folder, readable, corrupt = photos
    settings = dict(methods=("gradcam", "fusion"), workers=1, batch_images=2)
    whole = explain_dataset(folder, bundle, out=tmp_path / "whole", **settings)
    interrupted = tmp_path / "interrupted"
    explain_dataset(folder, bundle, out=interrupted, **settings)
    parts = part_files(interrupted)
    for path in parts[1:]:  # as if the run had stopped after its first block
        path.unlink()
    (interrupted / "parts" / ".part-0123.parquet.abc.tmp").write_bytes(b"PAR1 half a file")  # a write cut short
    kept = len(__import__("pyarrow.parquet", fromlist=["x"]).read_table(parts[0]))
    resumed = explain_dataset(folder, bundle, out=interrupted, **settings)
    assert resumed.summary["run"]["skipped_as_done"] == kept
    assert resumed.summary["run"]["images_this_run"] == len(readable) + 1 - kept
    assert _comparable(resumed.table()) == _comparable(whole.table())
    np.testing.assert_array_equal(tensor_maps(resumed.table().column("map_fusion")),
                                  tensor_maps(whole.table().column("map_fusion")))
    # float16 storage: the stored maps are explain_files' maps to float16 precision
    want = fusioncam.Explainer(bundle, device="cpu").explain_files(readable, methods=("fusion",)).maps["fusion"]
    sources = whole.table().column("source").to_pylist()
    got = tensor_maps(whole.table().column("map_fusion"))[[sources.index(str(p)) for p in readable]]
    np.testing.assert_allclose(got, want, rtol=0, atol=2.0 ** -11)
    again = explain_dataset(folder, bundle, out=interrupted, **settings)  # nothing left: nothing runs
    assert again.summary["run"]["images_this_run"] == 0 and again.summary["images"] == len(readable) + 1


def test_a_run_stopped_with_ctrl_c_resumes_to_the_same_table(bundle, tmp_path):
    """The command in its own process (its own local Ray) is interrupted after its first part file; the rerun
    explains only the rest, and the table equals an uninterrupted run's. The driver is paused (SIGSTOP) as soon as
    the first part file appears, so it submits no more blocks before the interrupt: the stop lands before the last of
    the 12 one-image blocks however fast the machine is (unpaused, an idle machine wrote every block of 6 first)."""
    rng = np.random.default_rng(5)
    folder = tmp_path / "many"
    folder.mkdir()
    readable = [folder / f"p{i:02d}.png" for i in range(12)]
    for path in readable:
        cv2.imwrite(str(path), rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    out = tmp_path / "stopped"
    command = [sys.executable, "-m", "fusioncam", "explain-dataset", str(folder), "--model", str(bundle), "--out",
               str(out), "--batch-images", "1"]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not (out / "parts").is_dir() or not part_files(out):
            assert child.poll() is None and time.monotonic() < deadline, "the command ended before its first block"
            time.sleep(0.2)
        child.send_signal(signal.SIGSTOP)  # the blocks already handed to the worker (at most 4) still finish
        child.send_signal(signal.SIGINT)
        child.send_signal(signal.SIGCONT)
        assert child.wait(timeout=120) == 130  # stopped, not finished
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
    first = len(part_files(out))
    assert 1 <= first < len(readable)
    resumed = explain_dataset(folder, bundle, out=out, batch_images=1)
    assert resumed.summary["run"]["skipped_as_done"] == first
    whole = explain_dataset(folder, bundle, out=tmp_path / "whole", batch_images=1)
    assert _comparable(resumed.table()) == _comparable(whole.table())
    np.testing.assert_array_equal(tensor_maps(resumed.table().column("map_fusion")),
                                  tensor_maps(whole.table().column("map_fusion")))


def _our_worker_pids() -> list[int]:
    """Ray worker processes of this test's own Ray (children of the raylet this process started), by /proc."""
    def children(pid: int) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
        return found

    def name(pid: int) -> str:
        try:
            return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return ""

    raylets = [pid for pid in children(os.getpid()) if "raylet" in name(pid)]
    return [pid for raylet in raylets for pid in children(raylet) if "ExplainWorker" in name(pid)]


def test_a_worker_that_dies_is_replaced_and_nothing_is_lost(bundle, photos, tmp_path):
    """SIGKILL the explaining actor after the first block: Ray restarts it and retries its block; every image
    still gets its row, equal to a single process's."""
    import threading

    folder, readable, corrupt = photos
    out = tmp_path / "killed"
    killed = []

    def kill_once() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            pids = _our_worker_pids() if (out / "parts").is_dir() and part_files(out) else []
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.1)

    killer = threading.Thread(target=kill_once, daemon=True)
    killer.start()
    run = explain_dataset(folder, bundle, out=out, batch_images=1, map_dtype="float32")
    killer.join(timeout=5)
    assert killed, "no worker was killed: the run finished before the first block was written"
    workers = {int(w.rsplit(":", 1)[1]) for w in run.table().column("worker").to_pylist()}
    assert workers - {killed[0]}, "no replacement worker explained the blocks after the kill"
    want = fusioncam.Explainer(bundle, device="cpu").explain_files(readable, methods=("fusion",))
    table = run.table()
    sources = table.column("source").to_pylist()
    assert sources == sorted(str(p) for p in [*readable, corrupt])
    rows = [sources.index(str(p)) for p in readable]
    np.testing.assert_allclose(tensor_maps(table.column("map_fusion"))[rows], want.maps["fusion"], rtol=0, atol=1e-5)


def test_evaluate_equals_fusioncam_evaluate(bundle, photos, tmp_path, capsys):
    _, readable, _ = photos
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in readable:
        shutil.copy(path, flat / path.name)
    methods = ("gradcam", "scorecam", "fusion")
    code = main(["explain-dataset", str(flat), "--model", str(bundle), "--out", str(tmp_path / "dataset"),
                 "--methods", ",".join(methods), "--evaluate", "--step", str(STEP), "--batch-images", "2"])
    assert code == 0
    assert "| Fusion-CAM |" in capsys.readouterr().out
    code = main(["evaluate", str(flat), "--model", str(bundle), "--out", str(tmp_path / "evaluate"),
                 "--methods", ",".join(methods), "--step", str(STEP), "--device", "cpu"])
    assert code == 0
    ours = list(csv.DictReader(open(tmp_path / "dataset" / "metrics.csv")))
    theirs = list(csv.DictReader(open(tmp_path / "evaluate" / "metrics.csv")))
    assert [(r["method"], r["metric"], r["n"]) for r in ours] == [(r["method"], r["metric"], r["n"]) for r in theirs]
    for a, b in zip(ours, theirs):
        for key in ("mean", "ci95_low", "ci95_high", "ci95_half_width"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-6, abs=1e-9), (a["method"], a["metric"], key)
    # and per image, against the metric functions themselves
    images, _ = fusioncam.images.load_batch(sorted(flat.iterdir()), (SIZE, SIZE))
    want = explain_and_evaluate(fusioncam.Explainer(bundle, device="cpu"), images, methods, step=STEP)
    from fusioncam.dataset.output import read_results

    table = read_results(tmp_path / "dataset")
    for method in methods:
        for metric in METRICS:
            np.testing.assert_allclose(table.column(metric_column(method, metric)).to_numpy(),
                                       want.scores[method].per_image[metric], rtol=1e-6, atol=1e-9)


@pytest.mark.gpu
def test_gpu_workers_equal_a_single_process_on_the_gpu(bundle, photos, tmp_path):
    from fusioncam.runtime.device_select import cuda_unavailable_reason

    reason = cuda_unavailable_reason()
    if reason is not None:
        pytest.skip(f"needs a CUDA GPU: {reason}")
    if ray.cluster_resources().get("GPU", 0) < 1:
        pytest.skip("the local Ray sees no GPU")
    folder, readable, _ = photos
    methods = ("gradcam", "scorecam", "fusion")
    run = explain_dataset(folder, bundle, out=tmp_path / "gpu", methods=methods, gpus_per_worker=1, batch_images=3,
                          map_dtype="float32")
    want = fusioncam.Explainer(bundle, device="cuda").explain_files(readable, methods=methods)
    table = run.table()
    sources = table.column("source").to_pylist()
    rows = [sources.index(str(p)) for p in readable]
    for method in methods:
        np.testing.assert_allclose(tensor_maps(table.column(map_column(method)))[rows], want.maps[method], rtol=0,
                                   atol=1e-5, err_msg=method)

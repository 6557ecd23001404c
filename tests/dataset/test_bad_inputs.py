"""explain-dataset on bad inputs: a truncated Parquet table, a CSV list that cannot be parsed or has no path column,
an output folder that is (or lies inside, or holds) an input, a memory limit Ray cannot start under, and two runs
into one folder each printing its own summary. Each answer is one line naming the file or folder (exit 2), given
before Ray starts work."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed: pip install 'fusioncam[dataset]'")
import pyarrow as pa  # noqa: E402

from fusioncam.cli.main import main  # noqa: E402
from fusioncam.dataset.ray_support import (GIB, RAY_PROCESS_ADDRESS_SPACE, RayStartError,  # noqa: E402
                                           local_object_store_bytes)
from fusioncam.dataset.sources import plan_inputs  # noqa: E402
from fusioncam.errors import InputError, OutputError  # noqa: E402
from tests.support.tiny_models import tiny_bundle_at  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[2]


def _image(path: Path, seed: int = 0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 255, (9, 11, 3), dtype=np.uint8))
    return str(path.resolve())


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return tiny_bundle_at(tmp_path_factory.mktemp("tiny"), size=16, classes=5, seed=4)


def _truncated_table(path: Path) -> Path:
    """A real Parquet table of image bytes, cut in the middle (as a copy that stopped early leaves it)."""
    whole = path.with_name("whole-" + path.name)
    pq.write_table(pa.table({"name": ["a"], "image": [cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()]}),
                   whole)
    data = whole.read_bytes()
    whole.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    return path


def test_a_truncated_parquet_table_is_one_line_naming_it_before_ray_starts(bundle, tmp_path, capsys):
    table = _truncated_table(tmp_path / "images.parquet")
    with pytest.raises(InputError, match=r"images\.parquet' is not a readable Parquet file \(Parquet magic bytes"):
        plan_inputs([str(table)])
    running_before = _ray_running()
    code = main(["explain-dataset", str(table), "--model", str(bundle), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("fusioncam explain-dataset: error: input table ")
    assert str(table) in err and "ArrowInvalid" not in err and "Traceback" not in err
    assert _ray_running() == running_before  # refused before Ray was started
    assert not (tmp_path / "out").exists()


def test_a_truncated_part_of_a_table_folder_is_named(tmp_path):
    folder = tmp_path / "shards.parquet"
    folder.mkdir()
    pq.write_table(pa.table({"path": [_image(tmp_path / "a.png")]}), folder / "part-0.parquet")
    _truncated_table(folder / "part-1.parquet")
    with pytest.raises(InputError, match=r"part-1\.parquet' is not a readable Parquet file"):
        plan_inputs([str(folder)])
    (folder / "part-1.parquet").rename(folder / ".part-1.parquet.tmp")  # hidden, as a writer's temporary file: skipped
    (folder / "README.txt").write_text("not a table; Ray's read_parquet reads *.parquet files only\n")
    assert plan_inputs([str(folder)]).tables == [str(folder)]
    empty = tmp_path / "empty.parquet"
    empty.mkdir()
    with pytest.raises(InputError, match=r"empty\.parquet' holds no Parquet file"):
        plan_inputs([str(empty)])


@pytest.mark.parametrize("content, message", [
    (b"path\n\xff\xfe\x00binary", r"is not UTF-8 text \(byte 5\)"),
    (b'path\n"a.png,b\n', r"cannot be parsed \(line 2: unexpected end of data\)"),
    (b'label,path\ncat,"a.png"x\n', r"cannot be parsed \(line 2: ',' expected after '\"'\)"),
])
def test_a_csv_list_that_cannot_be_parsed_is_one_line_naming_it(tmp_path, capsys, content, message):
    listing = tmp_path / "list.csv"
    listing.write_bytes(content)
    with pytest.raises(InputError, match=message):
        plan_inputs([str(listing)])
    assert main(["explain-dataset", str(listing), "--model", "missing.bundle", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(listing) in err and "Traceback" not in err


def test_a_csv_list_without_a_path_column_names_the_required_column_and_its_columns(tmp_path):
    _image(tmp_path / "a.png")
    listing = tmp_path / "labels.csv"
    listing.write_text("label,picture\ncat,a.png\n")
    with pytest.raises(InputError, match=r"needs a column named 'path' \(or one of image_path, file, filename, uri, "
                                         r"image\) holding the image paths; its columns: 'label', 'picture'$"):
        plan_inputs([str(listing)])
    listing.write_text("a.png\n")  # no header: the first line is a path
    with pytest.raises(InputError, match=r"its columns: 'a.png' \(its first line looks like an image path: add a "
                                         r"header line `path`\)"):
        plan_inputs([str(listing)])
    listing.write_text("label,Path\ncat,a.png\ndog\n")
    with pytest.raises(InputError, match=r"line 3 has no 'Path' field"):
        plan_inputs([str(listing)])
    listing.write_text("label,Path\ncat,a.png\n\n")  # the header is matched without regard to case
    assert plan_inputs([str(listing)]).paths == [str((tmp_path / "a.png").resolve())]


def test_an_output_folder_that_is_the_input_folder_is_refused(bundle, tmp_path, capsys):
    six = tmp_path / "six"
    for index in range(8):
        _image(six / f"{index}.png", index)
    code = main(["explain-dataset", str(six), "--model", str(bundle), "--out", str(six)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"the output folder {str(six)!r} is the input folder {str(six)!r}" in err and "no images found" not in err
    assert sorted(p.name for p in six.iterdir()) == [f"{i}.png" for i in range(8)]  # nothing written there


def test_an_output_folder_inside_or_around_an_input_is_refused(tmp_path):
    photo = _image(tmp_path / "photos" / "a.png")
    with pytest.raises(OutputError, match="lies inside the input folder"):
        plan_inputs([str(tmp_path / "photos")], output=tmp_path / "photos" / "explained")
    with pytest.raises(OutputError, match="lies inside the input folder"):  # through a link to the folder
        (tmp_path / "link").symlink_to(tmp_path / "photos")
        plan_inputs([str(tmp_path / "link")], output=tmp_path / "photos" / "explained")
    with pytest.raises(OutputError, match=r"the input '.*photos' lies inside the output folder"):
        plan_inputs([str(tmp_path / "photos")], output=tmp_path)
    with pytest.raises(OutputError, match=r"the input '.*a.png' lies inside the output folder"):
        plan_inputs([photo], output=tmp_path / "photos")
    assert plan_inputs([str(tmp_path / "photos")], output=tmp_path / "photos-explained").paths == [photo]


def test_a_globs_matches_under_the_output_folder_are_left_out(tmp_path):
    photo = _image(tmp_path / "photos" / "a.png")
    _image(tmp_path / "photos" / "explained" / "curves.png")
    assert plan_inputs([str(tmp_path / "photos" / "**" / "*.png")], output=tmp_path / "photos" / "explained").paths \
        == [photo]


def test_the_object_store_is_sized_to_the_address_space_limit():
    assert local_object_store_bytes(None) is None  # Ray's default without a limit
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert local_object_store_bytes(5_000_000 * 1024) == min(5_000_000 * 1024 - RAY_PROCESS_ADDRESS_SPACE,
                                                             int(0.3 * memory))
    assert local_object_store_bytes(1 << 50) == int(0.3 * memory)
    with pytest.raises(RayStartError, match=r"under this address-space limit of 1\.9 GiB \(ulimit -v 2000000\)"):
        local_object_store_bytes(2_000_000 * 1024)


def _run_limited(args: list[str], kib: int, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """`fusioncam ARGS` in a shell that set `ulimit -v KIB` first (as a user does)."""
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    command = f"ulimit -v {int(kib)} && exec {shlex.quote(sys.executable)} -m fusioncam {shlex.join(args)}"
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # a fresh interpreter under the limit: 3 s idle, 12-17 s on the loaded 2-core machine
def test_a_memory_limit_ray_cannot_start_under_is_one_line_not_a_native_backtrace(bundle, tmp_path):
    """Under `ulimit -v 2000000` (1.9 GiB) Ray's own start aborted the driver ("terminate called after throwing an
    instance of 'std::system_error'", exit 134) or timed out; now the limit is read before Ray starts."""
    _image(tmp_path / "photos" / "a.png")
    done = _run_limited(["explain-dataset", "photos", "--model", str(bundle), "--out", "out"], 2_000_000, tmp_path,
                        timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("fusioncam explain-dataset: error: Ray cannot start under this address-space limit "
                                  "of 1.9 GiB (ulimit -v 2000000)")
    for native in ("terminate called", "StackTrace", "Traceback", "SIGABRT", "Aborted"):
        assert native not in done.stderr


def test_a_ray_init_failure_is_one_fusioncam_line(monkeypatch):
    """Simulated: ray.init raising what Ray 2.60 raised here when its node did not come up in time (seen under
    `ulimit -v 2000000` without the limit check)."""
    from fusioncam.dataset import ray_support

    ray = ray_support.import_ray(local=True)
    if ray.is_initialized():
        pytest.fail("a Ray from an earlier test is still running in this process")
    monkeypatch.setattr(ray_support, "address_space_limit", lambda: None)

    def failing_init(**kwargs):
        raise Exception("The current node timed out during startup. This could happen because some of the raylet "
                        "failed to startup or the GCS has become overloaded.")

    monkeypatch.setattr(ray, "init", failing_init)
    with pytest.raises(RayStartError, match=r"^Ray could not start a local instance \(The current node timed out "
                                            r"during startup\. This could .*\); its logs are in /tmp/ray"):
        ray_support.connect(None)


@pytest.mark.slow
def test_a_run_under_a_memory_limit_finishes_with_a_smaller_object_store(bundle, tmp_path):
    """Under `ulimit -v 5000000` Ray's default object store (30% of the memory) made every worker die on `mmap
    failed` and the run hang; sized to the limit, the run finishes."""
    for index in range(3):
        _image(tmp_path / "photos" / f"{index}.png", index)
    done = _run_limited(["explain-dataset", "photos", "--model", str(bundle), "--out", "out"], 5_000_000, tmp_path,
                        timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "explained 3 of 3 image(s), 0 error row(s)" in done.stderr


@pytest.mark.slow
def test_each_run_prints_its_own_summary_when_another_run_rewrites_the_folder(bundle, tmp_path, capsys, monkeypatch):
    """Two runs into one OUT: the summary.md on disk may be the other run's by the time a run prints; each prints the
    summary it wrote itself. The other run's rewrite is made right after this run's own write."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from fusioncam.dataset import pipeline

    for index in range(2):
        _image(tmp_path / "photos" / f"{index}.png", index)
    own_write = pipeline.write_summary
    other = "This run: 0 images in 99.0 s, 0.000 images/s (2 skipped as already done).\n"

    def then_another_run_writes(out, *args):
        written = own_write(out, *args)
        (Path(out) / "summary.md").write_text(other)
        return written

    monkeypatch.setattr(pipeline, "write_summary", then_another_run_writes)
    code = main(["explain-dataset", str(tmp_path / "photos"), "--model", str(bundle), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0
    assert "This run: 2 images in " in out and "99.0 s" not in out

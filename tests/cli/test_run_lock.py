"""One run at a time per output folder: `explain`, `demo`, `evaluate` and `explain-dataset` lock it for the whole run,
a second run is refused with the first one's pid (exit 2), and results.json never loses a run. Every test uses a
second real process: the lock is an fcntl.flock, which dies with its process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fusioncam.cli.main import main
from fusioncam.errors import OutputError
from fusioncam.run_lock import LOCK_FILE, run_lock
from tests.support.safety_helpers import env_without_gpu, one_error_line, tiny_bundle, write_images

HOLD = ("import sys\n"
        "from fusioncam.run_lock import run_lock\n"
        "with run_lock(sys.argv[1]):\n"
        "    print('locked', flush=True)\n"
        "    sys.stdin.readline()\n")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return tiny_bundle(tmp_path_factory.mktemp("lock"))


class Holder:
    """A separate process holding the lock on a folder until released (or killed)."""

    def __init__(self, folder: Path) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "locked"

    def release(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write("\n")
            self.process.stdin.flush()
        self.process.wait(timeout=20)


@pytest.fixture
def holder(tmp_path):
    held = []

    def hold(folder: Path) -> Holder:
        held.append(Holder(folder))
        return held[-1]

    yield hold
    for one in held:
        if one.process.poll() is None:
            one.process.kill()
            one.process.wait()


def test_explain_into_a_folder_in_use_is_refused_with_the_other_pid(bundle, tmp_path, holder, capsys):
    images = write_images(tmp_path / "in", ["a.png"])
    out = tmp_path / "out"
    other = holder(out)
    command = ["explain", str(images[0]), "--model", str(bundle), "--out", str(out), "--device", "cpu",
               "--methods", "gradcam"]
    assert main(command) == 2
    line = one_error_line(capsys.readouterr().err, "explain")
    assert line.endswith(f"output folder {out} is in use by another fusioncam run, pid {other.process.pid}; wait "
                         f"for it to finish or choose another output folder")
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing written beside the other run's lock
    other.release()
    assert not out.exists()  # the holder created it empty and removed it again
    assert main(command) == 0
    assert LOCK_FILE not in {p.name for p in out.iterdir()}


@pytest.mark.parametrize("command", [
    ["evaluate", "--model", "{bundle}", "--out", "{out}", "--device", "cpu"],
    ["demo", "--out", "{out}", "--device", "cpu"],
    ["explain-dataset", "{images}", "--model", "{bundle}", "--out", "{out}"],
], ids=lambda command: command[0])
def test_every_run_command_refuses_a_folder_in_use(bundle, tmp_path, holder, capsys, command):
    if command[0] == "explain-dataset":
        pytest.importorskip("ray", reason="explain-dataset needs Ray")
    images = write_images(tmp_path / "in", ["a.png"])[0].parent
    out = tmp_path / "out"
    other = holder(out)
    filled = [part.format(bundle=bundle, out=out, images=images) for part in command]
    assert main(filled) == 2
    line = one_error_line(capsys.readouterr().err, command[0])
    assert f"{out} is in use by another fusioncam run, pid {other.process.pid}" in line
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]


def test_a_killed_run_never_leaves_the_folder_locked(bundle, tmp_path, holder):
    images = write_images(tmp_path / "in", ["a.png"])
    out = tmp_path / "out"
    other = holder(out)
    other.process.send_signal(signal.SIGKILL)
    other.process.wait(timeout=20)
    assert (out / LOCK_FILE).is_file()  # left behind by the killed process, no longer locked
    assert main(["explain", str(images[0]), "--model", str(bundle), "--out", str(out), "--device", "cpu",
                 "--methods", "gradcam"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_gradcam.npy", "a_gradcam_overlay.png", "a_panel.png",
                                                      "index.html", "results.json"]


@pytest.mark.slow  # two CLI processes, the first explaining 12 images with five methods: about 9 s on 2 cores
def test_two_concurrent_explain_runs_one_refused_and_results_json_keeps_the_other(bundle, tmp_path):
    first_images = write_images(tmp_path / "first", [f"f{i}.png" for i in range(12)])
    second_images = write_images(tmp_path / "second", ["s0.png", "s1.png"], seed=1)
    out = tmp_path / "out"

    def explain(images):
        return [sys.executable, "-m", "fusioncam", "explain", *map(str, images), "--model", str(bundle),
                "--out", str(out), "--device", "cpu", "--methods", "gradcam,scorecam,fusion,groupcam,unioncam"]

    first = subprocess.Popen(explain(first_images), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env_without_gpu())
    try:
        deadline = time.monotonic() + 120
        while not (out / LOCK_FILE).exists():  # the first run holds the folder
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read() if first.poll() else ""
            time.sleep(0.01)
        # the first run is paused while it holds the folder, so the second starts while the lock is held however
        # fast the machine explains the first run's images
        first.send_signal(signal.SIGSTOP)
        try:
            second = subprocess.run(explain(second_images), capture_output=True, text=True, timeout=120,
                                    env=env_without_gpu())
        finally:
            first.send_signal(signal.SIGCONT)
        first_out, first_err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, first_err
    assert second.returncode == 2, (second.returncode, second.stderr)
    assert f"is in use by another fusioncam run, pid {first.pid}" in one_error_line(second.stderr, "explain")
    record = json.loads((out / "results.json").read_text())
    assert [image["name"] for image in record["images"]] == [f"f{i}" for i in range(12)]
    # run again now: the folder is the first run's, recorded, so the second run may write into it
    again = subprocess.run(explain(second_images), capture_output=True, text=True, timeout=120, env=env_without_gpu())
    assert again.returncode == 0, again.stderr
    record = json.loads((out / "results.json").read_text())
    assert [image["name"] for image in record["images"]] == ["s0", "s1"]
    assert {"f0_panel.png", "s0_panel.png"} <= set(record["written_files"]) and not (out / LOCK_FILE).exists()


def test_the_lock_is_reentrant_in_one_process_and_refuses_a_file(tmp_path):
    out = tmp_path / "nested" / "out"
    with run_lock(out):
        with run_lock(out):
            assert (out / LOCK_FILE).is_file()
        assert (out / LOCK_FILE).is_file()  # still held by the outer block
    assert not (tmp_path / "nested").exists()  # both folders it created, empty again, are gone
    (tmp_path / "file").write_text("x")
    from fusioncam.errors import OutputError

    with pytest.raises(OutputError, match="is a file, not a folder"):
        with run_lock(tmp_path / "file"):
            pass
    assert (tmp_path / "file").read_text() == "x"


def test_a_symbolic_link_named_like_the_lock_is_never_followed(tmp_path):
    from fusioncam.errors import OutputError

    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_FILE).symlink_to(precious)
    with pytest.raises(OutputError, match=rf"cannot lock output folder {out}"):
        with run_lock(out):
            pass
    assert precious.read_text() == "keep me" and (out / LOCK_FILE).is_symlink()


def test_a_file_system_without_locks_runs_with_a_warning(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="fusioncam"):
        with run_lock(out):
            (out / "made.txt").write_text("x")
    assert f"output folder {out} cannot be locked (No locks available)" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == ["made.txt"]  # the lock file is removed as usual


def test_a_user_file_named_like_the_lock_is_neither_overwritten_nor_removed(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_FILE).write_text("my notes, not a lock\n")
    with pytest.raises(OutputError, match="fusioncam did not write"):
        with run_lock(out):
            pass
    assert (out / LOCK_FILE).read_text() == "my notes, not a lock\n"


def test_a_lock_record_left_by_a_killed_run_is_taken_over(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_FILE).write_text("4242\n")
    with run_lock(out):
        assert (out / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    assert not (out / LOCK_FILE).exists()

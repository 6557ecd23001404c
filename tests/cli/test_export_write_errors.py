"""Export onto a full disk, over a quota, onto a read-only file system or without permission: one line naming the
bundle and the reason, exit 2, the staging folder removed, nothing at the destination (a full disk used to end in
`OSError: [Errno 28]` from the weights file with a traceback and exit 1)."""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys

import pytest

from fusioncam.cli.main import main
from fusioncam.export import weight_stash
from tests.support.safety_helpers import env_without_gpu, leftovers, one_error_line, tiny_bundle, tiny_onnx

FAILURES = [(errno.ENOSPC, "No space left on device", "free some space"),
            (errno.EDQUOT, "Disk quota exceeded", "disk quota exceeded"),
            (errno.EROFS, "Read-only file system", "choose a writable location"),
            (errno.EACCES, "Permission denied", "choose a folder you may write to")]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_onnx(tmp_path_factory.mktemp("model"))


@pytest.mark.parametrize("code, reason, hint", FAILURES, ids=lambda v: errno.errorcode.get(v, "") if isinstance(v, int) else "")
def test_an_oserror_writing_the_weights_is_one_line_and_exit_2(model, tmp_path, monkeypatch, capsys, code, reason, hint):
    def failing_store(self, graph):
        raise OSError(code, reason, str(self.path))

    monkeypatch.setattr(weight_stash.WeightsFile, "store", failing_store)
    out = tmp_path / "exports" / "m.bundle"
    assert main(["export", str(model), "--layer", "feat", "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err, "export")
    assert f"cannot write {out}: {reason} (" in line and "weights.bin" in line and hint in line
    assert not out.exists() and not (tmp_path / "exports").exists()  # the parent it made is gone too
    assert leftovers(tmp_path) == []


def test_a_failing_swap_keeps_the_previous_bundle(model, tmp_path, monkeypatch, capsys):
    out = tiny_bundle(tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_replace = os.replace

    def full_disk_replace(source, destination):
        if str(source).endswith(".partial"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(source, destination)

    monkeypatch.setattr(os, "replace", full_disk_replace)
    assert main(["export", str(model), "--layer", "feat", "--out", str(out)]) == 2
    assert one_error_line(capsys.readouterr().err, "export").endswith(
        f"cannot write {out}: No space left on device; nothing was written there: free some space and run again")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and leftovers(tmp_path) == []


def _small_file_limit() -> None:
    """In the child: files may grow to 1 KiB only (writes past it fail with EFBIG, a real OS failure)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))


def test_a_real_write_failure_in_a_child_process(model, tmp_path):
    out = tmp_path / "m.bundle"
    done = subprocess.run([sys.executable, "-m", "fusioncam", "export", str(model), "--layer", "feat", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=env_without_gpu(),
                          preexec_fn=_small_file_limit)
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr, "export")
    assert f"cannot write {out}: File too large" in line
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused_before_any_work(model, tmp_path, capsys):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        assert main(["export", str(model), "--layer", "feat", "--out", str(folder / "m.bundle")]) == 2
        assert "is not writable (Permission denied)" in one_error_line(capsys.readouterr().err, "export")
    finally:
        folder.chmod(0o755)


def test_an_export_inside_an_existing_bundle_is_refused_up_front(model, tmp_path, capsys):
    outer = tiny_bundle(tmp_path)
    before = sorted(p.name for p in outer.iterdir())
    assert main(["export", str(model), "--layer", "feat", "--out", str(outer / "inner" / "deeper")]) == 2
    line = one_error_line(capsys.readouterr().err, "export")
    assert f"lies inside the bundle {outer}" in line
    assert sorted(p.name for p in outer.iterdir()) == before
    assert main(["export", str(model), "--layer", "feat", "--out", str(outer)]) == 0  # the outer one re-exports

"""Inputs that are not regular files (a FIFO, /dev/zero, /dev/urandom) are refused by name before a byte is read:
a FIFO used to block the run forever, deaf to Ctrl-C and SIGTERM, and a device was called "empty"."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fusioncam.dataset.sources import plan_inputs, read_source_bytes
from fusioncam.errors import InputError
from fusioncam.images import load_batch, read_rgb
from fusioncam.interrupts import Interrupted, StopSignals
from tests.support.safety_helpers import env_without_gpu, tiny_bundle, write_images

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this system")


@pytest.fixture
def fifo(tmp_path) -> Path:
    path = tmp_path / "fifo.png"
    os.mkfifo(path)
    return path


@needs_fifo
def test_read_rgb_refuses_a_fifo_without_blocking(fifo):
    started = time.monotonic()
    with pytest.raises(InputError, match=r"fifo\.png' is not a regular file \(it is a FIFO"):
        read_rgb(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        load_batch([fifo], (16, 16))
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_devices_are_not_regular_files_not_empty_ones(device):
    if not os.path.exists(device):
        pytest.skip(f"{device} does not exist here")
    with pytest.raises(InputError, match=rf"'{device}' is not a regular file \(it is a character device\)"):
        read_rgb(device)


@needs_fifo
def test_dataset_reader_and_planner_refuse_a_fifo(fifo, tmp_path):
    data, error = read_source_bytes(str(fifo))
    assert data is None and "is not a regular file (it is a FIFO" in error
    listed = tmp_path / "list.txt"
    os.mkfifo(listed)
    with pytest.raises(InputError, match=r"list\.txt' is not a regular file \(it is a FIFO"):
        plan_inputs([str(listed)])
    # a regular image next to them is still read
    image = write_images(tmp_path / "ok", ["a.png"])[0]
    data, error = read_source_bytes(str(image))
    assert error is None and data == image.read_bytes()


@needs_fifo
def test_explain_cli_on_a_fifo_ends_promptly_with_a_clear_line(tmp_path, fifo):
    bundle = tiny_bundle(tmp_path / "model")
    good = write_images(tmp_path / "in", ["good.png"])[0]
    command = [sys.executable, "-m", "fusioncam", "explain", str(fifo), str(good), "--model", str(bundle),
               "--out", str(tmp_path / "out"), "--device", "cpu", "--methods", "gradcam"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env_without_gpu())
    assert done.returncode == 1, done.stderr  # one image skipped, the other explained
    assert "fifo.png' is not a regular file (it is a FIFO (named pipe))" in done.stderr
    assert "Traceback" not in done.stderr and (tmp_path / "out" / "good_gradcam.npy").is_file()


def test_a_second_signal_in_a_deferred_section_stops_at_once():
    state = StopSignals()
    with state.deferred():
        state.handle(signal.SIGTERM)  # the first only asks the loop to stop at its next clean point
        assert state.requested and state.received == "SIGTERM"
        with pytest.raises(Interrupted):
            state.handle(signal.SIGINT)  # the second ends whatever blocks, a retried system call included


def test_a_blocked_system_call_ends_on_the_second_signal(tmp_path):
    """A child blocked in a read that Python retries after each signal (PEP 475) inside a deferred section: the
    first SIGTERM is only noted, the second ends it with exit 130."""
    script = (
        "import os, sys\n"
        "from fusioncam.interrupts import stop_signals\n"
        "read_end, write_end = os.pipe()\n"
        "with stop_signals() as stop:\n"
        "    with stop.deferred():\n"
        "        try:\n"
        "            print('ready', flush=True)\n"
        "            os.read(read_end, 1)\n"
        "        except KeyboardInterrupt as exc:\n"
        "            print('stopped', exc.signal_name, flush=True)\n"
        "            sys.exit(130)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        child.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert child.poll() is None  # the first signal is deferred
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=20) == 130
        assert child.stdout.read().strip() == "stopped SIGTERM"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


@needs_fifo
def test_a_fifo_as_the_model_is_refused_before_it_is_read(tmp_path, capsys):
    from fusioncam.cli.main import main

    model = tmp_path / "model.onnx"
    os.mkfifo(model)
    image = write_images(tmp_path / "in", ["a.png"])[0]
    assert main(["explain", str(image), "--model", str(model), "--out", str(tmp_path / "out")]) == 2
    assert "model.onnx' is not a regular file (it is a FIFO (named pipe))" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@needs_fifo
@pytest.mark.parametrize("which", ["model", "weights"])
def test_export_refuses_a_fifo_model_or_weights(tmp_path, capsys, which):
    from fusioncam.cli.main import main

    fifo = tmp_path / ("m.onnx" if which == "model" else "w.pth")
    os.mkfifo(fifo)
    command = (["export", str(fifo), "--out", str(tmp_path / "b")] if which == "model"
               else ["export", "resnet18", "--weights", str(fifo), "--out", str(tmp_path / "b")])
    assert main(command) == 2
    assert f"{fifo.name}' is not a regular file (it is a FIFO (named pipe))" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()

"""`fusioncam serve` arguments and options: refused with a clear message before anything starts.

These tests never import KServe in the test process (its protobuf symbols clash with tritonclient.grpc's, which
test_serve_protocols imports); the one that needs it runs the CLI in a subprocess.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys

import pytest

from fusioncam.cli.main import build_parser
from fusioncam.errors import InputError
from fusioncam.serve.options import ServeOptions


def test_serve_arguments_reach_the_options():
    args = build_parser().parse_args(["serve", "a.bundle", "b.onnx", "--name", "a", "--name", "b", "--max-batch-size",
                                      "4", "--max-latency-ms", "2.5", "--max-queue", "40", "--explainer-threads", "2",
                                      "--fast"])
    assert args.models == ["a.bundle", "b.onnx"] and args.name == ["a", "b"]
    assert (args.max_batch_size, args.max_latency_ms, args.max_queue, args.explainer_threads) == (4, 2.5, 40, 2)
    assert args.host == "127.0.0.1" and (args.http_port, args.grpc_port) == (None, 8081)  # REST: $PORT, else 8080
    assert args.kserve_workers is None  # --workers is KServe's (server processes), not Explainer threads
    assert args.fast == 256  # --fast without K: DEFAULT_FAST_CHANNELS


@pytest.mark.parametrize("flag, value", [("--max-batch-size", "0"), ("--max-latency-ms", "-1"), ("--http-port", "70000"),
                                         ("--max-queue", "many")])
def test_serve_refuses_bad_numbers_with_a_usage_error(flag, value, capsys):
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["serve", "a.bundle", flag, value])
    assert stopped.value.code == 2
    assert flag in capsys.readouterr().err


@pytest.mark.parametrize("options, words", [
    ({"max_batch_size": 0}, ["max_batch_size", "positive"]),
    ({"max_latency_ms": -5}, ["max_latency_ms"]),
    ({"max_queue": 8, "max_instances": 16}, ["max_queue", "max_instances"]),
    ({"workers": True}, ["workers"]),
])
def test_serve_options_name_the_bad_option(options, words):
    with pytest.raises(InputError) as caught:
        ServeOptions(**options)
    for word in words:
        assert word in str(caught.value)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("kserve") is None, reason="the serve extra (kserve) is not installed")
def test_serve_with_a_missing_model_exits_2_with_one_clear_line(tmp_path):
    missing = tmp_path / "nothing.bundle"
    ports = []
    for _ in range(2):  # free ports: they are checked (and must be free) before the model is looked for
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(str(probe.getsockname()[1]))
    done = subprocess.run([sys.executable, "-m", "fusioncam", "serve", str(missing), "--http-port", ports[0],
                           "--grpc-port", ports[1]], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("fusioncam serve: error:") and "nothing.bundle" in last and "not found" in last

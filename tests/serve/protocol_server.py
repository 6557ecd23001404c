"""The server the protocol tests share: a tiny classifier served twice (`tiny`, `twin`) by `fusioncam serve` in a
subprocess on free 127.0.0.1 ports, its module fixtures (the .onnx model, its bundle, an Explainer for references)
and the reference encodings (PNG, base64, the file-reading preprocessing)."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tritongrpc
import tritonclient.http as tritonhttp
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

import fusioncam
from fusioncam.images import load_batch
from tests.serve.server_process import stop_process
from tests.support.tiny_models import save, tiny_classifier

NAMES = ["cat", "dog", "fox", "owl", "yak"]
SIZE = 16
MAX_BODY = 300_000
MAX_PIXELS = 1_000_000
MAX_INSTANCES = 16
MAX_QUEUE = 16
LATENCY_MS = 300
SERVER_LIFETIME_S = 300  # the server stops by itself after this, whatever happens to the test process
TOLERANCE = 1e-5


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A `fusioncam serve` subprocess and how to reach it."""

    def __init__(self, process: subprocess.Popen, http_port: int, grpc_port: int, log: Path) -> None:
        self.process, self.http_port, self.grpc_port, self.log = process, http_port, grpc_port, log
        self.base = f"http://127.0.0.1:{http_port}"

    def http(self):
        return tritonhttp.InferenceServerClient(f"127.0.0.1:{self.http_port}", concurrency=16, network_timeout=120)

    def grpc(self):
        return tritongrpc.InferenceServerClient(f"127.0.0.1:{self.grpc_port}")

    def metrics(self) -> dict[tuple[str, tuple], float]:
        text = httpx.get(f"{self.base}/metrics", timeout=10).text
        return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(text) for sample in family.samples}


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory) -> Path:
    return Path(save(tiny_classifier(size=SIZE, classes=len(NAMES), seed=3), tmp_path_factory.mktemp("serve") / "m.onnx"))


@pytest.fixture(scope="module")
def bundle(onnx_path) -> Path:
    out = onnx_path.parent / "tiny.bundle"
    fusioncam.export_onnx(onnx_path, out, input_size=(SIZE, SIZE), class_names=NAMES)
    return out


@pytest.fixture(scope="module")
def explainer(bundle):
    with fusioncam.Explainer(bundle, device="cpu") as alone:
        yield alone


@contextlib.contextmanager
def running_server(bundle: Path, log: Path, latency_ms: int = LATENCY_MS):
    """`fusioncam serve` in a subprocess on free ports, ready to answer; stopped (SIGTERM, then kill) on exit."""
    http_port, grpc_port = free_port(), free_port()
    command = [sys.executable, "-m", "fusioncam", "serve", str(bundle), str(bundle), "--name", "tiny", "--name", "twin",
               "--host", "127.0.0.1",
               "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--device", "cpu",
               "--max-batch-size", "8", "--max-latency-ms", str(latency_ms), "--max-queue", str(MAX_QUEUE),
               "--max-instances", str(MAX_INSTANCES), "--max-body-bytes", str(MAX_BODY),
               "--max-image-pixels", str(MAX_PIXELS), "--stop-after", str(SERVER_LIFETIME_S)]
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    running = Server(process, http_port, grpc_port, log)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if (httpx.get(f"{running.base}/v2/health/ready", timeout=1).status_code == 200
                        and running.grpc().is_server_ready()):
                    break
            except (httpx.HTTPError, InferenceServerException):
                pass
            time.sleep(0.3)
        else:
            pytest.fail(f"the server did not become ready in 120 s:\n{log.read_text()[-3000:]}")
        yield running
    finally:
        stop_process(process)


def picture(seed: int, height: int = 23, width: int = 31) -> np.ndarray:
    return (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)


def png(rgb: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return encoded.tobytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def model_input(encoded: bytes) -> np.ndarray:
    """The reference preprocessing: the same bytes as a file, read by load_batch as `fusioncam explain` reads files."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "image.png"
        path.write_bytes(encoded)
        return load_batch([path], (SIZE, SIZE))[0][0]


def alone(explainer, image: np.ndarray, target, methods) -> fusioncam.Explanation:
    return explainer.explain(image[None], target, methods=methods)

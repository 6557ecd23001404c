"""A `fusioncam serve` subprocess on free 127.0.0.1 ports for the server tests, and how to watch it: its CPU time
and its memory from /proc (Linux), read by the tests while it serves."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_process(process: subprocess.Popen) -> None:
    """Stop a server subprocess: SIGTERM, then SIGKILL if it has not ended within 20 s."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@dataclass
class ServerProcess:
    process: subprocess.Popen
    http_port: int
    grpc_port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the server process (all its threads) has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def cpu_over(self, seconds: float) -> float:
        """CPU seconds the server used over the next `seconds` of wall time."""
        start = self.cpu_seconds()
        time.sleep(seconds)
        return self.cpu_seconds() - start

    def rss_mib(self, field: str = "VmRSS") -> float:
        """The server's resident memory (VmRSS) or its peak so far (VmHWM), MiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise AssertionError(f"{field} not in /proc/{self.process.pid}/status")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def running_server(models: list[str], names: list[str], log: Path, *args: str, lifetime_s: int = 300,
                   ready_timeout_s: float = 120.0):
    """`fusioncam serve MODELS --name ...` with `args`, on free ports; stopped (SIGTERM, then kill) on exit."""
    http_port, grpc_port = free_port(), free_port()
    command = [sys.executable, "-m", "fusioncam", "serve", *models]
    for name in names:
        command += ["--name", name]
    command += ["--host", "127.0.0.1", "--http-port", str(http_port), "--grpc-port", str(grpc_port),
                "--device", "cpu", "--stop-after", str(lifetime_s), *args]
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    server = ServerProcess(process, http_port, grpc_port, log)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server exited with {process.returncode}:\n{server.log_text()[-3000:]}")
            try:
                if httpx.get(f"{server.base}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not become ready in {ready_timeout_s:g} s:\n{server.log_text()[-3000:]}")
            time.sleep(0.3)
        yield server
    finally:
        stop_process(process)

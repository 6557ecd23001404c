"""The read timeouts and the connection cap on both of uvicorn's HTTP implementations (h11, which a plain
`pip install kserve` runs, and httptools): a bare uvicorn server with an echo app and the limited protocol,
driven with raw sockets."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest

uvicorn = pytest.importorskip("uvicorn", reason="uvicorn comes with the serve extra: pip install 'fusioncam[serve]'")

from fusioncam.serve.connection_limits import apply_limits  # noqa: E402

TIMEOUT_S = 0.5
CAP = 4


async def echo(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


@contextlib.contextmanager
def limited_server(http: str):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(echo, host="127.0.0.1", port=port, http=http, log_level="warning")
    apply_limits(config, TIMEOUT_S, TIMEOUT_S, CAP)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def exchange(port: int, data: bytes) -> tuple[bytes, float]:
    """Send `data`, then read until the server closes; what came back and how long it took."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        started, received = time.monotonic(), b""
        while chunk := sock.recv(65536):
            received += chunk
        return received, time.monotonic() - started


@pytest.mark.slow  # waits out the timeouts: about 3 s per implementation
@pytest.mark.parametrize("http", ["h11", pytest.param("httptools", marks=pytest.mark.skipif(
    __import__("importlib").util.find_spec("httptools") is None, reason="httptools is not installed"))])
def test_timeouts_and_cap_on_each_http_implementation(http):
    with limited_server(http) as port:
        answer, took = exchange(port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabcdef")
        assert answer.startswith(b"HTTP/1.1 408") and b"--body-timeout-s" in answer
        assert TIMEOUT_S - 0.05 < took < TIMEOUT_S + 2
        answer, took = exchange(port, b"POST / HTTP/1.1\r\nHost: x\r\n")
        assert answer.startswith(b"HTTP/1.1 408") and b"--header-timeout-s" in answer
        assert TIMEOUT_S - 0.05 < took < TIMEOUT_S + 2
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(CAP)]
        try:
            time.sleep(0.1)
            answer, took = exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 503") and b"--max-connections" in answer and took < TIMEOUT_S
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.1)
        answer, _ = exchange(port, b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc")
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"abc")

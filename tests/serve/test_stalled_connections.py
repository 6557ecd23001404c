"""Stalled and piled-up connections against a real `fusioncam serve`, with raw sockets: a body that stops
arriving and headers that never complete are answered 408 and closed after --body-timeout-s / --header-timeout-s,
connections past --max-connections are answered 503 at once, and none of it touches well-behaved clients (a
kept-alive connection idle between requests, a body sent slowly but steadily)."""

from __future__ import annotations

import base64
import importlib.util
import socket
import time

import cv2
import numpy as np
import pytest

if importlib.util.find_spec("kserve") is None:
    pytest.skip("the serve extra (kserve) is not installed: pip install 'fusioncam[serve]'", allow_module_level=True)
httpx = pytest.importorskip("httpx", reason="httpx is not installed: pip install 'fusioncam[test]'")

from tests.serve.server_process import running_server  # noqa: E402
from tests.support.tiny_models import tiny_bundle_at  # noqa: E402

pytestmark = pytest.mark.slow  # a server subprocess and several timeouts waited out: about 20 s

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
MAX_CONNECTIONS = 60


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stalled")
    bundle = tiny_bundle_at(folder, size=16, seed=5)
    with running_server([str(bundle)], ["tiny"], folder / "server.log", "--header-timeout-s", str(HEADER_TIMEOUT_S),
                        "--body-timeout-s", str(BODY_TIMEOUT_S), "--max-connections", str(MAX_CONNECTIONS)) as running:
        yield running


def connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket, limit_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed (monotonic)."""
    sock.settimeout(limit_s)
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return received, time.monotonic()


def explain_body() -> bytes:
    ok, encoded = cv2.imencode(".png", np.full((20, 20, 3), 90, dtype=np.uint8))
    assert ok
    return (b'{"instances": [{"data": "' + base64.b64encode(encoded.tobytes()) + b'"}], '
            b'"parameters": {"methods": ["gradcam"]}}')


def head(length: int, close: bool = False) -> bytes:
    return (b"POST /v1/models/tiny:explain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + (b"Connection: close\r\n" if close else b"") + b"Content-Length: " + str(length).encode() + b"\r\n\r\n")


def test_a_body_that_stops_arriving_gets_408_and_the_connection_closes(server):
    with connect(server) as sock:
        sock.sendall(head(1000) + b'{"inst')  # 6 bytes of 1000, then silence
        sent = time.monotonic()
        answer, closed = read_until_closed(sock, 30)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"--body-timeout-s" in answer
    assert BODY_TIMEOUT_S - 0.1 < closed - sent < BODY_TIMEOUT_S + 3, f"closed after {closed - sent:.1f} s"


def test_slow_header_sockets_are_closed_after_the_header_timeout(server):
    sockets = [connect(server) for _ in range(50)]
    opened = time.monotonic()
    try:
        for sock in sockets:
            sock.sendall(b"POST /v1/models/tiny:explain HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for _ in range(4):  # a header byte now and then, never the end of the headers
            time.sleep(0.25)
            for sock in sockets:
                try:
                    sock.sendall(b"X")
                except OSError:
                    pass
        answers = [read_until_closed(sock, 30) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    for answer, closed in answers:
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert closed - opened < HEADER_TIMEOUT_S + 4, f"a slow-header socket stayed open {closed - opened:.1f} s"
    good = httpx.post(f"{server.base}/v1/models/tiny:explain", content=explain_body(),
                      headers={"content-type": "application/json"}, timeout=30)
    assert good.status_code == 200, good.text


def test_connections_past_the_cap_get_503_at_once(server):
    sockets = [connect(server) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)  # all accepted
        started = time.monotonic()
        with connect(server) as extra:
            extra.sendall(head(len(explain_body())) + explain_body())
            answer, closed = read_until_closed(extra, 10)
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b"--max-connections" in answer and b"retry-after" in answer.lower()
        assert closed - started < HEADER_TIMEOUT_S, "refused at once, not after a timeout"
    finally:
        for sock in sockets:
            sock.close()
    time.sleep(0.3)  # the server sees them closed
    good = httpx.post(f"{server.base}/v1/models/tiny:explain", content=explain_body(),
                      headers={"content-type": "application/json"}, timeout=30)
    assert good.status_code == 200, good.text


def test_well_behaved_clients_are_not_cut(server):
    with httpx.Client(base_url=server.base, timeout=30) as client:  # one kept-alive connection
        first = client.post("/v1/models/tiny:explain", content=explain_body(), headers={"content-type": "application/json"})
        time.sleep(HEADER_TIMEOUT_S + 0.5)  # idle between requests: the keep-alive timeout applies, not the header one
        second = client.post("/v1/models/tiny:explain", content=explain_body(), headers={"content-type": "application/json"})
    assert first.status_code == second.status_code == 200, second.text
    body = explain_body()
    with connect(server) as sock:  # a body sent in pieces, each within the body timeout, for longer than it
        sock.sendall(head(len(body), close=True))
        pieces = np.array_split(np.frombuffer(body, dtype=np.uint8), 6)
        for piece in pieces:
            sock.sendall(piece.tobytes())
            time.sleep(BODY_TIMEOUT_S * 0.5)
        answer, _ = read_until_closed(sock, 30)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]

"""Read timeouts and a connection cap for the REST server: a stalled client cannot hold a connection forever.

uvicorn (what KServe's RESTServer runs) times out idle keep-alive connections only: a client that sends half a
request's headers, or a Content-Length of 1000 and then 6 bytes, holds its connection (and the request's task)
until it goes away, and nothing bounds how many such connections are open. `limited_protocol` returns uvicorn's
own HTTP protocol class (httptools or h11, whichever uvicorn picks) with:

- a header timeout: a request's headers must arrive complete within header_timeout_s of its first byte (or of
  the connection's opening): otherwise 408 and the connection is closed (slow-header clients, "slowloris");
- a body timeout: while a request's body is being read, a pause of body_timeout_s with no byte is answered 408
  and the connection closed; the route's task sees the client gone (a pause the server itself caused, reading
  paused by flow control, does not count);
- a connection cap: past max_connections open connections, a new one is answered 503 (Retry-After) and closed
  at once.

(uvicorn's limit_concurrency answers 503 only once a request's headers are complete, so it cannot close
slow-header connections; its timeout_keep_alive stays as KServe sets it.)
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("fusioncam.serve")

_IDLE, _HEADERS, _BODY, _ANSWERING = "idle", "headers", "body", "answering"
_LINGER_S = 2.0  # how long a refused or timed-out connection's incoming bytes are drained before it is closed


def _response(status: bytes, text: str, extra: bytes = b"") -> bytes:
    body = text.encode()
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\nconnection: close\r\n" + extra + b"\r\n" + body)


def limited_protocol(base: type, header_timeout_s: float, body_timeout_s: float, max_connections: int) -> type:
    """uvicorn's HTTP protocol class `base` with the header and body timeouts and the connection cap above."""

    class LimitedHttpProtocol(base):  # type: ignore[misc, valid-type]
        """One HTTP connection, timed while it reads a request (see the module's docstring)."""

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._read_timer: asyncio.TimerHandle | None = None
            self._phase = _HEADERS
            self._finished = len(self.connections) > max_connections
            if self._finished:
                log.warning("refused a connection from %s: %d connections are open (--max-connections %d)",
                            _peer(self.client), len(self.connections) - 1, max_connections)
                self.connections.discard(self)  # a refused connection does not count while it drains
                self._answer_and_close(_response(b"503 Service Unavailable",
                                                 f"this server holds at most {max_connections} connections "
                                                 f"(--max-connections); retry later\n", b"retry-after: 1\r\n"))
                return
            self._arm(header_timeout_s, self._headers_too_slow)

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._finished:
                return
            if self._phase == _IDLE:  # the first bytes of the next request on a kept-alive connection
                self._phase = _HEADERS
                self._arm(header_timeout_s, self._headers_too_slow)
            super().data_received(data)
            if self.transport.is_closing():
                self._disarm()
                return
            cycle = self.cycle
            if cycle is None or cycle.response_complete:
                return  # still reading headers: the header timer keeps running
            if cycle.more_body:
                self._phase = _BODY
                self._arm(body_timeout_s, self._body_stalled)  # restarted by every byte of body
            else:
                self._phase = _ANSWERING
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._disarm()
            self._phase = _IDLE  # uvicorn's keep-alive timer now runs

        def _arm(self, seconds: float, callback) -> None:
            self._disarm()
            self._read_timer = self.loop.call_later(seconds, callback)

        def _disarm(self) -> None:
            timer = getattr(self, "_read_timer", None)
            if timer is not None:
                timer.cancel()
                self._read_timer = None

        def _headers_too_slow(self) -> None:
            self._read_timer = None
            if self._phase != _HEADERS or self.transport.is_closing():
                return
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:  # a pipelined request is still being answered
                self._arm(header_timeout_s, self._headers_too_slow)
                return
            log.info("closed a connection from %s: no complete request headers within %g s (--header-timeout-s)",
                     _peer(self.client), header_timeout_s)
            self._answer_and_close(_response(b"408 Request Timeout", f"the request's headers did not arrive within "
                                             f"{header_timeout_s:g} s (--header-timeout-s)\n"))

        def _body_stalled(self) -> None:
            self._read_timer = None
            cycle = self.cycle
            if self._phase != _BODY or self.transport.is_closing() or cycle is None or not cycle.more_body:
                return
            if self.flow.read_paused:  # the server is not reading (flow control), the client is not to blame
                self._arm(body_timeout_s, self._body_stalled)
                return
            log.info("closed a connection from %s: its request body stalled for %g s (--body-timeout-s)",
                     _peer(self.client), body_timeout_s)
            cycle.disconnected = True  # the route reading the body gets http.disconnect
            cycle.message_event.set()
            self._answer_and_close(b"" if cycle.response_started else _response(
                b"408 Request Timeout", f"no byte of the request body arrived for {body_timeout_s:g} s "
                                        f"(--body-timeout-s)\n"))

        def _answer_and_close(self, answer: bytes) -> None:
            """Send the answer and close gracefully: FIN after the answer, bytes still arriving read and dropped
            for a moment, then the close, so the client reads the answer instead of a connection reset."""
            self._finished = True  # data_received drops whatever arrives from now on
            self._disarm()
            if answer:
                self.transport.write(answer)
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(_LINGER_S, self.transport.close)

    return LimitedHttpProtocol


def _peer(client) -> str:
    return f"{client[0]}:{client[1]}" if client else "(unknown)"


def apply_limits(config, header_timeout_s: float, body_timeout_s: float, max_connections: int) -> None:
    """Make a uvicorn.Config (KServe's RESTServer.config, before it starts) use the limited protocol."""
    from uvicorn.config import HTTP_PROTOCOLS
    from uvicorn.importer import import_from_string

    base = (import_from_string(HTTP_PROTOCOLS.get(config.http, config.http)) if isinstance(config.http, str)
            else config.http)
    config.http = limited_protocol(base, header_timeout_s, body_timeout_s, max_connections)


__all__ = ["apply_limits", "limited_protocol"]

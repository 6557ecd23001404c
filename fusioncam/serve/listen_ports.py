"""The REST and gRPC ports checked before any model loads: a port in use is one clear line (exit 2), not uvicorn's
and gRPC's tracebacks after a minute of loading.

Each port is bound once (with SO_REUSEADDR, as uvicorn binds: a port whose old connections linger in TIME_WAIT is
free) and released at once. gRPC binds with SO_REUSEPORT, which would let it share a port another process holds;
the check here binds without it, so such a port is reported as in use.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence

from ..errors import InputError


def check_ports_free(host: str, ports: Sequence[tuple[str, int, str]]) -> None:
    """Raise InputError naming the port when one of `ports` ((what, port, flag)) cannot be listened on at `host`."""
    seen: dict[int, str] = {}
    for what, port, flag in ports:
        if port in seen:
            raise InputError(f"the {what} port and the {seen[port]} port are both {port}: give them different ports "
                             f"({flag})")
        seen[port] = what
    for what, port, flag in ports:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
                probe.listen(1)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise InputError(f"{what} port {port} on {host} is already in use by another process: stop it or "
                                 f"choose another port with {flag}") from None
            if exc.errno == errno.EACCES:
                raise InputError(f"{what} port {port} on {host} needs privileges this process lacks (ports below 1024 "
                                 f"are reserved): choose a port from 1024 up with {flag}") from None
            if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
                raise InputError(f"cannot listen on {host}: it is not an address of this machine (--host)") from None
            raise InputError(f"cannot listen on {host} port {port} ({what}, {flag}): {exc.strerror or exc}") from None

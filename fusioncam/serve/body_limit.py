"""An ASGI middleware that refuses request bodies over a size limit (HTTP 413) before the routes read them whole."""

from __future__ import annotations

import json


class BodySizeLimit:
    """Answers 413 at once when Content-Length is over `max_bytes`, and stops reading a body (chunked or lying about
    its length) as soon as more than `max_bytes` arrive."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    def _message(self, size: str) -> str:
        return (f"the request body is {size} bytes, over this server's limit of {self.max_bytes:,} bytes "
                f"(--max-body-bytes); send fewer or smaller images per request")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send, f"{int(declared):,}")
            return
        received = 0
        refused = False

        async def limited_receive():
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    from .request_errors import PayloadTooLarge

                    raise PayloadTooLarge(self._message(f"over {received:,}"))  # the 413 handler writes the JSON
            return message

        await self.app(scope, limited_receive, send)

    async def _refuse(self, send, size: str) -> None:
        body = json.dumps({"error": self._message(size)}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

"""An ASGI middleware that cancels a request's work when its client disconnects before the answer.

Starlette never cancels a route when the client goes away: a Fusion-CAM request whose client hung up (or gave up
at its own timeout) would be computed to the end for nobody. Once the route has read the whole body, this
middleware listens on the connection; when the server reports `http.disconnect` before the response was sent,
the route's task is cancelled, the model marks the request abandoned (model.py) and the batcher drops it or
stops its batch at the next scorer batch (batching.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger("fusioncam.serve")


class CancelOnDisconnect:
    """Runs each HTTP request's app in a task and cancels it when the client disconnects before the response ends."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        body_done = asyncio.Event()
        answered = False

        async def tracked_receive():
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                body_done.set()
            return message

        async def tracked_send(message) -> None:
            nonlocal answered
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered = True
            await send(message)

        route = asyncio.ensure_future(self.app(scope, tracked_receive, tracked_send))
        watcher = asyncio.ensure_future(self._watch(route, receive, body_done, lambda: answered))
        try:
            await asyncio.shield(route)
        except asyncio.CancelledError:
            if not route.cancelled():  # this middleware itself was cancelled (the server stopping): pass it on
                route.cancel()
                raise
            log.info("client %s disconnected before its answer; its work was cancelled", _client(scope))
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    @staticmethod
    async def _watch(route: asyncio.Future, receive, body_done: asyncio.Event, answered) -> None:
        """After the body was read: wait for the connection's next event; a disconnect before the answer cancels."""
        await body_done.wait()
        while not route.done():
            message = await receive()
            if message["type"] == "http.disconnect":
                if not answered() and not route.done():
                    route.cancel()
                return


def _client(scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "(unknown)"


__all__ = ["CancelOnDisconnect"]

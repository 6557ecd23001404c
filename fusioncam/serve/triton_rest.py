"""Triton's REST extensions on KServe's FastAPI app: model configuration, statistics, the repository index, and
versioned paths.

- `GET /v2/models/NAME/config`: Triton's ModelConfig JSON (triton_config.py).
- `GET /v2/models/NAME/stats` and `GET /v2/models/stats`: Triton's statistics (model_statistics.py).
- `POST /v2/repository/index` (body optional, `{"ready": true}` lists ready models only): every served model and
  method view, version "1", state READY or UNAVAILABLE.
- `/v2/models/NAME/versions/V/...` (metadata, ready, infer, config, stats): V = "1" reaches the model as the
  unversioned path does; any other V is a 404 naming the version (KServe answers 501 for every version).
"""

from __future__ import annotations

import json
import re

from fastapi import FastAPI, Request
from kserve.errors import ModelNotFound

from .method_views import MethodViewRepository
from .model_statistics import model_statistics
from .model_versions import ModelVersionNotFound, SERVED_VERSION
from .request_errors import BadRequest
from .triton_config import config_of, index_entry

_VERSIONED = re.compile(
    r"^/v2/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)(?P<rest>/(ready|infer|config|stats))?$")


class VersionedPaths:
    """ASGI middleware: `/v2/models/NAME/versions/1/...` becomes `/v2/models/NAME/...`; another version is a 404."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        match = _VERSIONED.match(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        if match["version"] != SERVED_VERSION:
            body = json.dumps({"error": ModelVersionNotFound(match["name"], match["version"]).reason}).encode()
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        path = f"/v2/models/{match['name']}{match['rest'] or ''}"
        await self.app({**scope, "path": path, "raw_path": path.encode()}, receive, send)


def install_triton_rest(app: FastAPI, registry: MethodViewRepository) -> None:
    """Add the routes (ahead of KServe's, which are registered when the server starts) and the version middleware;
    once per app."""
    if getattr(app.state, "fusioncam_triton_rest", False):
        return
    app.state.fusioncam_triton_rest = True

    def served(name: str):
        model = registry.get_model(name)
        if model is None:
            raise ModelNotFound(name)
        return model

    async def config(model_name: str) -> dict:
        return config_of(served(model_name))

    async def all_statistics() -> dict:
        return {"model_stats": [model_statistics(name) for name in registry.get_models()]}

    async def statistics(model_name: str) -> dict:
        model = served(model_name)
        base = getattr(model, "base", model)
        return {"model_stats": [model_statistics(model_name, recorded_as=base.name)]}

    async def index(request: Request) -> list:
        body = await request.body()
        try:
            options = json.loads(body) if body.strip() else {}
        except ValueError:
            raise BadRequest("the repository index request body is JSON, e.g. {\"ready\": true}, or empty") from None
        if not isinstance(options, dict):
            raise BadRequest("the repository index request body is a JSON object, e.g. {\"ready\": true}")
        entries = []
        views = getattr(registry, "view_names", list)()  # none with KServe's plain repository
        for name in [*registry.get_models(), *views]:
            ready = await registry.is_model_ready(name)
            if ready or not options.get("ready"):
                entries.append(index_entry(name, ready))
        return entries

    app.add_api_route("/v2/models/stats", all_statistics, methods=["GET"])
    app.add_api_route("/v2/models/{model_name}/config", config, methods=["GET"])
    app.add_api_route("/v2/models/{model_name}/stats", statistics, methods=["GET"])
    app.add_api_route("/v2/repository/index", index, methods=["POST"])
    app.add_middleware(VersionedPaths)

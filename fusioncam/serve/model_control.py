"""The models a server was started with, and KServe's model-repository extension (load/unload) over them.

KServe's own extension lets anyone unload a model (`POST /v2/repository/models/NAME/unload`, no authentication), after
which `/v2/health/ready` still says ready, every request gets 404 and `load` cannot bring it back (its repository
has no loader). Here:

- model control is off unless the server is started with `--allow-model-control`: load and unload are refused with
  403 (gRPC PERMISSION_DENIED) and a message saying how to turn it on;
- when on, `unload` takes the model out of the routes first, then finishes its queued requests and frees its
  Explainers (in a thread, not on the event loop); `load` starts a served model again and puts it back;
- the server is ready only while every served model is registered and ready (ServedModels.all_ready: the
  readiness endpoints and the gRPC health service ask it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from kserve.errors import ModelNotFound, ModelNotReady
from kserve.model_repository import ModelRepository
from kserve.protocol.model_repository_extension import ModelRepositoryExtension

ALLOW_FLAG = "--allow-model-control"


class ModelControlDisabled(Exception):
    """A load or unload request to a server started without --allow-model-control (HTTP 403, gRPC PERMISSION_DENIED)."""

    def __init__(self, action: str, name: str) -> None:
        self.reason = (f"model control is off: {action} of model {name or '(no name given)'} refused; start "
                       f"fusioncam serve with "
                       f"{ALLOW_FLAG} to allow POST /v2/repository/models/NAME/load|unload")
        super().__init__(self.reason)

    def __str__(self) -> str:
        return self.reason


class ServedModels:
    """The models this server was started with (by name), whether or not they are in KServe's registry right now."""

    def __init__(self, registry: ModelRepository, models: Sequence) -> None:
        self.registry = registry
        self.models = {model.name: model for model in models}

    async def model_ready(self, name: str) -> bool:
        """Registered (not unloaded) and ready."""
        return self.registry.get_model(name) is not None and await self.registry.is_model_ready(name)

    async def all_ready(self) -> bool:
        """Every served model registered and ready: what /v2/health/ready and the gRPC health service report."""
        for name in self.models:
            if not await self.model_ready(name):
                return False
        return True


class ModelControl(ModelRepositoryExtension):
    """KServe's model-repository extension, refused unless allowed; `load` restores an unloaded served model."""

    def __init__(self, served: ServedModels, allow: bool) -> None:
        super().__init__(model_registry=served.registry)
        self.served = served
        self.allow = bool(allow)

    async def load(self, model_name: str) -> dict:
        """Start a served model again (its Explainers, its batcher) and put it back in the routes."""
        if not self.allow:
            raise ModelControlDisabled("load", model_name)
        model = self.served.models.get(model_name)
        if model is None:
            raise ModelNotFound(model_name)
        if not await self.served.model_ready(model_name):
            try:
                await asyncio.to_thread(model.load)
            except Exception as exc:  # the model's own load error (memory, device), said in the answer
                raise ModelNotReady(model_name, f"loading it failed: {exc}") from None
            self.served.registry.update(model)
        if not await self.served.model_ready(model_name):
            raise ModelNotReady(model_name)
        return {"name": model_name, "load": True}

    async def unload(self, model_name: str) -> dict:
        """Take the model out of the routes, then answer its queued requests and free its Explainers."""
        if not self.allow:
            raise ModelControlDisabled("unload", model_name)
        model = self.served.registry.get_model(model_name)
        if model is None:
            raise ModelNotFound(model_name)
        del self.served.registry.models[model_name]
        await asyncio.to_thread(model.stop)
        return {"name": model_name, "unload": True}

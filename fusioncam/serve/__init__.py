"""`fusioncam serve`: explanations next to predictions behind KServe's v1 and Open Inference Protocol v2 (REST, gRPC).

    from fusioncam.serve import FusionCamModel, ServeOptions, serve
    serve(["resnet50.bundle"], http_port=8080)          # also fusioncam.serve(...), and `fusioncam serve` on the CLI

Needs the serve extra (pip install 'fusioncam[serve]'): KServe's Python SDK brings the routes, gRPC, health,
metadata and Prometheus metrics; fusioncam supplies the model (model.py), the decoding (decoding.py), the
dynamic batching (batching.py), the v1/v2 payloads (v1.py, v2_tensors.py) and its metrics (metrics.py).
Importing this package is cheap: KServe is imported when one of these names is first used.
"""

from __future__ import annotations

import sys
import types

__all__ = ["FusionCamModel", "LoopbackModelServer", "ServeOptions", "serve"]

_LAZY = {"FusionCamModel": "model", "LoopbackModelServer": "server", "ServeOptions": "options", "serve": "server"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        try:
            module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        except ImportError as exc:
            from ..errors import FusionCamError

            raise FusionCamError(f"fusioncam serve needs the serve extra ({exc.name} is missing): "
                                 f"pip install 'fusioncam[serve]'") from None
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _CallableModule(types.ModuleType):
    """Lets `fusioncam.serve(...)` start the server while `fusioncam.serve` stays this package."""

    def __call__(self, *args, **kwargs):
        return __getattr__("serve")(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

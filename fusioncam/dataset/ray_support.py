"""Importing Ray only when a dataset run needs it, and connecting to a local (loopback-only) or remote Ray."""

from __future__ import annotations

import importlib.util
import os
import sys

from ..errors import FusionCamError

INSTALL_HINT = "pip install 'fusioncam[dataset]'"
# Ray rewrites a local node's 127.0.0.1 into the machine's network address unless "clusters" are off (its setting
# for laptops); off, a local Ray's GCS, raylet and workers listen on 127.0.0.1 only. Read when Ray is imported.
LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class RayMissingError(FusionCamError):
    """Ray Data (or pyarrow) is not installed: the dataset mode is an optional extra."""


def require_ray() -> None:
    """Check that Ray Data and pyarrow are installed (without importing Ray), else say how to install them."""
    for module in ("ray", "pyarrow"):  # top-level names only: finding "ray.data" would import Ray
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError, AttributeError):  # a missing parent package, or None in sys.modules
            found = False
        if not found:
            raise RayMissingError(f"explaining datasets needs Ray Data and pyarrow ({module} is missing): {INSTALL_HINT}")


def import_ray(local: bool):
    """The `ray` module; for a `local` Ray started here, imported so that it listens on 127.0.0.1 only."""
    require_ray()
    if local and "ray" not in sys.modules:
        os.environ.setdefault(LOOPBACK_ONLY_ENV, "0")
    import ray
    import ray.data  # noqa: F401

    return ray


def connect(address: str | None) -> tuple[object, bool]:
    """(ray, started_here): join `address` ('auto', 'ray://host:10001') or an already running Ray, else start a
    local one on 127.0.0.1 without the dashboard. `started_here` says whether the caller should shut it down."""
    ray = import_ray(local=address is None)
    if ray.is_initialized():
        return ray, False
    if address:
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise FusionCamError(f"cannot connect to the Ray cluster at {address!r} ({exc}); start one with `ray start "
                                 f"--head` or give its address as ray://HEAD:10001 or auto") from None
        return ray, True
    ray.init(include_dashboard=False, log_to_driver=False, num_cpus=os.cpu_count() or 1)
    return ray, True


def cluster_cpus(ray) -> int:
    """Whole CPUs Ray can schedule on (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", os.cpu_count() or 1)))

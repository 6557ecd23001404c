"""Importing Ray only when a dataset run needs it, and connecting to a local or remote Ray."""

from __future__ import annotations

import os

from ..errors import FusionCamError

INSTALL_HINT = "pip install 'fusioncam[dataset]'"


class RayMissingError(FusionCamError):
    """Ray Data (or pyarrow) is not installed: the dataset mode is an optional extra."""


def require_ray():
    """The `ray` module with Ray Data and pyarrow importable, or a RayMissingError saying how to install them."""
    try:
        import pyarrow  # noqa: F401
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise RayMissingError(f"explaining datasets needs Ray Data and pyarrow ({exc.name or exc} is missing): "
                              f"{INSTALL_HINT}") from None
    return ray


def connect(address: str | None) -> tuple[object, bool]:
    """(ray, started_here): join `address` ('auto', 'ray://host:10001') or an already running Ray, else start a
    local one on 127.0.0.1 without the dashboard. `started_here` says whether the caller should shut it down."""
    ray = require_ray()
    if ray.is_initialized():
        return ray, False
    if address:
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise FusionCamError(f"cannot connect to the Ray cluster at {address!r} ({exc}); start one with `ray start "
                                 f"--head` or give its address as ray://HEAD:10001 or auto") from None
        return ray, True
    ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             num_cpus=os.cpu_count() or 1)
    return ray, True


def cluster_cpus(ray) -> int:
    """Whole CPUs Ray can schedule on (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", os.cpu_count() or 1)))

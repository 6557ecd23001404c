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
GIB = 1 << 30
RAY_PROCESS_ADDRESS_SPACE = 4 * GIB  # a Ray worker's own address space besides the object store it maps
MIN_OBJECT_STORE_BYTES = GIB // 2  # the smallest object store a local run is started with


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
    store = local_object_store_bytes(address_space_limit())
    try:
        ray.init(include_dashboard=False, log_to_driver=False, num_cpus=os.cpu_count() or 1,
                 object_store_memory=store)
    except Exception as exc:  # Ray raises a bare Exception when its node does not come up, RuntimeError and others
        if ray.is_initialized():
            ray.shutdown()
        raise RayStartError(f"Ray could not start a local instance ({_first_line(exc)}); its logs are in "
                            f"/tmp/ray/session_latest/logs. Check the memory limits (ulimit -v, containers) and the "
                            f"free space of /dev/shm and /tmp, or join a running Ray with --address") from None
    return ray, True


class RayStartError(FusionCamError):
    """A local Ray cannot start here (too little address space, or its node did not come up)."""


def address_space_limit() -> int | None:
    """This process's address-space limit in bytes (`ulimit -v`, inherited by the Ray processes it starts), or
    None when there is none."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def local_object_store_bytes(limit: int | None) -> int | None:
    """The object store size for a local Ray under an address-space `limit`: None (Ray's default, 30% of the
    memory) without a limit; else what is left of the limit after RAY_PROCESS_ADDRESS_SPACE, at most Ray's default
    share of the memory. Every Ray worker maps the whole store into its own address space, so Ray's default store
    under a smaller limit makes each worker die on `mmap failed` and the run hang. A limit that leaves less than
    MIN_OBJECT_STORE_BYTES is a RayStartError that says so, before Ray starts (a Ray started under it aborts with a
    native backtrace)."""
    if limit is None:
        return None
    store = limit - RAY_PROCESS_ADDRESS_SPACE
    if store < MIN_OBJECT_STORE_BYTES:
        raise RayStartError(f"Ray cannot start under this address-space limit of {limit / GIB:.1f} GiB (ulimit -v "
                            f"{limit // 1024}): its processes need about {RAY_PROCESS_ADDRESS_SPACE / GIB:.0f} GiB "
                            f"each plus its object store; raise the limit (ulimit -v unlimited, or at least "
                            f"{(RAY_PROCESS_ADDRESS_SPACE + MIN_OBJECT_STORE_BYTES) // 1024} KiB), or join a running "
                            f"Ray with --address")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(min(store, 0.3 * memory))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def cluster_cpus(ray) -> int:
    """Whole CPUs Ray can schedule on (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", os.cpu_count() or 1)))

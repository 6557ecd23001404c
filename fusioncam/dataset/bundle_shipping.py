"""Getting the driver's bundle to workers on other machines: its files travel through Ray's object store once and
each node writes them into its own temporary folder (atomically, keyed by the manifest hash), unless the worker
already sees the same bundle at the driver's path (one machine, or a shared file system)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from ..atomic import atomic_directory
from ..bundle import check_bundle_destination, load_bundle
from ..errors import BundleError

SHIPPED_FOLDER = "fusioncam-shipped-bundles"


def bundle_files(path: str | Path) -> dict[str, bytes]:
    """Every file of a bundle directory by its relative path."""
    root = Path(path)
    return {str(file.relative_to(root)): file.read_bytes() for file in sorted(root.rglob("*")) if file.is_file()}


def _is_bundle(path: Path, manifest_sha256: str) -> bool:
    """Whether `path` holds an intact bundle with this manifest hash."""
    try:
        return (path / "manifest.json").is_file() and load_bundle(path).manifest.manifest_sha256 == manifest_sha256
    except BundleError:
        return False


def local_bundle(path: str, manifest_sha256: str, fetch_files: Callable[[], dict[str, bytes]] | None) -> str:
    """The driver's bundle path when this machine sees that bundle there, else a copy written from `fetch_files()`
    into the temporary folder (once per node; later workers reuse it after checking its hashes)."""
    if _is_bundle(Path(path), manifest_sha256) or fetch_files is None:
        return path
    copy = Path(tempfile.gettempdir()) / SHIPPED_FOLDER / manifest_sha256[:24]
    if not _is_bundle(copy, manifest_sha256):
        with atomic_directory(copy, guard=check_bundle_destination) as staging:  # a damaged earlier copy is replaced
            for name, data in fetch_files().items():
                target = staging / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
    return str(copy)

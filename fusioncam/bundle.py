"""The bundle directory: explain and scorer graphs, the weights they share, a manifest; checked by hash when loaded."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .atomic import atomic_directory
from .errors import BundleError
from .hashing import file_sha256

MANIFEST = "manifest.json"
EXPLAIN_GRAPH = "explain.onnx"
SCORER_GRAPH = "scorer.onnx"
SCORER_GRAPH_FP16 = "scorer_fp16.onnx"
WEIGHTS_FILE = "weights.bin"  # the large weights, stored once and referenced by the graphs (ONNX external data)
FORMAT_VERSION = 1


@dataclass
class Manifest:
    """What the runtime needs to know about a bundle, and the hashes that prove its files are intact."""

    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    target_layer: str  # as the user named it: a module path or a tensor name
    target_tensor: str  # the ONNX tensor in the source graph
    channels: int
    feature_size: tuple[int, int]
    num_classes: int
    opset: int
    source_sha256: str
    source: str
    class_names: list[str] | None = None
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, origin: str) -> "Manifest":
        try:
            data = json.loads(text)
            data["input_size"] = tuple(data["input_size"])
            data["feature_size"] = tuple(data["feature_size"])
            data["mean"] = tuple(data["mean"])
            data["std"] = tuple(data["std"])
            manifest = cls(**data)
        except (ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"{origin}: manifest is not a valid fusioncam manifest ({exc}); re-export the bundle") from None
        if manifest.format_version != FORMAT_VERSION:
            raise BundleError(f"{origin}: bundle format {manifest.format_version}, this fusioncam reads {FORMAT_VERSION}; re-export it")
        return manifest


@dataclass
class Bundle:
    """A verified bundle on disk."""

    path: Path
    manifest: Manifest

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def explain_path(self) -> Path:
        return self.path / EXPLAIN_GRAPH

    @property
    def scorer_path(self) -> Path:
        return self.path / SCORER_GRAPH

    @property
    def scorer_fp16_path(self) -> Path | None:
        """The float16 scorer, or None if the bundle was exported without one."""
        return self.path / SCORER_GRAPH_FP16 if SCORER_GRAPH_FP16 in self.manifest.files else None

    def class_name(self, index: int) -> str:
        names = self.manifest.class_names
        return names[index] if names and 0 <= index < len(names) else f"class {index}"


class StagedBundle:
    """A bundle being written into a staging directory, one file at a time."""

    def __init__(self, staging: Path) -> None:
        self.staging = staging

    def path(self, name: str) -> Path:
        """Where file `name` goes (for writers that stream into it)."""
        return self.staging / name

    def write(self, name: str, data: bytes) -> Path:
        """Write file `name` and return its staged path (sessions can load it from there to check it)."""
        path = self.path(name)
        path.write_bytes(data)
        return path


@contextmanager
def staged_bundle(out: str | os.PathLike, manifest: Manifest) -> Iterator[StagedBundle]:
    """Stage a bundle's files; on success hash them all into the manifest and move the directory into place whole,
    on any error leave nothing behind."""
    with atomic_directory(Path(out)) as staging:
        yield StagedBundle(staging)
        for file in sorted(staging.iterdir()):
            manifest.files[file.name] = file_sha256(file)
        (staging / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")


def load_bundle(path: str | os.PathLike, verify: bool = True) -> Bundle:
    """Read a bundle's manifest and check every listed file exists and still has its recorded hash."""
    path = Path(path)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is a file, not a bundle directory"
        raise BundleError(f"bundle {path} {what}; create one with `fusioncam export MODEL --out {path}`")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"bundle {path} has no {MANIFEST}; it is not a fusioncam bundle (re-export it)")
    manifest = Manifest.from_json(manifest_path.read_text(encoding="utf-8"), str(manifest_path))
    for required in (EXPLAIN_GRAPH, SCORER_GRAPH):
        if required not in manifest.files:
            raise BundleError(f"bundle {path}: manifest lists no {required}; re-export the bundle")
    for name, digest in manifest.files.items():
        file = path / name
        if not file.is_file():
            raise BundleError(f"bundle {path} is missing {name}; re-export the bundle")
        if verify and file_sha256(file) != digest:
            raise BundleError(
                f"bundle {path}: {name} was changed after export (SHA-256 mismatch); re-export the bundle "
                f"rather than editing its files"
            )
    return Bundle(path=path, manifest=manifest)

"""The bundle directory: explain and scorer graphs, the weights they share, a manifest; checked by hash when loaded."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from .atomic import atomic_directory
from .errors import BundleError, OutputError
from .hashing import file_sha256
from .manifest_types import check_manifest_types
from .output_guard import check_writable_location, listing, protected_folder_reason

MANIFEST = "manifest.json"
EXPLAIN_GRAPH = "explain.onnx"
SCORER_GRAPH = "scorer.onnx"
SCORER_GRAPH_FP16 = "scorer_fp16.onnx"
SCORER_GRAPH_INT8 = "scorer_int8.onnx"  # QDQ INT8 scorer for the CPU (export/int8_scorer.py)
HEAD_GRAPH = "head.onnx"  # the network after the target layer: activations -> logits (export/head_graph.py)
HEAD_GRAPH_MORE = "head_{index}.onnx"  # a several-layer bundle's head graph of its further layer `index`
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
    task: str = "classification"  # or "segmentation": class scores [N, C, H', W'] explained over a region
    output_size: tuple[int, int] | None = None  # segmentation: (H', W') of the class scores
    # an INT8 or float16 source: its format, ops, and how the explain graph's gradients are computed (None: float32)
    source_precision: dict | None = None
    # the second and later target layers of a several-layer bundle, each {"target_layer", "target_tensor", "channels",
    # "feature_size"}; the explain graph outputs their maps as activations/1, gradients/1, ... (graph_names.py) from
    # the same backward pass. None: one target layer (left out of the hash, so bundles from before still load)
    extra_layers: list[dict] | None = None
    # detection bundles: the model's own NMS IoU threshold, which the default instance selection uses (None: the
    # model does not say; left out of the hash, so bundles from before still load)
    nms_iou_threshold: float | None = None
    format_version: int = FORMAT_VERSION
    manifest_sha256: str = ""  # SHA-256 of every other field (content_sha256): an edited manifest is detected

    def content_sha256(self) -> str:
        """SHA-256 of the manifest's canonical JSON without its own hash field (key order and spacing fixed)."""
        facts = asdict(self)
        facts.pop("manifest_sha256")
        if facts["nms_iou_threshold"] is None:  # as before the field existed
            facts.pop("nms_iou_threshold")
        if facts["extra_layers"] is None:  # a one-layer manifest hashes as it did before the field existed
            facts.pop("extra_layers")
        return hashlib.sha256(json.dumps(facts, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()

    def seal(self) -> None:
        """Store the hash of the manifest's content in it (after every file hash is in)."""
        self.manifest_sha256 = self.content_sha256()

    def to_json(self) -> str:
        facts = asdict(self)
        if facts["extra_layers"] is None:  # one-layer manifests are written as before the field existed
            facts.pop("extra_layers")
        return json.dumps(facts, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, origin: str) -> "Manifest":
        try:
            data = json.loads(text)
            check_manifest_types(data, origin)  # a field of the wrong type is a BundleError naming it
            data["input_size"] = tuple(data["input_size"])
            data["feature_size"] = tuple(data["feature_size"])
            data["mean"] = tuple(data["mean"])
            data["std"] = tuple(data["std"])
            if data.get("output_size") is not None:
                data["output_size"] = tuple(data["output_size"])
            for extra in data.get("extra_layers") or ():
                extra["feature_size"] = tuple(extra["feature_size"])
            manifest = cls(**data)
        except (ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"{origin}: manifest is not a valid fusioncam manifest ({exc}); re-export the bundle") from None
        if manifest.format_version != FORMAT_VERSION:
            raise BundleError(f"{origin}: bundle format {manifest.format_version}, this fusioncam reads {FORMAT_VERSION}; re-export it")
        if not manifest.manifest_sha256:
            raise BundleError(f"{origin}: this bundle predates manifest hashing (its manifest is not covered by a hash); "
                              f"re-export the bundle with this fusioncam")
        if manifest.manifest_sha256 != manifest.content_sha256():
            raise BundleError(f"{origin}: manifest.json was changed after export (its content no longer matches its "
                              f"manifest_sha256); re-export the bundle rather than editing its manifest")
        return manifest


@dataclass
class Bundle:
    """A verified bundle on disk."""

    path: Path
    manifest: Manifest

    @property
    def layer_names(self) -> list[str]:
        """The target layers the explain graph outputs maps of, in order (one for most bundles)."""
        extra = self.manifest.extra_layers or []
        return [self.manifest.target_layer, *(str(layer["target_layer"]) for layer in extra)]

    @property
    def layer_feature_sizes(self) -> list[tuple[int, int]]:
        """Each target layer's map size (h, w), in the order of layer_names."""
        extra = self.manifest.extra_layers or []
        return [tuple(self.manifest.feature_size), *(tuple(layer["feature_size"]) for layer in extra)]

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

    @property
    def scorer_int8_path(self) -> Path | None:
        """The INT8 scorer, or None if the bundle was exported without one."""
        return self.path / SCORER_GRAPH_INT8 if SCORER_GRAPH_INT8 in self.manifest.files else None

    @property
    def head_path(self) -> Path | None:
        """The head graph (activations -> logits), or None if the bundle has none (exported before head graphs
        existed, or a target layer whose tail also reads the image: see export/head_graph.py)."""
        return self.head_path_of(0)

    def head_path_of(self, index: int) -> Path | None:
        """Target layer `index`'s head graph (its activations -> logits; head_graph_file), or None without one."""
        name = head_graph_file(index)
        return self.path / name if name in self.manifest.files else None

    def class_name(self, index: int) -> str:
        names = self.manifest.class_names
        return names[index] if names and 0 <= index < len(names) else f"class {index}"


def head_graph_file(index: int) -> str:
    """The file of target layer `index`'s head graph: HEAD_GRAPH for the first, head_1.onnx, ... for the further
    layers of a several-layer bundle."""
    return HEAD_GRAPH if index == 0 else HEAD_GRAPH_MORE.format(index=index)


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


MANIFEST_FIELDS = frozenset({"input_size", "target_tensor", "channels", "num_classes", "source_sha256", "files",
                             "format_version"})  # present in every fusioncam manifest, of any version


def _bundle_files(path: Path) -> set[str] | None:
    """The files a fusioncam bundle at `path` consists of (its manifest and the files it lists), or None when
    `path` holds no manifest with fusioncam's fields (any bundle version: replacing an old bundle is fine)."""
    try:
        document = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or not MANIFEST_FIELDS <= document.keys() or not isinstance(document["files"], dict):
        return None
    return {MANIFEST, *(str(name) for name in document["files"])}


def _enclosing_bundle(out: Path) -> Path | None:
    """The nearest folder above `out` that is a fusioncam bundle (has a bundle manifest), or None."""
    for folder in Path(os.path.abspath(out)).parents:
        if folder.is_dir() and _bundle_files(folder) is not None:
            return folder
    return None


def check_bundle_destination(out: str | os.PathLike, sources: Sequence[str | os.PathLike] = ()) -> Path:
    """Refuse, before any work, an export destination that is not a new path or a previous fusioncam bundle.

    A previous bundle is replaced whole (atomically), so it may hold nothing but its own files; `sources` (the model
    being exported, its weights) may not be at or inside `out`. Files, the current directory, its parents, home and
    folders of other files are refused with an OutputError that names the path and what to do."""
    out = Path(out)
    fix = "choose a new path, e.g. --out model.fcam"
    if out.is_symlink():
        raise OutputError(f"bundle destination {out} is a symbolic link; fusioncam will not replace it: {fix}")
    for source in sources:
        real_source, real_out = os.path.realpath(source), os.path.realpath(out)
        if real_source == real_out or real_source.startswith(real_out.rstrip(os.sep) + os.sep):
            raise OutputError(f"bundle destination {out} would replace the model being exported ({source}): {fix}")
    enclosing = _enclosing_bundle(out)
    if enclosing is not None:
        raise OutputError(f"bundle destination {out} lies inside the bundle {enclosing}; a bundle holds only its own "
                          f"files (a bundle inside it would stop {enclosing} from being re-exported): {fix} outside it")
    if not out.exists():
        check_writable_location(out, "bundle destination")
        return out
    if not out.is_dir():
        raise OutputError(f"bundle destination {out} is an existing file; export writes a bundle folder and replaces "
                          f"only a previous fusioncam bundle, never other files: {fix}")
    reason = protected_folder_reason(out)
    if reason:
        raise OutputError(f"bundle destination {out} {reason}; export replaces its destination folder whole: {fix}")
    present = {entry.name for entry in out.iterdir()}
    if not present:
        return out
    own = _bundle_files(out)
    if own is None:
        raise OutputError(f"bundle destination {out} is a folder that is not a fusioncam bundle (it holds "
                          f"{listing(present)}); export replaces only a previous bundle: {fix}")
    foreign = present - own
    if foreign:
        raise OutputError(f"bundle destination {out} is a fusioncam bundle but also holds files fusioncam did not write "
                          f"({listing(foreign)}); move them away or {fix}")
    return out


@contextmanager
def staged_bundle(out: str | os.PathLike, manifest: Manifest) -> Iterator[StagedBundle]:
    """Stage a bundle's files; on success hash them all into the manifest and move the directory into place whole,
    on any error leave nothing behind. Only a new path or a previous bundle is replaced (check_bundle_destination)."""
    with atomic_directory(Path(out), guard=check_bundle_destination) as staging:
        yield StagedBundle(staging)
        for file in sorted(staging.iterdir()):
            manifest.files[file.name] = file_sha256(file)
        manifest.seal()
        (staging / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")


class CarriesBundle(Protocol):
    """What an export returns (fusioncam.export's ExportResult): an object whose `.bundle` is the Bundle written."""

    bundle: Bundle


def bundle_of(value):
    """The Bundle an export returned (fusioncam.export's ExportResult carries it as `.bundle`), else `value` as
    given: wherever a bundle directory or a Bundle is accepted, an export's result is accepted too."""
    inner = getattr(value, "bundle", None)
    return inner if isinstance(inner, Bundle) else value


def load_bundle(path: str | os.PathLike, verify: bool = True) -> Bundle:
    """Read a bundle's manifest, check every listed file exists and still has its recorded hash, and that the
    manifest's facts agree with the graphs (read without their weights)."""
    path = Path(path)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is a file, not a bundle directory"
        raise BundleError(f"bundle {path} {what}; create one with `fusioncam export MODEL --out {path}`")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"bundle {path} has no {MANIFEST}; it is not a fusioncam bundle (re-export it)")
    try:
        manifest_text = manifest_path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as exc:  # found by fuzz/bundle_fuzz.py: bytes that are not UTF-8
        raise BundleError(f"{manifest_path}: manifest cannot be read as UTF-8 JSON ({exc}); re-export the bundle") from None
    manifest = Manifest.from_json(manifest_text, str(manifest_path))
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
    from .bundle_facts import check_manifest_facts

    check_manifest_facts(path, manifest)
    return Bundle(path=path, manifest=manifest)

"""Load a classifier ONNX file safely and bring it to the form the exporter works on."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto

from ..errors import ModelLoadError
from ..hashing import file_sha256

MIN_OPSET = 17


@dataclass
class SourceModel:
    """A loaded classifier: the proto (external data inlined), its fingerprint, and where it came from."""

    model: onnx.ModelProto
    sha256: str
    origin: str


def _check_external_data_paths(model: onnx.ModelProto, base_dir: Path, origin: str) -> None:
    """Refuse external-data locations that are absolute or escape the model's own directory."""
    base = base_dir.resolve()
    for tensor in onnx.external_data_helper._get_all_tensors(model):  # noqa: SLF001 (public in all onnx versions we support)
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
        target = (base / location).resolve()
        if os.path.isabs(location) or (target != base and base not in target.parents):
            raise ModelLoadError(
                f"{origin}: initializer '{tensor.name}' keeps its data at '{location}', outside the model's "
                f"directory {base}; refusing to read it. Move the data file next to the model and re-save it "
                f"with a relative location."
            )
        if not target.is_file():
            raise ModelLoadError(
                f"{origin}: initializer '{tensor.name}' keeps its data in '{location}', which does not exist "
                f"in {base}. Copy the external data file next to the model."
            )


def _read_graph(path: Path) -> onnx.ModelProto:
    """The model proto without its external data, with clear errors for missing, foreign or unsafe files."""
    origin = str(path)
    if not path.exists():
        raise ModelLoadError(f"model file not found: {origin}")
    if path.is_dir():
        raise ModelLoadError(f"{origin} is a directory, not an .onnx file (a bundle directory is used by the runtime, not the exporter)")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError or RuntimeWarning-like errors on garbage
        raise ModelLoadError(
            f"{origin} is not a readable ONNX model (truncated, or another format): {type(exc).__name__}: {exc}"
        ) from None
    if len(model.graph.node) == 0 or len(model.graph.output) == 0:
        raise ModelLoadError(f"{origin} parsed as ONNX but holds no graph (truncated, or not an ONNX model)")
    _check_external_data_paths(model, path.parent, origin)
    _check_valid(path, origin, model)
    return model


def _check_valid(path: Path, origin: str, model: onnx.ModelProto) -> None:
    """onnx.checker on the file (by path: external data and models over 2 GB are fine): a node with the wrong number
    of inputs, mismatched element types or an unknown standard op is a ModelLoadError here, not an ONNX Runtime
    traceback later (found by fuzz/onnx_export_fuzz.py). Ops of custom domains are not checked by it. An opset
    newer than this onnx release knows (fuzzing's opset 99) is refused by name."""
    newest = onnx.defs.onnx_opset_version()
    declared = [entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")]
    if declared and declared[0] > newest:
        raise ModelLoadError(f"{origin} declares ai.onnx opset {declared[0]}, newer than any this onnx {onnx.__version__} "
                             f"knows ({newest}); re-export the model with opset {newest} or older")
    try:
        onnx.checker.check_model(str(path), full_check=True)  # full: strict type and shape inference too
    except Exception as exc:  # ValidationError, or protobuf's errors on what the first parse let through
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"{origin} is not a valid ONNX model: {reason}") from None


def _external_data_files(model: onnx.ModelProto) -> list[str]:
    """The external data files the model's tensors refer to, each once, in the order they are first used."""
    locations: list[str] = []
    for tensor in onnx.external_data_helper._get_all_tensors(model):  # noqa: SLF001 (see _check_external_data_paths)
        if tensor.data_location == TensorProto.EXTERNAL:
            location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
            if location not in locations:
                locations.append(location)
    return locations


def _fingerprint(path: Path, model: onnx.ModelProto) -> str:
    """SHA-256 of the .onnx file, combined with that of every external data file it uses: new weights saved
    beside an unchanged graph file are a new model (the export cache must not serve the old bundle)."""
    own = file_sha256(path)
    locations = _external_data_files(model)
    if not locations:
        return own
    digest = hashlib.sha256(own.encode())
    for location in locations:
        digest.update(f"|{location}|{file_sha256(path.parent / location)}".encode())
    return digest.hexdigest()


def onnx_fingerprint(path: str | os.PathLike) -> str:
    """The fingerprint `load_onnx` records for an ONNX file (its bytes and its external data), without loading it."""
    path = Path(path)
    return _fingerprint(path, _read_graph(path))


def load_onnx(path: str | os.PathLike) -> SourceModel:
    """Read an ONNX file with clear errors for missing, truncated, foreign or unsafe files."""
    path = Path(path)
    origin = str(path)
    model = _read_graph(path)
    digest = _fingerprint(path, model)
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except Exception as exc:
        raise ModelLoadError(f"{origin}: could not read its external data: {exc}") from None
    return SourceModel(model=model, sha256=digest, origin=origin)


def model_opset(model: onnx.ModelProto) -> int:
    """The default-domain opset version the model declares."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise ModelLoadError("the model declares no default-domain (ai.onnx) opset")


def upgrade_opset(model: onnx.ModelProto, origin: str) -> onnx.ModelProto:
    """Convert models older than opset 17 so every gradient rule sees one set of op semantics."""
    if model_opset(model) >= MIN_OPSET:
        return model
    try:
        from onnx import version_converter

        return version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:
        raise ModelLoadError(
            f"{origin}: opset {model_opset(model)} could not be converted to opset {MIN_OPSET} ({exc}); "
            f"re-export the model with opset {MIN_OPSET} or newer"
        ) from None

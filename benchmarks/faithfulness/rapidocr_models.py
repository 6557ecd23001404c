"""Where the real third-party ONNX graphs of rapidocr-onnxruntime 1.4.4 are on this machine, checked by hash.

rapidocr-onnxruntime ships PaddleOCR's text-orientation classifier (`ch_ppocr_mobile_v2.0_cls_infer.onnx`) and its
PP-OCRv4 DBNet text detector (`ch_PP-OCRv4_det_infer.onnx`) inside its wheel. It is not a dependency of fusioncam:
it requires `opencv-python`, which installs the same `cv2` module as the `opencv-python-headless` fusioncam's
environment has, so installing it with its dependencies would replace one OpenCV build by another. The graphs are
read instead from

1. an installed `rapidocr_onnxruntime` package (found without importing it, so without OpenCV), e.g. after
   `pip install --no-deps rapidocr-onnxruntime==1.4.4`; or
2. the wheel itself in `RAPIDOCR_WHEEL_DIR` (default `~/.cache/fusioncam/rapidocr`, or `$FUSIONCAM_RAPIDOCR_DIR`),
   put there by `pip download --no-deps rapidocr-onnxruntime==1.4.4 -d ~/.cache/fusioncam/rapidocr`; the two
   graphs are extracted next to it (atomically) on first use.

Either way the file's SHA-256 must be the one the 1.4.4 wheel ships, so every result names exactly which graph it is.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import zipfile
from pathlib import Path

from fusioncam.atomic import write_bytes_atomic

VERSION = "1.4.4"
WHEEL_NAME = f"rapidocr_onnxruntime-{VERSION}-py3-none-any.whl"
CLASSIFIER = "ch_ppocr_mobile_v2.0_cls_infer.onnx"
DETECTOR = "ch_PP-OCRv4_det_infer.onnx"
SHA256 = {
    CLASSIFIER: "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
    DETECTOR: "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
}
RAPIDOCR_WHEEL_DIR = Path(os.environ.get("FUSIONCAM_RAPIDOCR_DIR", Path.home() / ".cache" / "fusioncam" / "rapidocr"))
INSTALL_COMMAND = f"pip download --no-deps rapidocr-onnxruntime=={VERSION} -d {RAPIDOCR_WHEEL_DIR}"


class ModelsMissing(FileNotFoundError):
    """The shipped graphs are neither installed nor downloaded; the message gives the command that fetches them."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _installed_models() -> Path | None:
    """The `models` folder of an installed rapidocr_onnxruntime package, found without importing it."""
    try:
        spec = importlib.util.find_spec("rapidocr_onnxruntime")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def _from_wheel(name: str) -> Path | None:
    """`name` extracted from the downloaded wheel into RAPIDOCR_WHEEL_DIR/<version>/ (once), or None."""
    wheel = RAPIDOCR_WHEEL_DIR / WHEEL_NAME
    if not wheel.is_file():
        return None
    out = RAPIDOCR_WHEEL_DIR / VERSION / name
    if not out.is_file():
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(f"rapidocr_onnxruntime/models/{name}")
        out.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(out, data)
    return out


def model_path(name: str) -> Path:
    """The shipped `name` (CLASSIFIER or DETECTOR), installed or from the downloaded wheel, with its hash checked."""
    if name not in SHA256:
        raise ValueError(f"unknown rapidocr graph {name!r}; known: {', '.join(SHA256)}")
    installed = _installed_models()
    candidates = [installed / name] if installed is not None else []
    for path in [*candidates, None]:
        path = path if path is not None else _from_wheel(name)
        if path is None or not path.is_file():
            continue
        digest = _sha256(path)
        if digest != SHA256[name]:
            raise ModelsMissing(f"{path} has SHA-256 {digest}, not the {name} that rapidocr-onnxruntime {VERSION} "
                                f"ships ({SHA256[name]}); remove it and run: {INSTALL_COMMAND}")
        return path
    raise ModelsMissing(f"{name} (rapidocr-onnxruntime {VERSION}) is neither installed nor downloaded; "
                        f"run: {INSTALL_COMMAND}")


__all__ = ["CLASSIFIER", "DETECTOR", "INSTALL_COMMAND", "ModelsMissing", "SHA256", "model_path"]

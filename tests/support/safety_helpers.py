"""Shared by the data-safety tests: a tiny exported bundle, small image files, and snapshots of folders."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

import fusioncam
from tests.support.tiny_models import save, tiny_classifier

SIZE = 16
CLASS_NAMES = ["zero", "one", "two", "three", "four"]


def tiny_onnx(folder: Path, seed: int = 4, classes: int = len(CLASS_NAMES)) -> Path:
    """A tiny ONNX classifier (Conv -> Relu 'feat' -> GAP -> Gemm) saved as folder/tiny.onnx."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(save(tiny_classifier(size=SIZE, classes=classes, seed=seed), folder / "tiny.onnx"))


def tiny_bundle(folder: Path, seed: int = 4) -> Path:
    """tiny_onnx exported at 'feat' into folder/tiny.bundle."""
    model = tiny_onnx(folder, seed)
    fusioncam.export_onnx(model, folder / "tiny.bundle", "feat", class_names=CLASS_NAMES)
    return folder / "tiny.bundle"


def write_images(folder: Path, names: list[str], seed: int = 0) -> list[Path]:
    """Small random colour images under the given file names (format from the extension)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for name in names:
        path = folder / name
        assert cv2.imwrite(str(path), rng.integers(0, 256, (20 + len(paths), 24, 3), dtype=np.uint8))
        paths.append(path)
    return paths


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `folder` (relative path -> (bytes, mtime_ns)); compared before and after a refused run."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    """Temporary or staging names fusioncam could leave behind: *.tmp, *.partial, *.old, .write-probe.*"""
    return sorted(p.name for p in Path(folder).rglob("*")
                  if p.name.endswith((".tmp", ".partial", ".old", ".damaged")) or p.name.startswith(".write-probe."))


def one_error_line(err: str, command: str) -> str:
    """The CLI's error: its last stderr line starts with 'fusioncam COMMAND: error:' and there is no traceback."""
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"fusioncam {command}: error:"), err
    return last


def env_without_gpu() -> dict[str, str]:
    """The environment for a CLI subprocess (no GPU probing surprises)."""
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env

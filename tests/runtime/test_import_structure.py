"""The package's layers import downwards only: the runtime never imports the metrics, the exporter or the
application layers; the metrics import the runtime (its scorer) and the task modules, never the reverse; the task
modules stand between them and import neither the exporter nor the application layers. Read from the sources
(every import, also those inside functions), so a loop cannot come back unnoticed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fusioncam

PACKAGE = Path(fusioncam.__file__).resolve().parent
TASK_CORE = ("__init__.py", "classification.py", "segmentation.py", "segmentation_regions.py")


def imported_packages(path: Path) -> set[str]:
    """The fusioncam subpackages (or top-level modules) a module imports: 'metrics', 'export', 'graph_names', ..."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts  # ('fusioncam', 'runtime', 'scorer')
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(parts[: len(parts) - node.level])
                target = base + (node.module.split(".") if node.module else [])
                names = [target] if node.module else [target + [alias.name] for alias in node.names]
            else:
                names = [node.module.split(".")] if node.module else []
        elif isinstance(node, ast.Import):
            names = [alias.name.split(".") for alias in node.names]
        else:
            continue
        found |= {name[1] for name in names if len(name) > 1 and name[0] == "fusioncam"}
    return found


def modules(folder: str, names=None) -> list[Path]:
    paths = sorted((PACKAGE / folder).rglob("*.py"))
    return [path for path in paths if names is None or path.name in names]


@pytest.mark.parametrize("folder,forbidden,names", [
    ("runtime", {"metrics", "export", "serve", "dataset", "cli", "report"}, None),
    ("tasks", {"metrics", "export", "serve", "dataset", "cli", "report"}, TASK_CORE),
    ("metrics", {"export", "serve", "dataset", "cli", "report"}, None),
])
def test_layers_import_downwards(folder, forbidden, names) -> None:
    offenders = {f"{path.relative_to(PACKAGE)} imports {sorted(imported_packages(path) & forbidden)}"
                 for path in modules(folder, names) if imported_packages(path) & forbidden}
    assert offenders == set()


def test_the_checker_sees_relative_imports() -> None:
    assert "kernels" in imported_packages(PACKAGE / "runtime" / "scorer.py")  # `from ..kernels import ...`
    assert "tasks" in imported_packages(PACKAGE / "runtime" / "explainer.py")
    assert "runtime" in imported_packages(PACKAGE / "metrics" / "confidence.py")

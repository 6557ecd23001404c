"""The kernels folder's public functions read from source: each *_numpy.py / *_cuda.py pair must match."""

from __future__ import annotations

import ast
from pathlib import Path


KERNELS_DIR = Path(__file__).resolve().parents[2] / "fusioncam" / "kernels"


def public_functions(path: Path) -> dict[str, tuple]:
    """(arguments, docstring) of each name in the module's __all__, defined there or imported from a sibling module
    (array_math's shared kernels)."""
    tree = ast.parse(path.read_text())
    exported = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets)
    )
    found = {name: entry for name, entry in defined_functions(path).items() if name in exported}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fusioncam.kernels."):
            sibling = defined_functions(path.with_name(node.module.rsplit(".", 1)[1] + ".py"))
            found.update({a.asname or a.name: sibling[a.name] for a in node.names if (a.asname or a.name) in exported})
    assert set(found) == set(exported)
    return found


def defined_functions(path: Path) -> dict[str, tuple]:
    """(arguments, docstring) of each top-level function defined in the module at path."""
    found = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef):
            args = node.args
            signature = (
                [a.arg for a in args.args],
                [ast.dump(d) for d in args.defaults],
                args.vararg and args.vararg.arg,
                [a.arg for a in args.kwonlyargs],
            )
            found[node.name] = (signature, ast.get_docstring(node))
    return found

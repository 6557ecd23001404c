"""The explicit interfaces: Backend and KernelSet protocols, and the graph names export and runtime share."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import onnx
import pytest
import torch

import fusioncam
from fusioncam import graph_names
from fusioncam.kernels import KERNEL_NAMES, KernelSet, numpy_kernels
from fusioncam.runtime.backend import Backend
from fusioncam.runtime.cpu_backend import CpuBackend
from fusioncam.runtime.cuda_backend import CudaBackend

PACKAGE = Path(fusioncam.__file__).resolve().parent
BENCHMARKS = PACKAGE.parent / "benchmarks"
BACKEND_MODULES = {"backend.py", "cpu_backend.py", "cuda_backend.py"}


def classifier_sources(folder: Path) -> list[Path]:
    """The modules of a folder, less the segmentation ones (their backend extends the protocol with its own members)."""
    return [path for path in folder.rglob("*.py") if not path.name.startswith("segmentation")]


def protocol_members(protocol) -> set[str]:
    """The methods and annotated attributes a Protocol class declares itself."""
    methods = {name for name, value in vars(protocol).items() if callable(value) and not name.startswith("_")}
    return methods | set(vars(protocol).get("__annotations__", {}))


def backend_uses() -> set[str]:
    """Every `backend.<member>` that the package (outside the backends themselves) and the benchmarks read."""
    sources = [path for path in classifier_sources(PACKAGE) if path.name not in BACKEND_MODULES]
    sources += list(BENCHMARKS.glob("*.py"))
    return {match for path in sources for match in re.findall(r"\bbackend\.(?!py\b)([a-z_]+)", path.read_text())}


def test_backend_protocol_has_exactly_the_members_the_callers_use():
    assert protocol_members(Backend) == backend_uses()


@pytest.mark.parametrize("backend_class", [CpuBackend, CudaBackend])
def test_both_backends_define_every_protocol_member(backend_class):
    source = inspect.getsource(backend_class)
    for name in protocol_members(Backend):
        defined = callable(getattr(backend_class, name, None)) or hasattr(backend_class, name) \
            or re.search(rf"self\.{name}\b[^=\n]*=", source) is not None
        assert defined, f"{backend_class.__name__} lacks {name}"
        if callable(getattr(Backend, name, None)):  # same parameter names as the protocol's method
            want = list(inspect.signature(getattr(Backend, name)).parameters)
            assert list(inspect.signature(getattr(backend_class, name)).parameters) == want, name


def test_cpu_backend_is_a_backend(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3))
    fusioncam.export_torch(model.eval(), "1", tmp_path / "b.fcam", input_size=(16, 16))
    with fusioncam.Explainer(tmp_path / "b.fcam", device="cpu", batch_size=4) as explainer:
        assert isinstance(explainer.backend, Backend)


def test_kernel_set_protocol_matches_every_numpy_kernel_signature():
    assert isinstance(numpy_kernels, KernelSet)
    assert set(vars(numpy_kernels)) == set(KERNEL_NAMES)
    for name in KERNEL_NAMES:
        declared = inspect.signature(getattr(KernelSet, name)).parameters
        implemented = inspect.signature(getattr(numpy_kernels, name)).parameters
        assert [(p.name, p.kind, p.default) for p in list(declared.values())[1:]] == \
            [(p.name, p.kind, p.default) for p in implemented.values()], name


def test_bundle_graphs_use_the_shared_names(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3))
    bundle = fusioncam.export_torch(model.eval(), "1", tmp_path / "b.fcam", input_size=(16, 16))
    path = Path(getattr(bundle, "path", tmp_path / "b.fcam"))
    explain = onnx.load(str(path / "explain.onnx"), load_external_data=False).graph
    scorer = onnx.load(str(path / "scorer.onnx"), load_external_data=False).graph
    assert tuple(i.name for i in explain.input) == graph_names.EXPLAIN_INPUTS
    assert tuple(o.name for o in explain.output) == graph_names.EXPLAIN_OUTPUTS
    assert tuple(i.name for i in scorer.input) == graph_names.SCORER_INPUTS
    assert tuple(o.name for o in scorer.output) == graph_names.SCORER_OUTPUTS


def test_graph_names_are_spelled_once():
    """The runtime, the metrics and the classifier export read the names from graph_names, never spell them."""
    pattern = re.compile(r"""(\{|\[|\(|, )\s*["'](input|target|logits|activations|gradients|target_used)["']\s*(:|\]|,)""")
    sources = [*classifier_sources(PACKAGE / "runtime"), *classifier_sources(PACKAGE / "metrics"),
               *(PACKAGE / "export" / name for name in ("explain_graph.py", "bundle_builder.py", "torch_export.py"))]
    offenders = [f"{path.relative_to(PACKAGE)}:{text.count(chr(10), 0, match.start()) + 1}"
                 for path in sources for text in [path.read_text()] for match in pattern.finditer(text)]
    assert offenders == []

"""The explicit interfaces: the Backend, Task and KernelSet protocols, and the graph names export and runtime share.

Every task runs on every backend: the CPU ones here, the CUDA ones (marked gpu) where a GPU is there."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import fusioncam
from fusioncam import graph_names
from fusioncam.kernels import KERNEL_NAMES, KernelSet, numpy_kernels
from fusioncam.runtime.backend import Backend
from fusioncam.runtime.cpu_backend import CpuBackend
from fusioncam.runtime.cuda_backend import CudaBackend
from fusioncam.tasks import TASKS, Task, TensorSpec, task_for

PACKAGE = Path(fusioncam.__file__).resolve().parent
BENCHMARKS = PACKAGE.parent / "benchmarks"
BACKEND_MODULES = {"backend.py", "cpu_backend.py", "cuda_backend.py"}


def classifier_sources(folder: Path) -> list[Path]:
    """The modules of a folder (every task's: no module extends the protocol for one task)."""
    return list(folder.rglob("*.py"))


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


@pytest.fixture(scope="module")
def task_bundles(tmp_path_factory) -> dict[str, Path]:
    """A small bundle of every task: a classifier, a segmentation model and a detector."""
    from fusioncam.export.detection_export import export_onnx_detection
    from tests.support.detection_models import TwoRegionDetector
    from tests.support.segmentation_models import QuadrantNet

    folder = tmp_path_factory.mktemp("task_bundles")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3))
    fusioncam.export_torch(model.eval(), "1", folder / "classification.fcam", input_size=(16, 16))
    fusioncam.export_torch(QuadrantNet(size=16).eval(), "target", folder / "segmentation.fcam", input_size=(16, 16))
    torch.onnx.export(TwoRegionDetector(size=16).eval(), torch.zeros(1, 3, 16, 16), str(folder / "detector.onnx"),
                      input_names=["images"], dynamic_axes={"images": {0: "batch"}}, dynamo=False)
    export_onnx_detection(folder / "detector.onnx", folder / "detection.fcam", "/relu/Relu_output_0", layout="yolov8")
    return {"classification": folder / "classification.fcam", "segmentation": folder / "segmentation.fcam",
            "detection": folder / "detection.fcam"}


# what each task's test call explains: class 1 (over the whole image), or a detector's anchor 1 (class 0)
TASK_CALLS = {"classification": {"targets": [1, 1]}, "segmentation": {"targets": [1, 1], "regions": "all"},
              "detection": {"instances": [[1], [1]]}}


def test_every_registered_task_is_a_task():
    for name in TASKS:
        task = task_for(name)
        assert isinstance(task, Task) and task.name == name
    with pytest.raises(fusioncam.errors.BundleError, match="keypoints.*classification, segmentation, detection"):
        task_for("keypoints")


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("task_name", list(TASKS))
def test_every_task_runs_on_every_backend_as_its_specs_say(task_bundles, task_name, device):
    """The backend of each device is a Backend for every task; its explain pass and scorer runs take exactly the
    task's inputs and return exactly the outputs the task's specs describe (the CUDA backend allocates by them)."""
    with fusioncam.Explainer(task_bundles[task_name], device=device, batch_size=4) as explainer:
        backend, task, manifest = explainer.backend, explainer.task, explainer.bundle.manifest
        assert isinstance(backend, Backend) and task.name == task_name
        images = np.random.default_rng(0).random((2, 3, 16, 16)).astype(np.float32)
        with explainer.scorer.in_use("test") as scorer:
            call = TASK_CALLS[task_name]
            feed = task.explain_feed(manifest, 2, call.get("targets"), call.get("regions"), manifest.class_names)
            assert tuple(feed) == task.explain_inputs
            if "instances" in call:  # a task with several rows per image: its rows for these instances
                _, feed, _ = task.explained_rows(scorer, backend.asarray(images), feed, call["instances"],
                                                 ["a", "b"], manifest, manifest.class_names)
            graph = backend.explain(backend.asarray(images), {k: backend.asarray(v) for k, v in feed.items()})
            specs = task.explain_output_specs(manifest)
            assert tuple(graph) == task.explain_outputs == tuple(specs)
            for name, array in graph.items():
                assert _matches(array, 2, specs[name]), name
            targets = task.image_targets(graph)
            rows = targets[backend.asarray(np.array([1, 0, 1], dtype=np.int64))]
            row_feed = task.row_feed(rows)
            row_specs = task.row_input_specs(manifest)
            assert tuple(row_feed) == task.row_inputs == tuple(row_specs)
            for name, array in row_feed.items():
                assert _matches(array, 3, row_specs[name]), name
            backend.input_buffer()[:3] = backend.asarray(images[[1, 0, 1]])
            outputs = backend.score_rows(3, row_feed)
            assert tuple(outputs.shape) == (3, *task.scorer_output_shape(manifest))
            # the rows of one image score the same; its row probability is the explain pass's own
            got = scorer.to_host(task.row_probabilities(scorer.xp, outputs, rows))
            assert got[0] == pytest.approx(got[2], abs=1e-6)
            explanation = explainer.explain(images, methods="gradcam", **call)
            assert got[:2] == pytest.approx(explanation.probabilities[[1, 0]], abs=1e-5)
            facts = task.image_facts(explanation, 1)  # what encodings read
            assert facts["class"] == (0 if task_name == "detection" else 1) and facts["probability"] == float(explanation.probabilities[1])
            assert facts["class_name"] == explanation.class_name(1)
            assert not hasattr(backend, "score")  # no member beyond the protocol (nor one that raises) for any task


def _matches(array, rows: int, spec: TensorSpec) -> bool:
    """An array of `rows` rows of the spec's per-row shape and kind."""
    kind = "f" if spec.dtype == "float" else "i"
    return tuple(array.shape) == (rows, *spec.shape) and array.dtype.kind == kind


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
               *(PACKAGE / "tasks" / name for name in ("__init__.py", "classification.py", "segmentation.py")),
               *(PACKAGE / "export" / name for name in ("explain_graph.py", "bundle_builder.py", "torch_export.py"))]
    offenders = [f"{path.relative_to(PACKAGE)}:{text.count(chr(10), 0, match.start()) + 1}"
                 for path in sources for text in [path.read_text()] for match in pattern.finditer(text)]
    assert offenders == []


def test_runtime_has_no_task_branches():
    """The runtime asks the bundle's Task; no condition in it names a task (a new task changes no runtime file)."""
    import ast

    words = re.compile(r"segmentation|classification|detection|task\.name|manifest\.task")
    offenders = []
    for path in sorted((PACKAGE / "runtime").rglob("*.py")):
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.If, ast.IfExp, ast.While, ast.Assert)) and \
                    words.search(ast.get_source_segment(text, node.test) or ""):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []

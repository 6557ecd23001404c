"""The CUDA backend's own logic, run without a GPU: its buffers allocated by the task's specs, the rows' extra
inputs copied into bound row buffers, scorer runs padded to powers of two with cached bindings, warm-up and close,
for every task. Only what needs the device is replaced: CuPy by NumPy (devices and streams as no-op contexts), the
ORT CUDA sessions by CPU sessions that run an IO binding's arrays, the CuPy kernels by the NumPy kernels (their
CUDA sources are compiled by tests/kernels/test_cuda_sources_compile.py; the GPU tests run the real thing). The
maps must equal the CPU backend's."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

import fusioncam
from fusioncam.kernels import numpy_kernels
from fusioncam.runtime import cuda_backend
from fusioncam.runtime.cpu_backend import cpu_session
from fusioncam.errors import InputError
from fusioncam.runtime.methods import METHODS, methods_for_task
from fusioncam.runtime.stage_clock import HostClock


class _Context:
    def __init__(self, *args, **kwargs) -> None:
        self.ptr = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> bool:
        return False

    def synchronize(self) -> None:
        pass


def _host_cupy() -> types.ModuleType:
    """NumPy dressed as the parts of CuPy the backend touches."""
    module = types.ModuleType("cupy")
    module.__dict__.update({name: getattr(np, name) for name in dir(np) if not name.startswith("_")})
    module.cuda = types.SimpleNamespace(Device=_Context, Stream=_Context)
    module.asnumpy = lambda array, stream=None: np.asarray(array)
    module.get_default_memory_pool = lambda: types.SimpleNamespace(free_all_blocks=lambda: None)
    return module


class _Binding:
    def __init__(self) -> None:
        self.inputs: dict = {}
        self.outputs: dict = {}


class _HostSession:
    """An ORT CPU session that runs IO bindings: the bound arrays (views of the backend's buffers) in, the bound
    output arrays written in place, as the CUDA provider writes device memory."""

    def __init__(self, path) -> None:
        self.session = cpu_session(path)
        self.runs: list[dict[str, tuple]] = []

    def io_binding(self) -> _Binding:
        return _Binding()

    def run_with_iobinding(self, binding: _Binding, run_options) -> None:
        self.runs.append({name: tuple(array.shape) for name, array in binding.inputs.items()})
        names = list(binding.outputs)
        for name, value in zip(names, self.session.run(names, dict(binding.inputs))):
            binding.outputs[name][...] = value


def _bind(self, session, inputs: dict, outputs: dict) -> _Binding:
    binding = session.io_binding()
    binding.inputs.update(inputs)
    binding.outputs.update(outputs)
    return binding


@pytest.fixture
def host_cuda(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _host_cupy())
    monkeypatch.setattr(cuda_backend, "cuda_session", lambda ort, path, options, provider: _HostSession(path))
    monkeypatch.setattr(cuda_backend, "cuda_kernels", lambda: numpy_kernels)
    monkeypatch.setattr(cuda_backend.CudaBackend, "_bind", _bind)
    monkeypatch.setattr(cuda_backend.CudaBackend, "clock", lambda self: HostClock())


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, object]:
    from tests.support.segmentation_models import QuadrantNet

    folder = tmp_path_factory.mktemp("host_cuda")
    torch.manual_seed(4)
    classifier = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                     torch.nn.Flatten(), torch.nn.Linear(6, 3)).eval()
    return {"classification": fusioncam.export_torch(classifier, "1", folder / "c.fcam", input_size=(16, 16),
                                                     fp16_scorer=True),
            "segmentation": fusioncam.export_torch(QuadrantNet(size=16).eval(), "target", folder / "s.fcam",
                                                   input_size=(16, 16), fp16_scorer=True)}


def _explain(explainer, task: str, methods: tuple[str, ...] | None = None):
    images = np.abs(np.random.default_rng(2).standard_normal((3, 3, 16, 16))).astype(np.float32) + 0.1
    regions = None if task == "classification" else ["all", (0, 0, 8, 8), "all"]
    return explainer.explain(images, targets=[1, 0, 1], regions=regions,
                             methods=methods or methods_for_task(task))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_cuda_backend_logic_gives_the_cpu_maps(bundles, host_cuda, task, precision) -> None:
    with fusioncam.Explainer(bundles[task], device="cpu", batch_size=64, precision=precision) as cpu:
        want = _explain(cpu, task)
    with fusioncam.Explainer(bundles[task], device="cpu", batch_size=20, precision=precision) as explainer:
        backend = cuda_backend.CudaBackend(explainer.bundle, explainer.task, 20, fp16=precision == "fp16")
        explainer.scorer.backend.close()
        explainer.backend = explainer.scorer.backend = backend
        with explainer.scorer.in_use("test") as scorer:
            explainer._z0_constant = explainer.task.constant_baseline(scorer)
        explainer.warm_up()
        got = _explain(explainer, task)
        scorer_runs = backend._scorer.runs
        assert backend._row_buffers.keys() == set(explainer.task.row_inputs)
    assert tuple(got.maps) == methods_for_task(task)
    for method in methods_for_task(task):
        np.testing.assert_allclose(got.maps[method], want.maps[method], atol=1e-5, err_msg=method)
    np.testing.assert_allclose(got.probabilities, want.probabilities, atol=1e-6)
    assert type(got) is type(want) and got.forwards_run.tolist() == want.forwards_run.tolist()
    # every scorer run had all of the task's row inputs, padded to the run's rows like the images
    assert all(set(run) == {"input", *explainer.task.row_inputs} for run in scorer_runs)
    assert all(len({shape[0] for shape in run.values()}) == 1 for run in scorer_runs)
    sizes = [next(iter(run.values()))[0] for run in scorer_runs]
    assert set(sizes) == {8, 16, 20}  # batch 20's padded run sizes: warm-up ran each, explain padded its remainders
    assert backend._row_buffers == {}  # closed


def test_methods_a_task_does_not_offer_are_a_clear_input_error(bundles) -> None:
    offered = methods_for_task("segmentation")
    refused = [method for method in METHODS if method not in offered]
    assert {"ablationcam", "reciprocam", "reciprocam-gaussian"} <= set(refused) and "finercam" in offered
    with fusioncam.Explainer(bundles["segmentation"], device="cpu") as explainer:
        for method in refused:
            with pytest.raises(InputError, match="graph.*; this bundle's task has none"):
                _explain(explainer, "segmentation", methods=(method,))

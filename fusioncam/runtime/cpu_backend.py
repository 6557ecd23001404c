"""ONNX Runtime on the CPU provider, all cores, NumPy buffers and the NumPy kernels."""

from __future__ import annotations

import contextlib
import os

import numpy as np

from ..bundle import Bundle
from ..cpu_quota import cpu_budget
from ..errors import BundleError, InputError
from ..graph_names import INPUT
from ..kernels import KernelSet, numpy_kernels
from .backend import EMPTY_INPUTS
from .batch_plan import row_ranges
from .several_layers import extra_output_names
from .stage_clock import HostClock


def zero_row_inputs(xp, specs, rows: int, float_dtype) -> dict:
    """Row inputs of zeros for `rows` rows (warm-up runs), by the task's row_input_specs."""
    return {name: xp.zeros((rows, *spec.shape), dtype=float_dtype if spec.dtype == "float" else xp.int64)
            for name, spec in specs.items()}



CPU_THREADS_ENV = "FUSIONCAM_CPU_THREADS"  # intra-op threads per session, for several explainers sharing one machine
# "0": ONNX Runtime's intra-op threads sleep between ops instead of spinning, leaving the cores to other threads of
# the process (fusioncam serve's request decoding; measured: half the server's CPU per request on 2 cores)
CPU_SPINNING_ENV = "FUSIONCAM_CPU_SPINNING"


def cpu_session_options(threads: int | None = None):
    """The ORT session options of cpu_session (threads, optimisation level, spinning), for graphs built in memory too."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    wanted = os.environ.get(CPU_THREADS_ENV, "").strip()
    options.intra_op_num_threads = threads or (int(wanted) if wanted.isdigit() and int(wanted) > 0 else 0) \
        or cpu_budget().cpus
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if os.environ.get(CPU_SPINNING_ENV, "").strip() == "0":
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def cpu_session(path, threads: int | None = None):
    """An ORT CPU session using every CPU this process may use for each op (Score-CAM batches are wide enough): the
    cgroup's CPU quota capped by the scheduler affinity (cpu_quota.py; a pod limited to 4 CPUs on a 64-core node gets
    4, not 64), or the $FUSIONCAM_CPU_THREADS cores (a positive integer) where several explainers share the machine."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), sess_options=cpu_session_options(threads),
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # found by fuzz/bundle_fuzz.py: a replaced graph (hash recomputed) ORT cannot load
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BundleError(f"{path}: ONNX Runtime cannot load this bundle graph ({reason}); re-export the bundle") from None


class CpuBackend:
    """The Backend protocol on the CPU, for every task: the explain graph and the scorer; the scorer input buffer is
    allocated once. `task` (fusioncam/tasks/) names the graphs' outputs and the scorer's per-row inputs.

    With `fp16` the bundle's float16 scorer runs: its input buffer and float row inputs are float16 (the mask
    kernels write the buffer) and its output comes back as float32, before anything reduces it. With `int8` the
    bundle's INT8 scorer runs (float32 input and logits, integer convolutions inside), and the float32 scorer is
    opened beside it for the runs under `float32_scoring()` (z0, the methods' probes, the rescored channels:
    runtime/int8_sweep.py); `int8_rescore` is the number of channels per image the INT8 sweep rescores in float32."""

    xp = np
    kernels: KernelSet = numpy_kernels

    def __init__(self, bundle: Bundle, task, batch_size: int, fp16: bool = False, int8: bool = False,
                 int8_rescore: int = 0) -> None:
        size = bundle.manifest.input_size
        self.batch_size = batch_size
        self._explain_outputs = [*task.explain_outputs, *extra_output_names(bundle)]  # several target layers
        self._row_inputs = tuple(task.row_inputs)
        self._scorer_output = task.scorer_output
        self._row_specs = task.row_input_specs(bundle.manifest)
        self._explain = cpu_session(bundle.explain_path)
        self._scorer = cpu_session(bundle.scorer_int8_path if int8 else bundle.scorer_fp16_path if fp16
                                   else bundle.scorer_path)
        self._float32_scorer = cpu_session(bundle.scorer_path) if int8 else None
        self.int8_rescore: int | None = int(int8_rescore) if int8 else None  # None: no INT8 sweep
        self._input_dtype = np.float16 if fp16 else np.float32
        self._buffer = np.empty((batch_size, 3, *size), dtype=self._input_dtype)

    def context(self):
        """Nothing to make current on the CPU."""
        return contextlib.nullcontext()

    def explain(self, images: np.ndarray, inputs) -> dict[str, np.ndarray]:
        """One pass with the task's target inputs: the task's explain outputs (class scores, activations, gradients
        of the explained score, the targets used, ...)."""
        outputs = self._explain.run(self._explain_outputs, {INPUT: images, **inputs})
        return dict(zip(self._explain_outputs, outputs))

    @contextlib.contextmanager
    def float32_scoring(self):
        """Within the block score_rows runs the float32 scorer where this backend runs the INT8 one."""
        if self._float32_scorer is None:
            yield
            return
        int8, self._scorer = self._scorer, self._float32_scorer
        try:
            yield
        finally:
            self._scorer = int8

    def input_buffer(self) -> np.ndarray:
        """The scorer's [batch_size,3,H,W] input buffer that the mask kernels write into."""
        return self._buffer

    def batch_ranges(self, total: int) -> list[tuple[int, int]]:
        """(start, stop) of the scorer runs for `total` rows: full batches and one exact remainder."""
        return row_ranges(total, self.batch_size, padded=False)

    def score_rows(self, count: int, inputs=EMPTY_INPUTS) -> np.ndarray:
        """The scorer's output (logits, or a score per row) for the first `count` rows of the input buffer, each row
        with its `inputs` (the CPU runs no padding rows); float row inputs are cast to the scorer's float type."""
        feed = {INPUT: self._buffer[:count]}
        for name in self._row_inputs:
            value = inputs.get(name)
            if value is None:
                raise InputError(f"the scorer of this bundle needs the row input '{name}' for every row (the task's "
                                 f"row_inputs: {', '.join(self._row_inputs)}); none was given")
            floating = np.asarray(value).dtype.kind == "f"
            feed[name] = np.ascontiguousarray(value, self._input_dtype if floating else None)
        return self._scorer.run([self._scorer_output], feed)[0].astype(np.float32, copy=False)

    def warm_up(self) -> None:
        """One full scorer batch of zeros, zero row inputs too (ONNX Runtime sizes its CPU buffers on the first run;
        no per-shape search here). With an INT8 scorer the float32 one it keeps beside it (z0, the probes, the
        rescored channels) runs that batch too."""
        self._buffer[:] = 0
        rows = zero_row_inputs(np, self._row_specs, self.batch_size, self._input_dtype)
        self.score_rows(self.batch_size, rows)
        if self._float32_scorer is not None:
            with self.float32_scoring():
                self.score_rows(self.batch_size, rows)

    def asarray(self, array) -> np.ndarray:
        """Already on the host: the array itself (no copy when it is one)."""
        return np.asarray(array)

    def to_host(self, array) -> np.ndarray:
        """Already on the host: the array itself (no copy when it is one)."""
        return np.asarray(array)

    def clock(self) -> HostClock:
        """perf_counter intervals per stage."""
        return HostClock()

    def close(self) -> None:
        """Drop the two ONNX Runtime sessions and the scorer buffer (ONNX Runtime frees a session's memory when
        its last reference goes); the backend is unusable afterwards."""
        self._explain = self._scorer = self._float32_scorer = self._buffer = None

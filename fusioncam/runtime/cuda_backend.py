"""ONNX Runtime on the CUDA provider with IO binding of CuPy buffers, sharing one CUDA stream with CuPy."""

from __future__ import annotations

import contextlib

import numpy as np

from ..bundle import Bundle
from ..errors import DeviceError, InputError
from ..graph_names import INPUT
from ..kernels import KernelSet, cuda_kernels
from .backend import EMPTY_INPUTS
from .batch_plan import padded_rows, padded_run_sizes, row_ranges
from .cpu_backend import zero_row_inputs
from .several_layers import extra_output_names, extra_output_specs
from .stage_clock import CudaEventClock



def cuda_session(ort, path, options, provider: tuple[str, dict]):
    """An ORT session on the CUDA provider; options ORT refuses become a DeviceError naming them."""
    problem = None
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=[provider])
        if session.get_providers()[0] != "CUDAExecutionProvider":  # ORT may fall back to the CPU with a warning
            problem = f"it fell back to {session.get_providers()}"
    except Exception as exc:  # ORT raises plain RuntimeError/Fail for bad provider options
        problem = str(exc)
    if problem is not None:
        raise DeviceError(f"ONNX Runtime could not start the CUDA provider for {path} with options "
                          f"{provider[1]}: {problem}. Check the cuda_options keys and values (ONNX Runtime's CUDA "
                          f"execution provider documentation lists them).")
    return session


class CudaBackend:
    """The Backend protocol on one GPU, for every task: explain graph and scorer; every array stays on the device
    until the final maps. `task` (fusioncam/tasks/) names and shapes the graphs' outputs and the scorer's per-row
    inputs, which live in bound device buffers of batch_size rows like the image buffer.

    With `fp16` the bundle's float16 scorer runs on float16 input, row-input and output buffers; its output is cast
    to float32 before anything reduces it."""

    def __init__(self, bundle: Bundle, task, batch_size: int, device_index: int = 0, tf32: bool = False,
                 fp16: bool = False, provider_options: dict | None = None) -> None:
        import cupy
        import onnxruntime as ort

        self.xp = cupy
        self.kernels: KernelSet = cuda_kernels()
        self.device_index = device_index
        self.batch_size = batch_size
        manifest = bundle.manifest
        self._explain_specs = {**task.explain_output_specs(manifest), **extra_output_specs(bundle)}
        self._explain_outputs = (*task.explain_outputs, *extra_output_names(bundle))  # several target layers
        self._row_specs = task.row_input_specs(manifest)
        self._scorer_output = task.scorer_output
        self._device = cupy.cuda.Device(device_index)
        with self._device:
            self.stream = cupy.cuda.Stream(non_blocking=True)
            provider = ("CUDAExecutionProvider", {
                "device_id": str(device_index),
                "user_compute_stream": str(self.stream.ptr),
                "has_user_compute_stream": "1",
                "cudnn_conv_algo_search": "EXHAUSTIVE",
                "use_tf32": "1" if tf32 else "0",
                **(provider_options or {}),
            })
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self._explain = cuda_session(ort, bundle.explain_path, options, provider)
            scorer_path = bundle.scorer_fp16_path if fp16 else bundle.scorer_path
            self._scorer = cuda_session(ort, scorer_path, options, provider)
            self._run_options = ort.RunOptions()
            self._run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
            self._scorer_dtype = cupy.float16 if fp16 else cupy.float32
            self._buffer = cupy.zeros((batch_size, 3, *manifest.input_size), dtype=self._scorer_dtype)
            # the rows' extra inputs (padding rows keep stale but valid values), zeros at first
            self._row_buffers = zero_row_inputs(cupy, self._row_specs, batch_size, self._scorer_dtype)
            self._logits = cupy.empty((batch_size, *task.scorer_output_shape(manifest)), dtype=self._scorer_dtype)
            self._scorer_bindings: dict[int, object] = {}  # rows -> binding of the buffers' first rows

    def _bind(self, session, inputs: dict, outputs: dict):
        """An IO binding of CuPy arrays (device pointers) to a session's inputs and outputs."""
        binding = session.io_binding()
        for name, array in inputs.items():
            binding.bind_input(name, "cuda", self.device_index, array.dtype.type, tuple(array.shape), array.data.ptr)
        for name, array in outputs.items():
            binding.bind_output(name, "cuda", self.device_index, array.dtype.type, tuple(array.shape), array.data.ptr)
        return binding

    def context(self):
        """Make this GPU and stream current for CuPy work."""
        stack = contextlib.ExitStack()
        stack.enter_context(self._device)
        stack.enter_context(self.stream)
        return stack

    def explain(self, images, inputs) -> dict:
        """One pass of the explain graph on device buffers: the task's target inputs in, its outputs allocated here."""
        cupy = self.xp
        n = images.shape[0]
        feed = {INPUT: cupy.ascontiguousarray(images, dtype=cupy.float32)}
        for name, value in inputs.items():
            value = cupy.asarray(value)
            feed[name] = cupy.ascontiguousarray(value, dtype=cupy.float32 if value.dtype.kind == "f" else cupy.int64)
        outputs = {}
        for name in self._explain_outputs:
            spec = self._explain_specs[name]
            outputs[name] = cupy.empty((n, *spec.shape), dtype=cupy.float32 if spec.dtype == "float" else cupy.int64)
        binding = self._bind(self._explain, feed, outputs)
        self._explain.run_with_iobinding(binding, self._run_options)
        return outputs

    def input_buffer(self):
        """The scorer's fixed [batch_size,3,H,W] device buffer the mask kernel writes into."""
        return self._buffer

    def batch_ranges(self, total: int) -> list[tuple[int, int]]:
        """(start, stop) of the scorer runs for `total` rows: full batches, then power-of-two runs (batch_plan)."""
        return row_ranges(total, self.batch_size, padded=True)

    def score_rows(self, count: int, inputs=EMPTY_INPUTS):
        """Run the first padded_rows(count) rows of the buffer (padding rows are stale and ignored), each row with its
        `inputs` (copied into the bound row-input buffers); the scorer's output for the first `count` rows. Each
        run size has its own binding, made on first use."""
        for name, buffer in self._row_buffers.items():
            value = inputs.get(name)
            if value is None:
                raise InputError(f"the scorer of this bundle needs the row input '{name}' for every row (the task's "
                                 f"row_inputs: {', '.join(self._row_buffers)}); none was given")
            buffer[:count] = value
        rows = padded_rows(count, self.batch_size)
        binding = self._scorer_bindings.get(rows)
        if binding is None:
            feed = {INPUT: self._buffer[:rows], **{name: buffer[:rows] for name, buffer in self._row_buffers.items()}}
            binding = self._bind(self._scorer, feed, {self._scorer_output: self._logits[:rows]})
            self._scorer_bindings[rows] = binding
        self._scorer.run_with_iobinding(binding, self._run_options)
        return self._logits[:count].astype(self.xp.float32, copy=False)

    def warm_up(self) -> None:
        """Run the scorer once at every bound run size: cuDNN's algorithm search for each shape happens now, not
        inside the first explanations."""
        for rows in padded_run_sizes(self.batch_size):
            self.score_rows(rows, {name: buffer[:rows] for name, buffer in self._row_buffers.items()})
        self.stream.synchronize()

    def asarray(self, array):
        """Host or device array -> device array on this GPU."""
        return self.xp.asarray(array)

    def to_host(self, array) -> np.ndarray:
        """Device -> host copy, ordered after this stream's work."""
        return self.xp.asnumpy(array, stream=self.stream)

    def clock(self) -> CudaEventClock:
        return CudaEventClock(self.stream)

    def close(self) -> None:
        """Wait for this stream's work, then drop the sessions, their IO bindings and the device buffers, and return
        CuPy's now unused pool blocks to the driver; the backend is unusable afterwards."""
        with self._device:
            self.stream.synchronize()
            self._scorer_bindings.clear()
            self._explain = self._scorer = self._buffer = self._logits = None
            self._row_buffers = {}
            self.xp.get_default_memory_pool().free_all_blocks()

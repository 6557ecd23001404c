"""The fuzz harnesses (fuzz/): every input they found a crash with is fixed (regressions), and a short bounded run of
each finds nothing: only fusioncam's own errors come out of image decoding, bundle loading and ONNX export."""

from __future__ import annotations

import importlib.util
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fusioncam
from fusioncam.errors import ModelLoadError, InputError
from fusioncam.images import decode_rgb

needs_atheris = pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                                   reason="the fuzz harnesses need atheris (pip install -e '.[fuzz]')")

REPOSITORY = Path(__file__).resolve().parents[2]
REGRESSIONS = Path(__file__).resolve().parent / "regressions"
HARNESSES = ("images_fuzz", "bundle_fuzz", "onnx_export_fuzz")
FOLDERS = {"images_fuzz": "images", "bundle_fuzz": "bundle", "onnx_export_fuzz": "onnx_export"}


HARNESS_MEMORY_MB = 3072


def _rss_limit_mb() -> int:
    """libFuzzer's -rss_limit_mb for a child: 3 GB above this process's peak RSS. Linux carries a process's peak RSS
    across fork and exec (getrusage's ru_maxrss), so a child of a test process that has grown to 7 GB starts at 7 GB
    by libFuzzer's reckoning."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024 + HARNESS_MEMORY_MB


def _run_harness(harness: str, *arguments: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The harness under libFuzzer in a child process (its own memory limit, a bounded time)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPOSITORY / "fuzz" / f"{harness}.py"), f"-rss_limit_mb={_rss_limit_mb()}",
                           "-timeout=60", *arguments], capture_output=True, text=True, cwd=REPOSITORY, env=env,
                          timeout=timeout)


def test_png_whose_chunk_claims_gigabytes_is_refused_without_allocating():
    """A 247-byte PNG whose chunk declared 2.4 GB made OpenCV 5.0 allocate 2.4 GB (libFuzzer's out-of-memory)."""
    data = (REGRESSIONS / "images" / "png_chunk_oom.png").read_bytes()
    with pytest.raises(InputError, match=r"'fuzz.png' is corrupt: its PNG chunk b'IEND' at byte 45 declares "
                                         r"2451851666 bytes of data, but only 190 remain"):
        decode_rgb(data, "fuzz.png")


@pytest.mark.parametrize("name, words", [
    ("onnx_matmul_one_input.onnx", "is not a valid ONNX model: Node(flatten) with schema(::MatMul:13) has input size 1"),
    ("onnx_gemm_float16_bias.onnx", "is not a valid ONNX model: [ShapeInferenceError] (op_type:Gemm"),
    ("onnx_opset_99.onnx", "declares ai.onnx opset 99, newer than any this onnx"),
    ("onnx_negative_input_dim.onnx", "declares ai.onnx opset 99"),  # its mutations also reached opset 99
])
def test_invalid_onnx_models_found_by_fuzzing_are_model_load_errors(tmp_path, name, words):
    model = tmp_path / "model.onnx"
    shutil.copy(REGRESSIONS / "onnx_export" / name, model)
    with pytest.raises(ModelLoadError) as caught:
        fusioncam.export_onnx(model, tmp_path / "out.fcam")
    assert words in str(caught.value)
    assert not (tmp_path / "out.fcam").exists()


@pytest.mark.slow
@needs_atheris
@pytest.mark.parametrize("harness", HARNESSES)
def test_every_input_that_once_crashed_a_harness_now_passes_it(harness):
    files = sorted(str(p) for p in (REGRESSIONS / FOLDERS[harness]).iterdir())
    done = _run_harness(harness, *files)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stderr.count("Executed ") == len(files)


@pytest.mark.slow
@needs_atheris
@pytest.mark.parametrize("harness, runs", [("images_fuzz", 3000), ("bundle_fuzz", 150), ("onnx_export_fuzz", 100)])
def test_a_short_fuzzing_run_finds_nothing(harness, runs, tmp_path):
    """A few seconds of coverage-guided fuzzing from the harness's seeds: no exception but FusionCamError, no crash,
    no input over 3 GB of memory or 60 s."""
    done = _run_harness(harness, f"-runs={runs}", "-max_total_time=20", f"-artifact_prefix={tmp_path}/",
                        "-seed=1", str(tmp_path / "corpus"))
    log = done.stdout + done.stderr
    assert done.returncode == 0 and "Uncaught Python exception" not in log, log[-4000:]
    assert f"Done {runs} runs" in log or "Done " in log
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("oom-*"))


def test_a_negative_input_size_is_a_model_load_error(tmp_path):
    """The fuzzer's negative height reached NumPy as a ValueError ("negative dimensions are not allowed")."""
    from tests.support.tiny_models import save, tiny_classifier

    model = tiny_classifier()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = -3
    with pytest.raises(ModelLoadError, match=r"input 'x' \[N,3,-3,8\] declares a height/width below 1"):
        fusioncam.export_onnx(save(model, tmp_path / "m.onnx"), tmp_path / "out.fcam")

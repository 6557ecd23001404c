"""Every CUDA kernel source fusioncam ships compiles with NVRTC for sm_80 and sm_90, on a machine without a GPU.

The sources are read from fusioncam/kernels/*_cuda.py without importing CuPy and wrapped as CuPy wraps them
(tests/support/cuda_kernel_sources.py), so a syntax or type error in a kernel fails here, not on the rarely lent GPU.
The fast tests compile every kernel in its common launch layout (1-D contiguous arrays, 32-bit indices) with every
bound output dtype; the slow one adds the broadcast/strided layout with 64-bit indices.
"""

from __future__ import annotations

import multiprocessing
import re
import textwrap
from pathlib import Path

import pytest

from tests.support.cuda_kernel_sources import (
    KERNELS_DIR,
    LAYOUTS,
    CompileError,
    KernelSource,
    UncheckableKernel,
    compilation_units,
    elementwise_unit,
    kernel_sources,
)
from tests.support.cuda_kernel_sources import cupy_include_dirs as _cupy_include_dirs
from tests.support.cuda_kernel_sources import nvrtc_compile as _nvrtc_compile

ARCHES = ("sm_80", "sm_90")
KERNELS = kernel_sources()
UNITS = [unit for kernel in KERNELS for unit in compilation_units(kernel)]
COMMON_LAYOUT = LAYOUTS[0].name


@pytest.fixture(scope="module", autouse=True)
def compiler_process():
    """NVRTC runs in a separate spawned interpreter: importing cuda.bindings/cuda.pathfinder in the pytest process
    broke torch's weights-only unpickler for every later test (legacy-format checkpoints failed to load)."""
    global _pool
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        _pool = pool
        yield pool
        _pool = None


_pool = None


def nvrtc_compile(source: str, name: str, arch: str, options: tuple[str, ...], include_dirs: list[str]) -> bytes:
    """tests.support.cuda_kernel_sources.nvrtc_compile, run in the compiler process (CompileError comes back)."""
    return _pool.apply(_nvrtc_compile, (source, name, arch, options, include_dirs))


@pytest.fixture(scope="module")
def include_dirs(compiler_process) -> list[str]:
    return compiler_process.apply(_cupy_include_dirs)[0]


def test_every_kernel_constructor_in_the_sources_is_found() -> None:
    """The AST scan finds each `ElementwiseKernel(`/`RawKernel(`/... written in a *_cuda.py file, and no fewer."""
    written = 0
    for path in KERNELS_DIR.glob("*_cuda.py"):
        written += len(re.findall(r"\b(?:ElementwiseKernel|RawKernel|ReductionKernel|RawModule)\(", path.read_text()))
    assert written == len(KERNELS) > 0
    names = {unit[1] for unit in UNITS}
    assert {"fusioncam_upsample", "fusioncam_upsampled_min_max", "fusioncam_group_blend"} <= names


def _compile_case(unit: tuple[str, str, str, tuple[str, ...]], arch: str, include_dirs: list[str]) -> None:
    label, name, source, options = unit
    try:
        cubin = nvrtc_compile(source, name, arch, options, include_dirs)
    except CompileError as error:
        pytest.fail(f"{label} does not compile for {arch}:\n{error}\n--- source ---\n{source[-4000:]}")
    assert cubin[:4] == b"\x7fELF"  # a cubin (ELF) for the real architecture, not PTX
    assert name.encode() in cubin  # the kernel CuPy will look up by name is in it


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("unit", [u for u in UNITS if "[" not in u[0] or COMMON_LAYOUT in u[0]], ids=lambda u: u[0])
def test_kernel_compiles(unit, arch: str, include_dirs: list[str]) -> None:
    _compile_case(unit, arch, include_dirs)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHES)
def test_kernels_compile_in_strided_64_bit_layout(arch: str, include_dirs: list[str]) -> None:
    strided = [u for u in UNITS if "[" in u[0] and COMMON_LAYOUT not in u[0]]
    assert strided
    for unit in strided:
        _compile_case(unit, arch, include_dirs)


def _first(kind: str) -> KernelSource:
    return next(kernel for kernel in KERNELS if kernel.kind == kind)


def test_a_type_error_in_an_elementwise_body_fails_to_compile(include_dirs: list[str]) -> None:
    """Assigning a pointer to the float output is a type error only the compiler sees."""
    kernel = _first("ElementwiseKernel")
    in_params, out_params, operation, *rest = kernel.args
    broken = KernelSource(kernel.module, kernel.line, kernel.kind, (in_params, out_params, operation + "\nout = &i;", *rest), kernel.kwargs)
    name, source = elementwise_unit(broken, "float32", LAYOUTS[0])
    nvrtc_compile(elementwise_unit(kernel, "float32", LAYOUTS[0])[1], name, "sm_80", kernel.options, include_dirs)
    with pytest.raises(CompileError, match=r"(?s)NVRTC_ERROR_COMPILATION.*error"):
        nvrtc_compile(source, name, "sm_80", kernel.options, include_dirs)


def test_a_syntax_error_in_a_raw_kernel_fails_to_compile(include_dirs: list[str]) -> None:
    kernel = _first("RawKernel")
    label, name, source, options = compilation_units(kernel)[0]
    broken = source.replace("__syncthreads();", "__syncthreads()", 1)  # a missing semicolon
    assert broken != source
    with pytest.raises(CompileError, match=r"(?s)sm_90.*expected a \";\""):
        nvrtc_compile(broken, name, "sm_90", options, include_dirs)


def test_a_kernel_built_at_run_time_is_reported_not_skipped(tmp_path: Path) -> None:
    (tmp_path / "dynamic_cuda.py").write_text(
        textwrap.dedent(
            """
            import cupy as cp
            BODY = "y = x;"
            _OK = cp.ElementwiseKernel("float32 x", "float32 y", BODY, "fusioncam_ok")
            _BUILT = cp.ElementwiseKernel("float32 x", "float32 y", make_body(), "fusioncam_built")
            """
        )
    )
    with pytest.raises(UncheckableKernel, match=r"dynamic_cuda.py:5: cupy.ElementwiseKernel.*make_body\(\)"):
        kernel_sources(tmp_path)

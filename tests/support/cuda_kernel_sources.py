"""Every CUDA kernel fusioncam ships, found without importing CuPy, and compiled with NVRTC as CuPy would.

The kernels live in `fusioncam/kernels/*_cuda.py` as `cp.ElementwiseKernel(...)`, `cp.RawKernel(...)`,
`cp.ReductionKernel(...)` or `cp.RawModule(...)` calls whose arguments are module-level strings (plain, f-strings,
concatenations, names imported from another kernel module). The modules import cupy, which a machine without a GPU
may lack, so they are read with `ast` and those string expressions are evaluated statically. A kernel call whose
source cannot be evaluated that way is reported, not skipped: every shipped kernel must be checkable.

An ElementwiseKernel's operation is a loop body, not a kernel: `cupy_unit` wraps it as CuPy 14's
`_get_elementwise_kernel_code` does (cupy/_core/_kernel.pyx): typedefs for the type placeholders, a
`CArray<T, ndim, c_contiguous, index_32_bits>` parameter per array (`_raw_<name>` for non-raw ones, bound to a
reference `<name> = _raw_<name>[_ind.get()]`), plain scalars, a trailing `CIndexer<ndim, index_32_bits> _ind`, and the
`CUPY_FOR(i, _ind.size())` loop; CuPy's headers are prepended (`#include <cupy/complex.cuh>` ...) and `--std=c++17`
added. With CuPy installed its own headers are used; without it, `tests/kernels/cupy_headers/` holds stand-ins that
declare the same `CArray`, `CIndexer`, `CUPY_FOR` and `float16` interface (no complex numbers or atomics: no fusioncam
kernel uses them).
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KERNELS_DIR = REPO / "fusioncam" / "kernels"
STAND_IN_HEADERS = REPO / "tests" / "kernels" / "cupy_headers"

KERNEL_CLASSES = ("ElementwiseKernel", "RawKernel", "ReductionKernel", "RawModule")
# cupy/_core/core.pyx: cupy_header_list, prepended to every source CuPy compiles for a kernel class above but RawModule
# and RawKernel (those compile the source as written).
CUPY_HEADER_PREAMBLE = "".join(
    f"#include <{name}>\n" for name in ("cupy/complex.cuh", "cupy/carray.cuh", "cupy/atomics.cuh", "cupy/math_constants.h")
)
# cupy/_core/_scalar.pyx: _typenames_base (the dtypes a fusioncam kernel declares).
C_TYPES = {
    "float64": "double",
    "float32": "float",
    "float16": "float16",
    "int64": "long long",
    "int32": "int",
    "int16": "short",
    "int8": "signed char",
    "uint64": "unsigned long long",
    "uint32": "unsigned int",
    "uint16": "unsigned short",
    "uint8": "unsigned char",
    "bool": "bool",
}
# The dtypes a one-letter type placeholder (`O out`) is bound to: fusioncam's scorer batches are float32 or float16.
PLACEHOLDER_DTYPES = ("float32", "float16")


class UncheckableKernel(Exception):
    """A kernel call whose source is not a static string expression."""


@dataclass(frozen=True)
class KernelSource:
    """One kernel constructor call in a `*_cuda.py` module, its arguments evaluated."""

    module: str  # file name, e.g. "upsample_cuda.py"
    line: int
    kind: str  # one of KERNEL_CLASSES
    args: tuple
    kwargs: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.module}:{self.line}:{self.kind}"

    @property
    def options(self) -> tuple[str, ...]:
        return tuple(self.kwargs.get("options", ()))


@dataclass(frozen=True)
class Param:
    """One ElementwiseKernel parameter, parsed as cupy's ParameterInfo does."""

    name: str
    type_name: str  # dtype name or a one-letter placeholder
    raw: bool
    is_const: bool

    @property
    def placeholder(self) -> bool:
        return len(self.type_name) == 1


def parse_params(text: str, is_const: bool) -> list[Param]:
    """cupy's _get_param_info: comma-separated `[raw] type name`; inputs are const, outputs are not."""
    params = []
    for item in text.strip().split(",") if text.strip() else []:
        words = item.split()
        if len(words) < 2:
            raise UncheckableKernel(f"parameter {item!r} is not `[raw] type name`")
        *keywords, type_name, name = words
        raw = False
        for keyword in keywords:
            if keyword == "raw":
                raw = True
            elif keyword == "_non_const":
                is_const = False
            else:
                raise UncheckableKernel(f"unknown keyword {keyword!r} in parameter {item!r}")
        if len(type_name) != 1 and type_name not in C_TYPES:
            raise UncheckableKernel(f"parameter {item!r}: dtype {type_name!r} is not one cupy names")
        params.append(Param(name, type_name, raw, is_const))
    return params


class _StaticModule:
    """Module-level string constants of one kernel module, evaluated without running it."""

    def __init__(self, path: Path, modules: dict[str, "_StaticModule"]) -> None:
        self.path = path
        self.tree = ast.parse(path.read_text(), filename=str(path))
        self.names: dict[str, object] = {}
        self.cupy_aliases: set[str] = set()  # names bound to the cupy module
        self.kernel_names: dict[str, str] = {}  # names bound to a kernel class imported from cupy
        for node in self.tree.body:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "cupy":
                        self.cupy_aliases.add(alias.asname or "cupy")
            elif isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "cupy":
                    for alias in node.names:
                        if alias.name in KERNEL_CLASSES:
                            self.kernel_names[alias.asname or alias.name] = alias.name
                elif node.module.startswith("fusioncam.kernels.") and node.module.endswith("_cuda"):
                    source = _load(KERNELS_DIR / (node.module.rsplit(".", 1)[1] + ".py"), modules)
                    for alias in node.names:
                        if alias.name in source.names:
                            self.names[alias.asname or alias.name] = source.names[alias.name]
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if node.value is None or not all(isinstance(t, ast.Name) for t in targets):
                    continue
                try:
                    value = self.evaluate(node.value)
                except UncheckableKernel:
                    continue  # not a string constant: kernels that need it are reported below
                for target in targets:
                    self.names[target.id] = value

    def evaluate(self, node: ast.expr) -> object:
        """Strings, numbers, tuples, names of evaluated constants, `+`, f-strings, str.join of those."""
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float, bool)):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in self.names:
                return self.names[node.id]
            raise UncheckableKernel(f"name {node.id!r} is not a module-level string constant")
        if isinstance(node, (ast.Tuple, ast.List)):
            return tuple(self.evaluate(element) for element in node.elts)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self.evaluate(node.left) + self.evaluate(node.right)
        if isinstance(node, ast.JoinedStr):
            parts = []
            for value in node.values:
                if isinstance(value, ast.FormattedValue):
                    if value.format_spec is not None or value.conversion != -1:
                        raise UncheckableKernel("f-string with a format spec or conversion")
                    parts.append(str(self.evaluate(value.value)))
                else:
                    parts.append(str(self.evaluate(value)))
            return "".join(parts)
        raise UncheckableKernel(f"expression {ast.unparse(node)!r} is not a static string")

    def kernel_class(self, call: ast.Call) -> str | None:
        func = call.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in self.cupy_aliases:
            return func.attr if func.attr in KERNEL_CLASSES else None
        if isinstance(func, ast.Name):
            return self.kernel_names.get(func.id)
        return None

    def kernels(self) -> list[KernelSource]:
        found = []
        for node in ast.walk(self.tree):
            if not isinstance(node, ast.Call):
                continue
            kind = self.kernel_class(node)
            if kind is None:
                continue
            where = f"{self.path.name}:{node.lineno}"
            try:
                args = tuple(self.evaluate(arg) for arg in node.args)
                kwargs = {kw.arg: self.evaluate(kw.value) for kw in node.keywords if kw.arg is not None}
            except UncheckableKernel as error:
                raise UncheckableKernel(
                    f"{where}: cupy.{kind}(...) cannot be compiled without a GPU: {error}. Keep kernel sources, "
                    "names, parameters and options as module-level strings (literals, f-strings or `+` of them)"
                ) from None
            found.append(KernelSource(self.path.name, node.lineno, kind, args, kwargs))
        return found


def _load(path: Path, modules: dict[str, _StaticModule]) -> _StaticModule:
    if path.name not in modules:
        modules[path.name] = _StaticModule(path, modules)
    return modules[path.name]


def kernel_sources(kernels_dir: Path = KERNELS_DIR) -> list[KernelSource]:
    """Every kernel constructor call in kernels_dir/*_cuda.py, in file and line order."""
    modules: dict[str, _StaticModule] = {}
    found: list[KernelSource] = []
    for path in sorted(kernels_dir.glob("*_cuda.py")):
        found.extend(_load(path, modules).kernels())
    return found


@dataclass(frozen=True)
class ArrayLayout:
    """How CuPy would see the arrays of one launch: ndim, C-contiguity and 32-bit indexing of every array argument."""

    name: str
    ndim: int
    c_contiguous: bool
    index_32_bits: bool


# Contiguous same-shape arrays reduce to one dimension with 32-bit indices (the common launch); a broadcast launch
# (a [N, 1, 1] bound against a [N, H, W] map) keeps several dimensions, and a large one indexes with 64 bits.
LAYOUTS = (ArrayLayout("1d-contiguous-int32", 1, True, True), ArrayLayout("4d-strided-int64", 4, False, False))


def _elementwise_arguments(kernel: KernelSource) -> tuple[str, str, str, str, str, str, str]:
    in_params, out_params, operation, *rest = kernel.args
    names = ("name", "reduce_dims", "preamble", "no_return", "return_tuple", "loop_prep", "after_loop")
    values = dict(zip(names, rest))
    values.update({k: v for k, v in kernel.kwargs.items() if k in names})
    return (
        in_params,
        out_params,
        operation,
        values.get("name", "kernel"),
        values.get("preamble", ""),
        values.get("loop_prep", ""),
        values.get("after_loop", ""),
    )


def elementwise_unit(kernel: KernelSource, placeholder_dtype: str, layout: ArrayLayout) -> tuple[str, str]:
    """(kernel name, CuPy's compilation unit) for one ElementwiseKernel, its placeholders bound to placeholder_dtype."""
    in_text, out_text, operation, name, preamble, loop_prep, after_loop = _elementwise_arguments(kernel)
    params = parse_params(in_text, True) + parse_params(out_text, False)
    type_decls: set[str] = set()

    def c_type(dtype: str) -> str:
        if dtype == "float16":
            type_decls.add('#include "cupy/float16.cuh"')
        return C_TYPES[dtype]

    placeholders = sorted({p.type_name for p in params if p.placeholder})
    typedefs = "".join(f"typedef {c_type(placeholder_dtype)} {t};\n" for t in placeholders)
    declared = []
    body = []
    for p in params:
        element = c_type(placeholder_dtype if p.placeholder else p.type_name)  # CArray holds the bound type
        # cupy: every array argument (raw or not) is a CArray; a non-raw scalar input is passed by value.
        is_array = p.raw or not p.is_const or p.placeholder or _is_array_input(p, params)
        if is_array:
            array_type = f"CArray<{element}, {layout.ndim}, {int(layout.c_contiguous)}, {int(layout.index_32_bits)}>"
            const = "const " if p.is_const else ""
            declared.append(f"{const}{array_type} {p.name if p.raw else '_raw_' + p.name}")
            if not p.raw:
                ref = "const {t} &{n}" if p.is_const else "{t} &{n}"
                body.append(ref.format(t=p.type_name if p.placeholder else c_type(p.type_name), n=p.name) + f" = _raw_{p.name}[_ind.get()];")
        else:
            declared.append(f"const {element} {p.name}")
    declared.append(f"CIndexer<{layout.ndim}, {int(layout.index_32_bits)}> _ind")
    body.append(operation)
    decls = "".join(f"{d}\n" for d in sorted(type_decls))
    joined_body = "\n".join(body)
    # cupy/_core/_kernel.pyx: _get_simple_elementwise_kernel_code's template.
    unit = f"""
    {decls}{typedefs}
    {preamble}
    extern "C" __global__ void {name}({', '.join(declared)}) {{
      {loop_prep};
      #pragma unroll 1
      CUPY_FOR(i, _ind.size()) {{
        _ind.set(i);
        {joined_body};
      }}
      {after_loop};
    }}
    """
    return name, CUPY_HEADER_PREAMBLE + unit


def _is_array_input(param: Param, params: list[Param]) -> bool:
    """Whether a typed non-raw input is passed as an array (a CArray parameter) or as a scalar (by value).

    cupy decides this per call from the arguments. fusioncam's kernels pass their floating-point non-raw inputs as
    arrays (the elementwise operands) and their integer ones (sizes, strides, flags) as Python ints.
    """
    return param.type_name.startswith("float")


def compilation_units(kernel: KernelSource) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(label, kernel name, source, options) for every configuration CuPy would compile this kernel in."""
    if kernel.kind == "ElementwiseKernel":
        in_text, out_text = kernel.args[0], kernel.args[1]
        params = parse_params(in_text, True) + parse_params(out_text, False)
        dtypes = PLACEHOLDER_DTYPES if any(p.placeholder for p in params) else ("float32",)
        units = []
        for layout in LAYOUTS:
            for dtype in dtypes:
                name, source = elementwise_unit(kernel, dtype, layout)
                label = f"{kernel.label}:{name}[{layout.name}" + (f",{dtype}]" if len(dtypes) > 1 else "]")
                units.append((label, name, source, ("--std=c++17", *kernel.options)))
        return units
    if kernel.kind in ("RawKernel", "RawModule"):
        source = kernel.args[0] if kernel.args else kernel.kwargs["code"]
        name = kernel.args[1] if kernel.kind == "RawKernel" and len(kernel.args) > 1 else kernel.kwargs.get("name", "")
        # cupy/_core/raw.pyx compiles a raw source as written (prepend_cupy_headers=False).
        return [(f"{kernel.label}:{name}", name, source, ("--std=c++17", *kernel.options))]
    raise UncheckableKernel(
        f"{kernel.label}: {kernel.kind} sources are not wrapped yet; add its CuPy template to "
        "tests/support/cuda_kernel_sources.py"
    )


def cupy_include_dirs() -> tuple[list[str], str]:
    """Include directories for CuPy's headers and the CUDA headers, and which CuPy headers they are."""
    from cuda.pathfinder import find_nvidia_header_directory

    cuda_headers = find_nvidia_header_directory("cudart")
    if cuda_headers is None:
        raise RuntimeError("CUDA headers (cuda_fp16.h) not found: pip install nvidia-cuda-runtime")
    spec = importlib.util.find_spec("cupy")  # finds the package without importing it (no GPU needed)
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            include = Path(location) / "_core" / "include"
            if (include / "cupy" / "carray.cuh").is_file():
                cccl = include / "cupy" / "_cccl"
                dirs = [str(cccl / "cub"), str(cccl / "thrust"), str(cccl / "libcudacxx"), str(include)]
                return [*dirs, cuda_headers], f"CuPy's headers ({include})"
    return [str(STAND_IN_HEADERS), cuda_headers], "stand-in headers (CuPy not installed)"


class CompileError(Exception):
    """NVRTC refused a source; the message holds its log."""


def nvrtc_compile(source: str, name: str, arch: str, options: tuple[str, ...], include_dirs: list[str]) -> bytes:
    """Compile source to a cubin for arch (e.g. "sm_80") with NVRTC; raise CompileError with the log on failure."""
    from cuda.bindings import nvrtc

    def check(result: tuple) -> tuple:
        status, *values = result
        if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise RuntimeError(f"NVRTC call failed: {status}")
        return tuple(values)

    (program,) = check(nvrtc.nvrtcCreateProgram(source.encode(), f"{name or 'kernel'}.cu".encode(), 0, [], []))
    try:
        flags = [f"--gpu-architecture={arch}", *options, *(f"-I{d}" for d in include_dirs)]
        (status,) = nvrtc.nvrtcCompileProgram(program, len(flags), [f.encode() for f in flags])
        (log_size,) = check(nvrtc.nvrtcGetProgramLogSize(program))
        log = b" " * log_size
        check(nvrtc.nvrtcGetProgramLog(program, log))
        text = log.decode(errors="replace").rstrip("\x00").strip()
        if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise CompileError(f"{status.name} for {arch}:\n{text}")
        (size,) = check(nvrtc.nvrtcGetCUBINSize(program))
        cubin = b" " * size
        check(nvrtc.nvrtcGetCUBIN(program, cubin))
        return cubin
    finally:
        nvrtc.nvrtcDestroyProgram(program)

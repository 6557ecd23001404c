"""What every fuzz harness shares: seeding an empty corpus folder, running atheris (libFuzzer) over fusioncam with
coverage, and the one rule checked: only fusioncam's own errors (FusionCamError) may come out of a public call.

A harness is run as `python fuzz/<name>.py [libFuzzer flags] CORPUS_DIR`; an empty CORPUS_DIR is filled with the
harness's seeds first. Any other exception, a crash of native code, a timeout or an out-of-memory is a finding:
libFuzzer stops, prints the input's traceback and writes the input to `-artifact_prefix`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import atheris

REPOSITORY = Path(__file__).resolve().parents[1]


def instrumented_imports():
    """A context manager under which fusioncam is imported with atheris's coverage instrumentation."""
    return atheris.instrument_imports(include=["fusioncam"])


def write_seeds(folder: Path, seeds: Iterable[tuple[str, bytes]]) -> None:
    """Write each (name, bytes) seed into folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in seeds:
        (folder / name).write_bytes(data)


def allowing_fusioncam_errors(test: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """The libFuzzer entry point: `test(data)`, where a FusionCamError is an expected outcome, not a finding."""
    from fusioncam.errors import FusionCamError

    def one_input(data: bytes) -> None:
        try:
            test(data)
        except FusionCamError:
            pass

    return one_input


def run(test: Callable[[bytes], None], seeds: Callable[[], Iterable[tuple[str, bytes]]],
        custom_mutator: Callable[[bytes, int, int], bytes] | None = None) -> None:
    """Seed the first corpus folder on the command line if it is empty, then fuzz `test` until libFuzzer stops
    (with a structure-aware `custom_mutator` when given, see mutators.py)."""
    folders = [Path(arg) for arg in sys.argv[1:] if not arg.startswith("-")]
    if folders and not folders[0].is_file() and (not folders[0].exists() or not any(folders[0].iterdir())):
        write_seeds(folders[0], seeds())
    if custom_mutator is None:
        atheris.Setup(sys.argv, allowing_fusioncam_errors(test))
    else:
        atheris.Setup(sys.argv, allowing_fusioncam_errors(test), custom_mutator=custom_mutator)
    atheris.Fuzz()

"""What fusioncam may write over: a new path, or what a previous fusioncam run wrote there, never the user's files.

Output folders of `explain`, `evaluate` and `demo` carry a record, `results.json`, that lists every file fusioncam
wrote into them with its SHA-256 (`written_files`). A folder may be new, empty, or such a previous output folder; a
file fusioncam is about to write that already exists and is not in that record, or was changed since, is refused
before any work starts, naming it.
Bundle directories are guarded the same way by their manifest (see bundle.check_bundle_destination).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from .errors import OutputError
from .hashing import file_sha256

RECORD = "results.json"
RECORD_MARK = "fusioncam_version"  # a results.json fusioncam wrote has this key
SHOWN = 5  # how many unexpected files an error message names
LOCK_FILE = ".fusioncam.lock"  # the lock a running fusioncam holds on its output folder (run_lock.py)
WRITE_PROBE = ".write-probe."  # the prefix of probe_write's short-lived files


def is_run_scratch(name: str) -> bool:
    """True for the files fusioncam keeps in an output folder only while a run works there (the run lock, a write
    probe): never the user's, never part of a record."""
    return name == LOCK_FILE or name.startswith(WRITE_PROBE)


def listing(names: Iterable[str]) -> str:
    """A short, sorted list of names for a message: the first few and how many more."""
    names = sorted(names)
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def protected_folder_reason(path: Path) -> str | None:
    """Why a folder may never be replaced whole (the current directory, one above it, home, a root), or None."""
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd:
        return "is the current directory"
    if resolved in cwd.parents:
        return "contains the current directory"
    if resolved == Path.home().resolve():
        return "is your home directory"
    if resolved == Path(resolved.anchor):
        return "is the root of the file system"
    return None


def nearest_existing(path: Path) -> Path:
    """`path` itself if it exists, else its closest existing ancestor (where creating it would start)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_location(out: Path, what: str) -> None:
    """Prove a file can be created where `out` is or would be created, without creating `out` itself."""
    base = nearest_existing(out)
    if not base.is_dir():
        raise OutputError(f"{what} {out} is not writable ({base} is a file, not a folder); choose another {what}")
    try:
        probe_write(base)
    except OSError as exc:
        raise OutputError(f"{what} {out} is not writable ({exc.strerror or exc}); choose another {what}") from None


def probe_write(folder: Path) -> None:
    """Create and remove a temporary file in `folder`: an OSError says why nothing can be written there."""
    fd, probe = tempfile.mkstemp(dir=folder, prefix=WRITE_PROBE, suffix=".tmp")
    try:
        os.close(fd)
    finally:
        os.unlink(probe)  # even when a signal lands here


Written = dict[str, "str | None"]  # file name -> SHA-256 when written (None: not known, e.g. the record itself)


def previous_outputs(out: Path) -> Written | None:
    """The files a previous fusioncam run recorded writing into `out` (its results.json), or None without a record."""
    record = out / RECORD
    try:
        document = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or RECORD_MARK not in document:
        return None
    listed = document.get("written_files") or {}
    if isinstance(listed, dict):
        written: Written = dict(listed)
    else:
        written = dict.fromkeys(name for name in (listed if isinstance(listed, list) else []) if isinstance(name, str))
    if not listed and "images" in document:  # a record from before `written_files` was kept
        written["index.html"] = None
        for image in document.get("images") or []:
            if isinstance(image, dict) and isinstance(image.get("files"), dict):
                written.update(dict.fromkeys(str(name) for name in image["files"].values()))
    written[RECORD] = None
    return {name: digest if isinstance(digest, str) else None for name, digest in written.items()
            if isinstance(name, str) and "/" not in name and name not in ("", ".", "..")}


def record_files(out: Path, earlier: Written, new: Iterable[str]) -> Written:
    """The record's `written_files`: earlier runs' entries, and this run's files with the hash of what is on disk."""
    files = dict(earlier)
    for name in new:
        files[name] = None if name == RECORD else file_sha256(out / name)
    files[RECORD] = None
    return dict(sorted(files.items()))


def check_output_folder(out: str | os.PathLike, planned: Iterable[str], inputs: Mapping[str, str] | None = None,
                        legacy: Mapping[str, bytes] | None = None) -> Written:
    """Refuse an output folder fusioncam could not write without losing data; return the files it wrote before
    (those still there, with their recorded hashes).

    `planned`: the file names this run will write into `out`. `inputs`: real path -> label of the input images
    (none may be overwritten). `legacy`: file name -> leading bytes by which a file written by an older fusioncam
    (before records were kept) is recognised. Nothing is created here; a missing folder is probed where it would be.
    """
    out = Path(out)
    planned = list(dict.fromkeys(planned))
    if out.exists() and not out.is_dir():
        raise OutputError(f"output folder {out} is a file, not a folder; choose another output folder")
    inputs = dict(inputs or {})
    for name in planned:
        real = os.path.realpath(out / name)
        if real in inputs:
            raise OutputError(f"writing {out / name} would overwrite the input image {inputs[real]}; "
                              f"choose another output folder")
    check_writable_location(out, "output folder")
    if not out.exists():
        return {}
    present = {entry.name for entry in out.iterdir() if not is_run_scratch(entry.name)}
    previous = previous_outputs(out)
    if previous is None:
        previous = dict.fromkeys(_legacy_outputs(out, present, legacy or {}))
        if present and not previous:
            raise OutputError(
                f"output folder {out} already holds files fusioncam did not write ({listing(present)}); choose a new "
                f"or empty folder, or the folder of a previous fusioncam run"
            )
    foreign = [name for name in planned if name in present and name not in previous]
    if foreign:
        raise OutputError(
            f"{out / foreign[0]} already exists and was not written by fusioncam (it is not in {out / RECORD}); "
            f"move it away or choose another output folder" + (f" (also: {listing(foreign[1:])})" if foreign[1:] else "")
        )
    for name in planned:
        digest = previous.get(name)
        if name in present and digest is not None and _sha256_or_none(out / name) != digest:
            raise OutputError(f"{out / name} was changed since fusioncam wrote it (its SHA-256 differs from the one in "
                              f"{out / RECORD}); move it away or choose another output folder")
    return {name: digest for name, digest in previous.items() if name in present}


def _sha256_or_none(path: Path) -> str | None:
    """A regular file's SHA-256, or None for anything else (a folder where a file was)."""
    try:
        return file_sha256(path) if path.is_file() else None
    except OSError:
        return None


def _legacy_outputs(out: Path, present: set[str], legacy: Mapping[str, bytes]) -> set[str]:
    """Files an older fusioncam wrote without a record, known by their first bytes once the anchor file is known."""
    known = {name for name, head in legacy.items() if name in present and _starts_with(out / name, head)}
    return known if next(iter(legacy), None) in known else set()


def _starts_with(path: Path, head: bytes) -> bool:
    """Whether a regular file begins with `head`."""
    try:
        with open(path, "rb") as handle:
            return path.is_file() and handle.read(len(head)) == head
    except OSError:
        return False


def create_folder(out: Path) -> None:
    """Create the output folder (and its parents) right before the first file is written into it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {out} ({exc.strerror or exc}); choose another output folder") from None

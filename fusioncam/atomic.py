"""Atomic writes: a reader sees the old file (or none) or the complete new one, never a partial one."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, then rename it over `path` (mode 0666 & ~umask)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """UTF-8 text version of write_bytes_atomic."""
    write_bytes_atomic(path, text.encode("utf-8"))


def refuse_unless_new_or_empty(path: Path) -> None:
    """atomic_directory's default guard: only a new path or an empty folder may be replaced."""
    from .errors import OutputError

    if path.is_symlink() or path.is_file() or (path.is_dir() and any(path.iterdir())):
        raise OutputError(f"{path} already exists and is not empty; fusioncam replaces only what it wrote there: "
                          f"choose a new path")


def write_failure(path: str | os.PathLike, exc: OSError) -> "OutputError":
    """The one-line error for an OSError met while writing `path` (disk full, quota, read-only file system, no
    permission): what was being written, the file the system named, and why."""
    from .errors import OutputError

    reason = exc.strerror or str(exc) or type(exc).__name__
    where = f" ({exc.filename})" if exc.filename and os.fspath(exc.filename) != os.fspath(path) else ""
    hint = {28: "free some space", 122: "free some space (disk quota exceeded)", 30: "choose a writable location",
            13: "choose a folder you may write to"}.get(exc.errno or 0, "choose another location")
    return OutputError(f"cannot write {path}: {reason}{where}; nothing was written there: {hint} and run again")


@contextmanager
def atomic_directory(path: str | os.PathLike, guard: Callable[[Path], None] = refuse_unless_new_or_empty
                     ) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces `path` whole, on failure it vanishes.

    `guard(path)` raises unless what is at `path` may be replaced; it runs before staging starts and again just
    before the swap (the folder could have changed while the work ran). An OSError while staging or swapping (a
    full disk, a quota, a read-only file system, a permission) becomes an OutputError naming `path` and the reason,
    after the staging directory is removed."""
    path = Path(path)
    guard(path)
    try:
        created = _make_parents(path)
    except OSError as exc:
        raise write_failure(path, exc) from None
    try:
        staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial"))
    except BaseException as exc:
        _remove_empty(created)
        if isinstance(exc, OSError):
            raise write_failure(path, exc) from None
        raise
    os.chmod(staging, 0o777 & ~_umask())
    try:
        yield staging
        guard(path)
        if path.exists():
            retired = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            try:
                os.replace(path, retired / "previous")
                os.replace(staging, path)
            except BaseException:
                if (retired / "previous").exists() and not path.exists():
                    os.replace(retired / "previous", path)  # put the previous one back
                raise
            finally:
                shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, path)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(created)
        if isinstance(exc, OSError):
            raise write_failure(path, exc) from None
        raise


def _make_parents(path: Path) -> list[Path]:
    """Create the missing folders above `path`; return them, deepest first (to remove them again on failure)."""
    missing = []
    parent = Path(os.path.abspath(path)).parent
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove folders this module created, deepest first, as long as they are still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return

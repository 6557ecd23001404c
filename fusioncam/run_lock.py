"""One fusioncam run at a time per output folder: an exclusive lock held for the whole run.

Two runs writing one folder at once would each write their own `results.json` (or summary) over the other's, so
one run's record is lost and a later rerun is refused as "not written by fusioncam". `explain`, `demo`, `evaluate`
and `explain-dataset` therefore take `run_lock(out)` first: an `fcntl.flock` on the file `.fusioncam.lock` that the
run creates inside the folder and removes when it ends. A second run into the folder fails at once with an
OutputError naming the folder and the pid of the run that holds it. The lock dies with its process (a crashed or
killed run never leaves the folder locked), and the output guards ignore the lock file (`LOCK_FILE`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError
from .output_guard import LOCK_FILE, check_writable_location

__all__ = ["LOCK_FILE", "run_lock"]

log = logging.getLogger("fusioncam")

_held: dict[str, int] = {}  # real path of a folder this process has locked -> how many run_lock blocks hold it
_held_guard = threading.Lock()


@contextmanager
def run_lock(out: str | os.PathLike, what: str = "output folder") -> Iterator[Path]:
    """Hold the exclusive lock on the folder `out` for the block (created, with its parents, when missing; folders
    it created are removed again at the end if they are still empty). Re-entrant within one process.

    Raises OutputError when another run holds the folder ("... is in use by another fusioncam run, pid N"), when
    `out` is a file, or when the folder cannot be created or written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{what} {out} is a file, not a folder; choose another {what}")
    created = _create(out, what)
    key = os.path.realpath(out)
    with _held_guard:
        nested = key in _held
        _held[key] = _held.get(key, 0) + 1
    fd = -1
    try:
        if not nested:
            fd = _acquire(out, what)
        yield out
    finally:
        with _held_guard:
            _held[key] -= 1
            if not _held[key]:
                del _held[key]
        if fd >= 0:
            _release(out / LOCK_FILE, fd)
        for folder in created:  # deepest first; a folder holding anything stays
            try:
                folder.rmdir()
            except OSError:
                break


def _create(out: Path, what: str) -> list[Path]:
    """Create `out` and its missing parents; return the folders created, deepest first."""
    if out.is_dir():
        return []
    check_writable_location(out, what)
    missing = []
    folder = Path(os.path.abspath(out))
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {what} {out} ({exc.strerror or exc}); choose another {what}") from None
    return missing


def _acquire(out: Path, what: str) -> int:
    """Open and lock `out/LOCK_FILE`, write this process's pid into it; return the descriptor.

    The holder removes the file before it unlocks, so a run that locked a file that is no longer the one at the
    path (it was removed meanwhile) tries again on the new one."""
    import fcntl

    path = out / LOCK_FILE
    while True:
        try:
            # never through a symbolic link: the file written is this folder's own lock, nothing it points to
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0),
                         0o644)
        except OSError as exc:
            raise OutputError(f"cannot lock {what} {out} ({exc.strerror or exc}); choose another {what}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutputError(f"{what} {out} is in use by another fusioncam run, pid {holder}; wait for it to "
                              f"finish or choose another {what}") from None
        except OSError as exc:  # a file system without locks (some network mounts): run, but say so
            log.warning("fusioncam: %s %s cannot be locked (%s): this run does not keep other runs out of it",
                        what, out, exc.strerror or exc)
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same and not _written_by_fusioncam(fd):
            os.close(fd)
            raise OutputError(f"{what} {out} holds a file {LOCK_FILE} that fusioncam did not write (it is not a lock "
                              f"record: a pid line); move it away or choose another {what}")
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
            return fd
        os.close(fd)  # the holder removed it between our open and our lock: lock the new one


def _written_by_fusioncam(fd: int) -> bool:
    """True when the lock file is empty (just created) or holds a pid line, as a run's lock (possibly left by a killed
    run) does: anything else is a user's file of the same name, which is neither overwritten nor removed."""
    try:
        text = os.pread(fd, 64, 0)
    except OSError:
        return False
    return not text or (len(text) < 32 and text.rstrip(b"\n").isdigit() and text.endswith(b"\n"))


def _holder(fd: int) -> str:
    """The pid the locking run wrote into the lock file ("unknown" while it has not written it yet)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


def _release(path: Path, fd: int) -> None:
    """Remove the lock file, then unlock (closing the descriptor releases the flock)."""
    try:
        path.unlink(missing_ok=True)
    finally:
        os.close(fd)

"""Reading a user's input file whole, refusing anything that is not a regular file before a byte is read.

A FIFO opened for reading blocks until a writer appears (forever, and an `open` retried after a signal blocks
again), and /dev/zero or /dev/urandom never end. So the file is opened without blocking (O_NONBLOCK: opening a FIFO
returns at once) and checked with fstat on the open descriptor (no window between a check and the open): only a
regular file is read.
"""

from __future__ import annotations

import os
import stat

from .errors import InputError

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def kind_of(mode: int) -> str:
    """What a file of this st_mode is, in words ("a FIFO (named pipe)", "a character device", ...)."""
    return next((words for test, words in _KINDS if test(mode)), "not a regular file")


def not_regular_reason(path: str | os.PathLike[str]) -> str | None:
    """Why `path` cannot be read as an input file (it is a FIFO, a device, ...), or None for a regular file and for
    a path that cannot be stat'ed (its reader reports that). Symbolic links are followed."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return None if stat.S_ISREG(mode) else kind_of(mode)


def read_regular_file(path: str | os.PathLike[str], what: str = "image file") -> bytes:
    """The whole content of the regular file `path`; an InputError naming it when it does not exist, is a directory,
    a FIFO, a device or a socket ("... is not a regular file"), or cannot be read."""
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise InputError(f"{what} {name!r} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"{what} {name!r} is a directory, not a regular file") from None
    except OSError as exc:
        raise InputError(f"{what} {name!r} cannot be read: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise InputError(f"{what} {name!r} is not a regular file (it is {kind_of(mode)}); give an image file")
        os.set_blocking(fd, True)  # a regular file never blocks; reads then behave as usual
        with os.fdopen(fd, "rb", closefd=True) as handle:
            fd = -1
            return handle.read()
    except OSError as exc:
        raise InputError(f"{what} {name!r} cannot be read: {exc.strerror or exc}") from None
    finally:
        if fd >= 0:
            os.close(fd)

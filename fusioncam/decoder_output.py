"""What the image decoders print while fusioncam decodes a file, kept off the terminal when fusioncam reports the
problem itself.

OpenCV logs its decoders' complaints ("[ERROR:0@0.7] global grfmt_tiff.cpp ... TIFFReadDirectory: ...") through its
own log, which is silenced for the decode (`opencv_log_silenced`). libpng and libjpeg print to the process's
stderr themselves ("libpng error: IHDR: CRC error", "Corrupt JPEG data: ..."): where it is safe (the main thread,
no other Python thread that could write meanwhile: the command line's sequential reads) file descriptor 2 is
captured for the decode, and the text is given to the caller: it joins fusioncam's one-line error when the decode
fails, and goes back to stderr unchanged when it succeeds (nothing is lost).
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import cv2

_quiet_lock = threading.Lock()
_quiet_depth = 0  # decodes now running with OpenCV's log silenced (threads decode at once in the server)
_quiet_saved: int | None = None  # the log level to restore when the last of them ends


@contextmanager
def opencv_log_silenced() -> Iterator[None]:
    """OpenCV's own log lines silenced for the block; the level in force before is restored when the last
    concurrent block ends."""
    global _quiet_depth, _quiet_saved
    logging = cv2.utils.logging
    with _quiet_lock:
        if _quiet_depth == 0:
            _quiet_saved = logging.getLogLevel()
            logging.setLogLevel(logging.LOG_LEVEL_SILENT)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0 and _quiet_saved is not None:
                logging.setLogLevel(_quiet_saved)


@dataclass
class DecoderText:
    """What the decoder libraries printed to stderr during the block ("" when nothing, or when not captured)."""

    text: str = ""

    def release(self) -> None:
        """Give the captured text back to stderr (the decode succeeded: its warnings are the user's to see)."""
        if self.text:
            sys.stderr.write(self.text if self.text.endswith("\n") else self.text + "\n")
            sys.stderr.flush()
            self.text = ""

    def summary(self) -> str:
        """The captured lines on one line, for an error message ("" when none)."""
        lines = [line.strip() for line in self.text.splitlines() if line.strip()]
        return "; ".join(dict.fromkeys(lines))[:300]


def _capture_is_safe() -> bool:
    """Capturing fd 2 would also take other threads' output: only in the main thread, with no other Python thread."""
    return threading.current_thread() is threading.main_thread() and threading.active_count() == 1


@contextmanager
def quiet_decoder() -> Iterator[DecoderText]:
    """OpenCV's log silenced and, where safe, the C libraries' stderr captured into the yielded DecoderText."""
    captured = DecoderText()
    with opencv_log_silenced():
        if not _capture_is_safe():
            yield captured
            return
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except OSError:  # no stderr to redirect (closed fd 2)
            yield captured
            return
        sink = tempfile.TemporaryFile()
        try:
            os.dup2(sink.fileno(), 2)
            try:
                yield captured
            finally:
                os.dup2(saved, 2)
                sink.seek(0)
                captured.text = sink.read().decode("utf-8", "replace")
        finally:
            os.close(saved)
            sink.close()

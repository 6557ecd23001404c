"""What the subcommands share: argument types, expanding inputs into image files, status lines and exit codes."""

from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path

from ..errors import InputError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".jp2"}
SAMPLE_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle")
DEVICES = ("auto", "cpu", "cuda")


def say(message: str) -> None:
    """A status line on stderr (stdout carries only the results table)."""
    print(message, file=sys.stderr, flush=True)


def method_list(text: str) -> tuple[str, ...]:
    """--methods: a comma-separated subset of the methods (runtime.methods.METHODS)."""
    from ..runtime.methods import check_methods

    try:
        return check_methods([m.strip() for m in text.split(",") if m.strip()])
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int(text: str) -> int:
    """--batch: a positive integer."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def non_negative_int(text: str) -> int:
    """A count that may be 0 (retries)."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text!r}")
    return int(text)


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files as given, folders as their image files (not recursive), globs as their matches; none found is an error."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif glob.has_magic(item) and not path.exists():
            found += sorted(Path(p) for p in glob.glob(item) if os.path.isfile(p))
        else:
            found.append(path)  # a missing or unreadable file is reported by name when it is read
    unique = list(dict.fromkeys(found))
    if not unique:
        raise InputError(f"no images found in {', '.join(inputs)} (folders are searched for "
                         f"{', '.join(sorted(IMAGE_EXTENSIONS))}, not recursively)")
    return unique


def finish(summary, command: str = "explain") -> int:
    """Print the results table and where the files went; 0 when every image was explained, 1 when some were skipped,
    130 (one line) when a signal stopped the run (the record of the finished images is written, marked incomplete)."""
    from ..interrupts import EXIT_INTERRUPTED
    from ..report.explain_folder import RESULTS_JSON, summary_table

    if summary.records:
        print(summary_table(summary.records))
    explained = len(summary.records)
    total = explained + len(summary.failures) + len(summary.not_explained)
    if summary.interrupted:
        say(f"fusioncam {command}: interrupted ({summary.interrupted}) after {explained} of {total} image(s); "
             f"{summary.out / RESULTS_JSON} records what finished (marked incomplete)")
        return EXIT_INTERRUPTED
    say(f"explained {explained} of {total} image(s); open {summary.out / 'index.html'}")
    return 0 if summary.all_succeeded else 1

"""The output folder of a dataset run: `run.json` (the settings), `parts/part-*.parquet` (one file per block, each
written atomically: a hidden temporary file renamed into place) and the summary files; and resuming from it."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..atomic import write_bytes_atomic, write_text_atomic
from ..errors import OutputError
from ..output_guard import check_writable_location, create_folder, is_run_scratch, listing

log = logging.getLogger("fusioncam")

PARTS = "parts"
RUN_JSON = "run.json"
PART_GLOB = "part-*.parquet"


RUN_MARK = "fusioncam_version"  # a run.json fusioncam wrote has this key


def prepare_output(out: str | Path, settings: dict[str, object]) -> Path:
    """Create OUT and OUT/parts, and record the run's settings in run.json. OUT must be new, empty, or the folder
    of an earlier dataset run (its run.json) with the same settings, which this run then resumes; a folder holding
    other files, or a run with other settings, is refused (nothing is deleted or overwritten)."""
    from .. import __version__

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"output folder {out} is a file, not a folder; choose another output folder")
    check_writable_location(out, "output folder")
    record = out / RUN_JSON
    settings = {**settings, RUN_MARK: __version__}
    if out.is_dir() and any(not is_run_scratch(entry.name) for entry in out.iterdir()):  # the run lock is ours
        earlier = _earlier_settings(record)
        if earlier is None:
            present = [entry.name for entry in out.iterdir() if not is_run_scratch(entry.name)]
            raise OutputError(f"output folder {out} already holds files fusioncam did not write ({listing(present)}); "
                              f"choose a new or empty folder, or the folder of an earlier explain-dataset run")
        changed = sorted(key for key in set(earlier) | set(settings) if earlier.get(key) != settings.get(key))
        if changed:
            details = "; ".join(f"{k}: {earlier.get(k)!r} then, {settings.get(k)!r} now" for k in changed)
            raise OutputError(f"{out} holds a run with other settings ({details}); rerun with the same settings to "
                              f"resume it, or choose another output folder")
    create_folder(out)
    (out / PARTS).mkdir(exist_ok=True)
    if not record.is_file():
        write_text_atomic(record, json.dumps(settings, indent=2, sort_keys=True) + "\n")
    return out


def _earlier_settings(record: Path) -> dict | None:
    """The settings of the earlier run recorded in run.json, or None when there is no run.json fusioncam wrote."""
    try:
        earlier = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return earlier if isinstance(earlier, dict) and RUN_MARK in earlier else None


def part_path(out: Path, sources: Sequence[str]) -> Path:
    """Where the block of these sources goes: named by their hash, so a retried block replaces its own file."""
    digest = hashlib.sha256("\n".join(sources).encode("utf-8")).hexdigest()[:24]
    return Path(out) / PARTS / f"part-{digest}.parquet"


def write_part(out: Path, table) -> Path:
    """Encode the block's table as Parquet in memory, then write it atomically; return its path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    path = part_path(out, table.column("source").to_pylist())
    write_bytes_atomic(path, sink.getvalue().to_pybytes())
    return path


def part_files(out: Path) -> list[Path]:
    """The finished part files (temporary files are hidden and never match), sorted by name."""
    return sorted((Path(out) / PARTS).glob(PART_GLOB))


def read_part(path: Path, columns: Iterable[str] | None = None):
    """One part file's table (only `columns` when given), or an OutputError naming the damaged file."""
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=list(columns) if columns is not None else None)
    except (OSError, ValueError) as exc:
        raise OutputError(f"part file {path} cannot be read ({exc}); delete it and rerun to explain its images "
                          f"again") from None


def done_sources(out: Path) -> frozenset[str]:
    """Every source already in a part file: a rerun skips them."""
    done: set[str] = set()
    for path in part_files(out):
        done.update(read_part(path, ["source"]).column("source").to_pylist())
    return frozenset(done)


def read_results(out: str | Path, columns: Iterable[str] | None = None):
    """The whole result table of OUT (every part), one row per source (a detection run's: per source and instance),
    sorted by source (and instance); a block written twice counts once."""
    import pyarrow as pa

    out = Path(out)
    files = part_files(out)
    if not files:
        raise OutputError(f"{out} holds no results ({out / PARTS / PART_GLOB} matches nothing)")
    if columns is not None:
        columns = list(dict.fromkeys(["source", *columns]))
    import pyarrow.parquet as pq

    per_instance = "instance" in pq.read_schema(files[0]).names  # detection: one row per (source, instance)
    if columns is not None and per_instance:
        columns = list(dict.fromkeys([*columns, "instance"]))
    table = pa.concat_tables([read_part(path, columns) for path in files])
    sources = table.column("source").to_pylist()
    instances = table.column("instance").to_pylist() if per_instance else [None] * len(sources)
    keys = [(s, -1 if k is None else k) for s, k in zip(sources, instances)]
    order = sorted(range(table.num_rows), key=keys.__getitem__)
    table = table.take(order)
    keys = [keys[i] for i in order]
    first = [i for i, key in enumerate(keys) if i == 0 or key != keys[i - 1]]
    return table.take(first) if len(first) != table.num_rows else table

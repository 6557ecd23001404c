"""What to explain: image paths from folders (recursive), globs, text/CSV lists and Parquet tables, as a Ray Dataset
of rows (source, bytes, error) whose bytes are read by Ray tasks; a file that cannot be read becomes an error row.

Local paths and `file://` URIs work here; other URIs (`s3://`, `gs://`, ...) are read through pyarrow's file systems
where the installed pyarrow has them, as Ray's own readers do.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..cli.shared import IMAGE_EXTENSIONS
from ..errors import InputError, OutputError
from .regions import REGION_COLUMN, region_text
from ..file_reading import not_regular_reason, read_regular_file

LIST_SUFFIXES = (".txt", ".lst", ".csv")
TABLE_SUFFIXES = (".parquet", ".pq")
PATH_COLUMNS = ("path", "image_path", "file", "filename", "uri", "image")  # a CSV list's or table's path column
BYTES_COLUMNS = ("image", "bytes", "image_bytes", "content", "data")  # a table's encoded-image column
ID_COLUMNS = ("source", "path", "id", "name", "filename", "file", "key")  # a table's row identity, beside bytes
# Reading is I/O: every reading task (Parquet reads, column selection, reading listed files) asks Ray for no CPU, so
# that it still runs when the explaining actors hold every CPU (--workers equal to Ray's CPU count); a read task
# asking for Ray Data's default of 1 CPU would wait for a free one forever.
READER_CPUS = 0


@dataclass
class InputPlan:
    """Image paths to read (absolute local paths or URIs, in a stable order) and Parquet tables to read rows from."""

    paths: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)


def is_uri(text: str) -> bool:
    """True for 's3://bucket/key', 'file:///tmp/x' and the like."""
    return "://" in text


def plan_inputs(inputs: Sequence[str], output: str | os.PathLike | None = None) -> InputPlan:
    """Expand each INPUT: a folder (recursively, its image files), a glob, a .txt/.lst/.csv list of paths, a Parquet
    table (or a folder given with a `.parquet` suffix), or one image file. Paths repeat only once. An `output`
    folder that is an input folder, lies inside one or holds an input is refused (check_output_apart); files a glob
    matches under it are left out. Every input table's Parquet footer is read here, before Ray starts: a truncated
    or foreign file is an InputError naming it."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [os.fspath(inputs)]
    plan = InputPlan()
    for item in map(os.fspath, inputs):
        suffix = Path(item.split("?")[0]).suffix.lower()
        if suffix in TABLE_SUFFIXES:
            plan.tables.append(_readable_table(item if is_uri(item) else os.path.abspath(_existing(item))))
        elif is_uri(item):
            plan.paths += _uri_images(item)
        elif os.path.isdir(item):
            plan.paths += _folder_images(item)
        elif glob.has_magic(item) and not os.path.exists(item):
            matches = sorted(os.path.abspath(p) for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not matches:
                raise InputError(f"the glob {item!r} matches no file")
            plan.paths += matches
        elif suffix in LIST_SUFFIXES:
            plan.paths += _listed_paths(_existing(item))
        else:
            plan.paths.append(os.path.abspath(_existing(item)))
    plan.paths = list(dict.fromkeys(plan.paths))
    if output is not None:
        check_output_apart(inputs, output)
        inside = os.path.join(os.path.realpath(output), "")
        plan.paths = [p for p in plan.paths if is_uri(p) or not os.path.realpath(p).startswith(inside)]
    if not plan.paths and not plan.tables:
        raise InputError(f"no images found in {', '.join(inputs)} (folders are searched recursively for "
                         f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
    return plan


def _existing(path: str) -> str:
    """The path, or an InputError when it does not exist."""
    if not os.path.exists(path):
        raise InputError(f"input {path!r} does not exist (give a folder, a glob, a .txt/.csv list, a .parquet table "
                         f"or an image file)")
    reason = not_regular_reason(path)
    if reason is not None and not os.path.isdir(path):  # a FIFO would block the run, a device never ends
        raise InputError(f"input {path!r} is not a regular file (it is {reason}); give a folder, a list, a table "
                         f"or an image file")
    return path


def _within(path: str, folder: str) -> bool:
    """True when `path` is `folder` or lies under it (both real, absolute paths)."""
    return path == folder or path.startswith(os.path.join(folder, ""))


def check_output_apart(inputs: Sequence[str], output: str | os.PathLike) -> None:
    """Refuse an output folder that is an input folder, lies inside one, or holds an input (a folder, list, table
    or image): the run would read its own results as images, or write among the user's files."""
    out = os.path.realpath(output)
    for item in map(os.fspath, inputs):
        if is_uri(item) or (glob.has_magic(item) and not os.path.exists(item)):
            continue  # a glob's matches under OUT are left out of the plan instead
        given = os.path.realpath(item)
        if given == out:
            raise OutputError(f"the output folder {os.fspath(output)!r} is the input folder {item!r}; give the "
                              f"results a folder of their own (e.g. --out {os.path.basename(out) or 'out'}-explained)")
        if os.path.isdir(given) and _within(out, given):
            raise OutputError(f"the output folder {os.fspath(output)!r} lies inside the input folder {item!r}, whose "
                              f"images are searched recursively; choose an output folder outside it")
        if _within(given, out):
            raise OutputError(f"the input {item!r} lies inside the output folder {os.fspath(output)!r}; choose an "
                              f"output folder that holds no input")


def _readable_table(table: str) -> str:
    """The table (a Parquet file, or a folder of them), or an InputError naming the first file whose footer cannot
    be read (truncated, still being written, or not Parquet): checked here so that Ray never starts on it."""
    import pyarrow.parquet as pq
    from pyarrow import fs

    try:
        filesystem, path = fs.FileSystem.from_uri(table) if is_uri(table) else (fs.LocalFileSystem(), table)
        if filesystem.get_file_info(path).type == fs.FileType.Directory:
            entries = filesystem.get_file_info(fs.FileSelector(path, recursive=True))
            files = sorted(e.path for e in entries if e.type == fs.FileType.File  # the files Ray reads there
                           and e.path.lower().endswith(".parquet")
                           and not any(part.startswith((".", "_")) for part in e.path[len(path):].split("/")))
        else:
            files = [path]
    except Exception as exc:  # pyarrow raises several types for unknown schemes, credentials and network failures
        raise InputError(f"cannot open the input table {table!r} ({exc})") from None
    if not files:
        raise InputError(f"the input table folder {table!r} holds no Parquet file")
    for file in files:
        try:
            pq.read_metadata(file, filesystem=filesystem)
        except Exception as exc:  # ArrowInvalid for a bad footer, OSError for an unreadable file
            reason = str(exc).split(". ")[0].strip().rstrip(".") or type(exc).__name__
            raise InputError(f"input table {file!r} is not a readable Parquet file ({reason}): is it truncated or "
                             f"still being written? Replace it, or leave it out of the inputs") from None
    return table


def _is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _folder_images(folder: str) -> list[str]:
    """Every image file under the folder, recursively, sorted by path."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [os.path.abspath(os.path.join(root, name)) for name in sorted(files) if _is_image_name(name)]
    return found


def _uri_images(uri: str) -> list[str]:
    """A URI of one file, or of a folder whose image files are listed recursively through pyarrow's file systems."""
    from pyarrow import fs

    try:
        filesystem, path = fs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(path)
    except Exception as exc:  # pyarrow raises several types for unknown schemes, credentials and network failures
        raise InputError(f"cannot open {uri!r} ({exc}); check the URI and that pyarrow supports its scheme") from None
    if info.type == fs.FileType.NotFound:
        raise InputError(f"input {uri!r} does not exist")
    if info.type == fs.FileType.File:
        return [uri]
    scheme = uri.split("://", 1)[0]
    entries = filesystem.get_file_info(fs.FileSelector(path, recursive=True))
    return sorted(f"{scheme}://{e.path}" for e in entries if e.type == fs.FileType.File and _is_image_name(e.path))


def _listed_paths(list_file: str) -> list[str]:
    """Paths in a text list (one per line, '#' comments) or a CSV (its header names the path column, one of
    PATH_COLUMNS), relative paths taken from the list's own folder. A list that is not UTF-8 text, a CSV that
    cannot be parsed or has no path column is an InputError naming the file."""
    base = os.path.dirname(os.path.abspath(list_file))
    try:
        with open(list_file, newline="", encoding="utf-8") as handle:
            if list_file.lower().endswith(".csv"):
                entries = _csv_paths(list_file, handle)
            else:
                entries = [line for line in handle.read().splitlines() if not line.lstrip().startswith("#")]
    except UnicodeDecodeError as exc:
        raise InputError(f"list file {list_file!r} is not UTF-8 text (byte {exc.start}); give a text list of paths, "
                         f"one per line, or a CSV with a path column") from None
    except OSError as exc:
        raise InputError(f"list file {list_file!r} cannot be read: {exc.strerror or exc}") from None
    paths = [entry.strip() for entry in entries if entry.strip()]
    return [p if is_uri(p) else os.path.abspath(os.path.join(base, p)) for p in paths]


def _csv_paths(list_file: str, handle) -> list[str]:
    """The path column's entries of a CSV list (the first header name found among PATH_COLUMNS)."""
    reader = csv.reader(handle, strict=True)
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise InputError(f"CSV list {list_file!r} cannot be parsed (line {reader.line_num}: {exc}); fix its quoting, "
                         f"or give a .txt list with one path per line") from None
    header = [cell.strip() for cell in rows[0]] if rows else []
    lowered = [cell.lower() for cell in header]
    column = next((lowered.index(c) for c in PATH_COLUMNS if c in lowered), None)
    if column is None:
        found = ", ".join(repr(c) for c in header) if header else "none (the file is empty)"
        hint = (" (its first line looks like an image path: add a header line `path`)"
                if header and _is_image_name(header[0]) else "")
        raise InputError(f"CSV list {list_file!r} needs a column named {PATH_COLUMNS[0]!r} (or one of "
                         f"{', '.join(PATH_COLUMNS[1:])}) holding the image paths; its columns: {found}{hint}")
    short = next((number for number, row in enumerate(rows[1:], start=2) if row and len(row) <= column), None)
    if short is not None:
        raise InputError(f"CSV list {list_file!r}: line {short} has no {header[column]!r} field (the header has "
                         f"{len(header)} columns); give every row its path")
    return [row[column] for row in rows[1:] if row]


def read_source_bytes(source: str) -> tuple[bytes | None, str | None]:
    """(the file's bytes, None) or (None, the reason it cannot be read): a local path or a URI."""
    try:
        if is_uri(source):
            from pyarrow import fs

            filesystem, path = fs.FileSystem.from_uri(source)
            with filesystem.open_input_stream(path) as stream:
                return stream.readall(), None
        return read_regular_file(source), None  # a FIFO or a device is refused, never read
    except InputError as exc:
        return None, str(exc)
    except FileNotFoundError:
        return None, f"image file {source!r} does not exist"
    except IsADirectoryError:
        return None, f"image path {source!r} is a directory, not an image file"
    except OSError as exc:
        return None, f"image file {source!r} cannot be read: {exc.strerror or exc}"
    except Exception as exc:  # pyarrow's remote file systems raise their own types
        return None, f"image file {source!r} cannot be read: {exc}"


def _rows_table(sources: Iterable[str], data: Iterable[bytes | None], errors: Iterable[str | None],
                regions: Iterable[str | None] | None = None):
    """The reader's output block: source (string), bytes (binary, null for an error row), error (string or null),
    region (string: the row's region, dataset/regions.py; null for the default, and for every listed path)."""
    import pyarrow as pa

    sources = list(sources)
    regions = [None] * len(sources) if regions is None else list(regions)
    return pa.table({"source": pa.array(sources, pa.string()), "bytes": pa.array(list(data), pa.binary()),
                     "error": pa.array(list(errors), pa.string()), REGION_COLUMN: pa.array(regions, pa.string())})


def read_path_rows(batch):
    """Ray task: a pyarrow batch of `source` paths -> (source, bytes, error) rows."""
    sources = batch.column("source").to_pylist()
    results = [read_source_bytes(source) for source in sources]
    return _rows_table(sources, (r[0] for r in results), (r[1] for r in results))


@dataclass(frozen=True)
class TableColumns:
    """Which column of an input table holds the image (bytes, or a path to read) and which names each row."""

    image: str
    image_is_path: bool
    identity: str | None
    region: str | None = None  # the table's region column (segmentation bundles), if it has one
    base: str | None = None  # the table's folder: relative mask paths in the region column start there


def table_columns(schema, image_column: str | None = None, id_column: str | None = None) -> TableColumns:
    """Find the image column (binary: encoded bytes; string: a path) and the identity column of a table schema."""
    import pyarrow as pa

    types = dict(zip(schema.names, schema.types))
    if image_column is not None and image_column not in types:
        raise InputError(f"the input table has no column {image_column!r}; its columns: {', '.join(schema.names)}")
    candidates = [image_column] if image_column else [c for c in (*BYTES_COLUMNS, *PATH_COLUMNS) if c in types]
    for name in candidates:
        kind = types[name]
        if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            identity = id_column or next((c for c in ID_COLUMNS if c in types and c != name
                                          and pa.types.is_string(types[c])), None)
            if identity is not None and identity not in types:
                raise InputError(f"the input table has no column {identity!r}; its columns: {', '.join(schema.names)}")
            return TableColumns(name, False, identity)
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            return TableColumns(name, True, id_column)
    raise InputError(f"the input table has no image column (binary bytes or string paths) among "
                     f"{', '.join(schema.names)}; name it with --image-column")


def read_table_rows(batch, columns: TableColumns, done: frozenset[str]):
    """Ray task: rows of an input table -> (source, bytes, error) rows, the already-done sources dropped.

    A path column is read like a list of paths; a bytes column is taken as is, each row named by its identity
    column, or by 'sha256:<hash of its bytes>' when the table has none."""
    values = batch.column(columns.image).to_pylist()
    given = batch.column(columns.region).to_pylist() if columns.region else [None] * len(values)
    regions = [region_text(value, columns.base) for value in given]
    if columns.image_is_path:
        sources = [str(v) if v is not None else "" for v in values]
        keep = [i for i, s in enumerate(sources) if s not in done]
        results = [read_source_bytes(sources[i]) if sources[i] else (None, "empty image path") for i in keep]
        return _rows_table([sources[i] for i in keep], (r[0] for r in results), (r[1] for r in results),
                           [regions[i] for i in keep])
    names = batch.column(columns.identity).to_pylist() if columns.identity else None
    sources = [str(names[i]) if names is not None else _content_id(v) for i, v in enumerate(values)]
    keep = [i for i, s in enumerate(sources) if s not in done]
    return _rows_table([sources[i] for i in keep], (values[i] for i in keep),
                       (None if values[i] else "the image column is empty in this row" for i in keep),
                       [regions[i] for i in keep])


def _content_id(data: bytes | None) -> str:
    """A row's identity when its table names none: the SHA-256 of its bytes."""
    return "sha256:" + hashlib.sha256(data or b"").hexdigest()


def table_rows(ray, plan: InputPlan) -> int:
    """How many rows the plan's input tables hold (from the Parquet metadata)."""
    return sum(parquet_rows(ray, table).count() for table in plan.tables)


def parquet_rows(ray, table: str):
    """The lazy Ray Dataset of a Parquet table (a file, a folder of parts or a URI), every one of its tasks at
    READER_CPUS. Ray Data's newer Parquet reader (DataSourceV2, the default of Ray 2.60) lists the files in a task
    that always asks for 1 CPU whatever read_parquet's num_cpus says, so the table is read with the reader whose
    tasks all follow num_cpus."""
    context = ray.data.DataContext.get_current()
    newer = getattr(context, "use_datasource_v2", False)
    context.use_datasource_v2 = False  # the Dataset keeps a copy of the context it was made with
    try:
        return ray.data.read_parquet(table, num_cpus=READER_CPUS)
    finally:
        context.use_datasource_v2 = newer


def source_dataset(ray, plan: InputPlan, done: frozenset[str], batch_images: int, image_column: str | None = None,
                   id_column: str | None = None):
    """The Ray Dataset of (source, bytes, error) rows still to explain: listed paths minus the done ones, read in
    blocks of `batch_images`, then the rows of each input table."""
    parts = []
    todo = [p for p in plan.paths if p not in done]
    if todo:
        blocks = max(1, -(-len(todo) // batch_images))
        listed = ray.data.from_items([{"source": p} for p in todo], override_num_blocks=blocks)
        parts.append(listed.map_batches(read_path_rows, batch_size=batch_images, batch_format="pyarrow",
                                        num_cpus=READER_CPUS))
    for table in plan.tables:
        rows = parquet_rows(ray, table)
        schema = rows.schema().base_schema
        columns = table_columns(schema, image_column, id_column)
        if REGION_COLUMN in schema.names and columns.image != REGION_COLUMN:  # a region per row (segmentation)
            columns = replace(columns, region=REGION_COLUMN, base=None if is_uri(table) else
                              (table if os.path.isdir(table) else os.path.dirname(table)))
        wanted = [columns.image] + ([columns.identity] if columns.identity and not columns.image_is_path else [])
        wanted += [columns.region] if columns.region else []
        parts.append(rows.select_columns(list(dict.fromkeys(wanted)), num_cpus=READER_CPUS).map_batches(
            read_table_rows, fn_kwargs={"columns": columns, "done": done}, batch_size=batch_images,
            batch_format="pyarrow", num_cpus=READER_CPUS))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])

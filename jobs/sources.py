"""Input datasets: find their files, count rows from metadata, read row ranges.

Planning needs only file metadata (row counts, schemas), never the text; a
worker then reads just its rows and columns. Supported: Parquet files,
directories and globs; Arrow IPC files (Feather v2) and streams; and directories
written by ``datasets.Dataset.save_to_disk`` (Arrow streams listed in state.json).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from jobs.errors import InputError
from jobs.storage import Storage

PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")
ARROW_SUFFIXES = (".arrow", ".feather", ".ipc")
ARROW_FILE_MAGIC = b"ARROW1"


@dataclass(frozen=True)
class SourceFile:
    """One input file with what planning needs to know about it."""

    url: str
    format: str  # "parquet" | "arrow_file" | "arrow_stream"
    num_rows: int
    size: int
    modified: str

    def identity(self) -> str:
        return f"{self.url}|{self.size}|{self.modified}|{self.num_rows}"


def discover(location: str, input_format: str = "auto") -> list[SourceFile]:
    """Every input file under ``location`` in a stable order; InputError when none."""
    storage = Storage.at(location)
    fs, root = storage.fs, storage.root
    if any(ch in root for ch in "*?["):
        paths = sorted(fs.glob(root))
    elif fs.isdir(root):
        paths = _directory_files(storage, input_format)
    elif fs.exists(root):
        paths = [root]
    else:
        raise InputError(f"input {location!r} does not exist")
    files = [describe(storage, path, input_format) for path in paths]
    if not files:
        raise InputError(f"input {location!r} holds no Parquet or Arrow files")
    return files


def describe(storage: Storage, path: str, input_format: str = "auto") -> SourceFile:
    """Read the metadata of one file (row count, size, modification time)."""
    fmt = _format_of(storage, path, input_format)
    info = storage.fs.info(path)
    modified = str(info.get("mtime") or info.get("LastModified") or info.get("ETag") or "")
    url = _url(storage, path)
    try:
        num_rows = _count_rows(storage, path, fmt)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read {url}: {exc}") from exc
    return SourceFile(url=url, format=fmt, num_rows=num_rows, size=int(info.get("size") or 0), modified=modified)


def fingerprint(files: list[SourceFile]) -> str:
    """Hash of the files' names, sizes, times and row counts: changes when any file does."""
    digest = hashlib.sha256()
    for source in files:
        digest.update(source.identity().encode())
    return digest.hexdigest()[:16]


def schema_of(source: SourceFile) -> pa.Schema:
    storage, path = _split(source.url)
    try:
        if source.format == "parquet":
            with storage.fs.open(path, "rb") as handle:
                return pq.read_schema(handle)
        with storage.fs.open(path, "rb") as handle:
            reader = ipc.open_file(handle) if source.format == "arrow_file" else ipc.open_stream(handle)
            return reader.schema
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read the schema of {source.url}: {exc}") from exc


def read_rows(source: SourceFile, start: int, stop: int, columns: list[str]) -> pa.Table:
    """Rows ``[start, stop)`` of ``columns`` from one file, reading little else."""
    storage, path = _split(source.url)
    try:
        if source.format == "parquet":
            return _read_parquet_range(storage, path, start, stop, columns)
        return _read_arrow_range(storage, path, source.format, start, stop, columns)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read rows {start}-{stop} of {source.url}: {exc}") from exc
    except KeyError as exc:
        raise InputError(f"{source.url} has no column {exc}") from exc


def _read_parquet_range(storage: Storage, path: str, start: int, stop: int, columns: list[str]) -> pa.Table:
    with storage.fs.open(path, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        missing = [c for c in columns if c not in parquet.schema_arrow.names]
        if missing:
            raise KeyError(missing[0])
        groups, first_row, offset = [], None, 0
        for index in range(parquet.num_row_groups):
            rows = parquet.metadata.row_group(index).num_rows
            if offset < stop and offset + rows > start:
                groups.append(index)
                first_row = offset if first_row is None else first_row
            offset += rows
        if not groups:
            return parquet.schema_arrow.empty_table().select(columns)
        table = parquet.read_row_groups(groups, columns=columns)
    assert first_row is not None
    return table.slice(start - first_row, stop - start)


def _read_arrow_range(storage: Storage, path: str, fmt: str, start: int, stop: int, columns: list[str]) -> pa.Table:
    source = pa.memory_map(path) if not storage.remote else storage.fs.open(path, "rb")
    with source:
        reader = ipc.open_file(source) if fmt == "arrow_file" else ipc.open_stream(source)
        table = reader.read_all()
    return table.select(columns).slice(start, stop - start)


def _directory_files(storage: Storage, input_format: str) -> list[str]:
    fs, root = storage.fs, storage.root
    if fs.exists(posixpath.join(root, "dataset_dict.json")):
        splits = json.loads(storage.read_bytes("dataset_dict.json")).get("splits", [])
        raise InputError(
            f"{storage.url()} is a DatasetDict; point `input` at one split, e.g. {storage.url(splits[0])}"
            if splits
            else f"{storage.url()} is a DatasetDict with no splits"
        )
    if fs.exists(posixpath.join(root, "state.json")):
        state = json.loads(storage.read_bytes("state.json"))
        return [posixpath.join(root, entry["filename"]) for entry in state.get("_data_files", [])]
    suffixes = PARQUET_SUFFIXES + ARROW_SUFFIXES
    found = [p for p in fs.find(root) if p.endswith(suffixes)]
    return sorted(p for p in found if not _hidden(posixpath.relpath(p, root)))


def _hidden(relative: str) -> bool:
    return any(part.startswith((".", "_")) for part in relative.split("/"))


def _format_of(storage: Storage, path: str, input_format: str) -> str:
    if input_format == "parquet" or (input_format == "auto" and path.endswith(PARQUET_SUFFIXES)):
        return "parquet"
    with storage.fs.open(path, "rb") as handle:
        head = handle.read(len(ARROW_FILE_MAGIC))
    if head == b"PAR1":
        return "parquet"
    if input_format in ("auto", "arrow", "datasets"):
        return "arrow_file" if head == ARROW_FILE_MAGIC else "arrow_stream"
    raise InputError(f"cannot tell the format of {path}; set input_format")


def _count_rows(storage: Storage, path: str, fmt: str) -> int:
    if fmt == "parquet":
        with storage.fs.open(path, "rb") as handle:
            return int(pq.ParquetFile(handle).metadata.num_rows)
    source = pa.memory_map(path) if not storage.remote else storage.fs.open(path, "rb")
    with source:
        if fmt == "arrow_file":
            reader = ipc.open_file(source)
            return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
        return sum(batch.num_rows for batch in ipc.open_stream(source))


def _url(storage: Storage, path: str) -> str:
    if not storage.remote:
        return path
    protocol = storage.url().split("://")[0]
    return f"{protocol}://{path}"


def _split(url: str) -> tuple[Storage, str]:
    storage = Storage.at(url)
    return storage, storage.root

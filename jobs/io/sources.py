"""Input datasets: find their files, count rows from metadata, read row ranges.

Planning needs only file metadata (row counts, schemas), never the text; a
worker then reads just its rows and columns. Supported: Parquet files,
directories and globs; Arrow IPC files (Feather v2) and streams; and directories
written by ``datasets.Dataset.save_to_disk`` (Arrow streams listed in state.json).

Each format is one module of :mod:`jobs.io.readers`, chosen from its registries.
Inputs that need a loader go through ``datasets.load_dataset`` on the producer: a
hub dataset ``hf://datasets/NAME`` (with the spec's ``dataset`` config, split and
revision) and JSON Lines / CSV files. Their rows are then read from the Arrow
files in the ``datasets`` cache (or, for a slice of a split or an in-memory
dataset, from one Parquet copy written there once), so workers must see the
producer's ``HF_HOME`` / ``HF_DATASETS_CACHE``: the same machine, or a shared
volume as in the docker-compose file. Anywhere else, save the dataset to shared
storage (``save_to_disk`` or Parquet) and point ``input`` there.
"""

from __future__ import annotations

import hashlib
import posixpath
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from jobs.errors import InputError
from jobs.io.readers import DATA_SUFFIXES, datasets_loader, format_of, reader_for
from jobs.io.readers.datasets_dir import saved_dataset_files
from jobs.io.readers.loaded import DatasetChoice, discover_loaded
from jobs.io.storage import Storage

if TYPE_CHECKING:
    from jobs.settings import Settings

__all__ = ["SourceFile", "check_source", "datasets_loader", "describe", "describe_all", "discover", "file_stamp",
           "fingerprint", "read_rows", "schema_of"]
PLAN_READERS = 32  # input files whose metadata (size, time, Parquet footer) is read at once
Progress = Callable[[int, int], None]
"""Called as ``progress(files described, files in all)`` while planning."""
# Schemas read with the row counts, so that checking columns opens no file a second time.
_schemas: dict[str, pa.Schema] = {}
_schemas_lock = threading.Lock()


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


def discover(location: str, input_format: str = "auto", dataset: DatasetChoice | None = None,
             progress: Progress | None = None) -> list[SourceFile]:
    """Every input file under ``location`` in a stable order; InputError when none.

    The files' metadata is read ``PLAN_READERS`` files at a time (on object storage each
    file costs a few requests); ``progress(done, total)`` is called as files are described.
    """
    loader = datasets_loader(location, input_format)
    if loader is not None:
        return discover_loaded(*loader, dataset, describe=_describe_file, rows=lambda source: source.num_rows)
    storage = Storage.at(location)
    fs, root = storage.fs, storage.root
    if any(ch in root for ch in "*?["):
        paths = sorted(fs.glob(root))
    elif fs.isdir(root):
        paths = _directory_files(storage)
    elif fs.exists(root):
        paths = [root]
    else:
        raise InputError(f"input {location!r} does not exist")
    files = describe_all(storage, paths, input_format, progress)
    if not files:
        raise InputError(f"input {location!r} holds no Parquet or Arrow files")
    return files


def file_stamp(storage: Storage, path: str) -> tuple[int, str]:
    """Size and modification stamp of a file: what the input fingerprint compares."""
    info = storage.fs.info(path)
    modified = str(info.get("mtime") or info.get("LastModified") or info.get("ETag") or "")
    return int(info.get("size") or 0), modified


def describe(storage: Storage, path: str, input_format: str = "auto") -> SourceFile:
    """Read the metadata of one file (row count, size, modification time; a Parquet file's schema too)."""
    fmt = format_of(storage, path, input_format)
    size, modified = file_stamp(storage, path)
    url = _url(storage, path)
    try:
        num_rows, schema = reader_for(fmt).describe(storage, path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read {url}: {exc}") from exc
    source = SourceFile(url=url, format=fmt, num_rows=num_rows, size=size, modified=modified)
    if schema is not None:
        with _schemas_lock:
            _schemas[source.identity()] = schema
    return source


def _describe_file(name: str, input_format: str) -> SourceFile:
    storage = Storage.at(name)
    return describe(storage, storage.root, input_format)


def describe_all(storage: Storage, paths: list[str], input_format: str = "auto", progress: Progress | None = None,
                 threads: int = PLAN_READERS) -> list[SourceFile]:
    """:func:`describe` every path, ``threads`` at a time; in the order given."""
    total = len(paths)
    done = 0
    lock = threading.Lock()

    def one(path: str) -> SourceFile:
        nonlocal done
        source = describe(storage, path, input_format)
        if progress is not None:
            with lock:
                done += 1
                progress(done, total)
        return source

    if total <= 1 or threads <= 1:
        return [one(path) for path in paths]
    with ThreadPoolExecutor(min(threads, total), thread_name_prefix="plan") as pool:
        return list(pool.map(one, paths))


def check_source(source: SourceFile, start: int, stop: int, settings: Settings) -> None:
    """Before a shard runs: its input file must be allowed here, and where it was at submit, unchanged."""
    if not settings.allows(source.url):
        raise InputError(f"input file {source.url} is outside BATCHFORMERS_ALLOWED_ROOTS on this worker")
    storage = Storage.at(source.url)
    if storage.remote:
        storage.fs.invalidate_cache(storage.root)
    try:
        size, modified = file_stamp(storage, storage.root)
    except FileNotFoundError:
        raise InputError(
            f"input file {source.url} (rows {start}-{stop}) is gone since the job was submitted; "
            "restore it, or resubmit the job with a new output"
        ) from None
    if size != source.size or modified != source.modified:
        raise InputError(
            f"input file {source.url} changed since the job was submitted (size {source.size} -> {size}, "
            f"modified {source.modified} -> {modified}); resubmit the job with a new output to process it"
        )


def fingerprint(files: list[SourceFile]) -> str:
    """Hash of the files' names, sizes, times and row counts: changes when any file does."""
    digest = hashlib.sha256()
    for source in files:
        digest.update(source.identity().encode())
    return digest.hexdigest()[:16]


def schema_of(source: SourceFile) -> pa.Schema:
    with _schemas_lock:
        known = _schemas.pop(source.identity(), None)
    if known is not None:
        return known
    storage, path = _split(source.url)
    try:
        return reader_for(source.format).schema(storage, path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read the schema of {source.url}: {exc}") from exc


def read_rows(source: SourceFile, start: int, stop: int, columns: list[str]) -> pa.Table:
    """Rows ``[start, stop)`` of ``columns`` from one file, reading little else."""
    storage, path = _split(source.url)
    try:
        return reader_for(source.format).read_range(storage, path, start, stop, columns)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read rows {start}-{stop} of {source.url}: {exc}") from exc
    except KeyError as exc:
        raise InputError(f"{source.url} has no column {exc}") from exc


def _directory_files(storage: Storage) -> list[str]:
    """A saved ``datasets`` directory's files, else every data file under the directory, sorted."""
    saved = saved_dataset_files(storage)
    if saved is not None:
        return saved
    found = [p for p in storage.fs.find(storage.root) if p.endswith(DATA_SUFFIXES)]
    return sorted(p for p in found if not _hidden(posixpath.relpath(p, storage.root)))


def _hidden(relative: str) -> bool:
    return any(part.startswith((".", "_")) for part in relative.split("/"))


def _url(storage: Storage, path: str) -> str:
    if not storage.remote:
        return path
    protocol = storage.url().split("://")[0]
    return f"{protocol}://{path}"


def _split(url: str) -> tuple[Storage, str]:
    storage = Storage.at(url)
    return storage, storage.root

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

import functools
import hashlib
import posixpath
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from jobs.errors import InputError
from jobs.io.readers import DATA_SUFFIXES, datasets_loader, format_of, reader_for
from jobs.io.readers.base import FileLayout
from jobs.io.readers.datasets_dir import saved_dataset_files
from jobs.io.readers.loaded import DatasetChoice, discover_loaded
from jobs.io.source_file import SourceFile
from jobs.io.storage import Storage

if TYPE_CHECKING:
    from jobs.settings import Settings

__all__ = ["SourceFile", "check_source", "datasets_loader", "probe", "probe_all", "discover", "file_stamp",
           "fingerprint", "forget_indexes", "forget_layouts", "read_rows", "read_units", "schema_of"]
PLAN_READERS = 32  # input files whose metadata (size, time, Parquet footer) is read at once
INDEX_CACHE_FILES = 64  # input files whose footer or batch rows a worker process remembers (a wide file's
# Parquet footer can be megabytes; a worker runs a file's shards close together, so few files are in use)
Progress = Callable[[int, int], None]
"""Called as ``progress(files described, files in all)`` while planning."""
# Layouts (schemas, read units) read with the row counts, so that checking columns and planning
# open no file a second time; planning forgets them when done (forget_layouts).
_layouts: dict[str, FileLayout] = {}
_layouts_lock = threading.Lock()


def discover(location: str, input_format: str = "auto", dataset: DatasetChoice | None = None,
             progress: Progress | None = None) -> list[SourceFile]:
    """Every input file under ``location`` in a stable order; InputError when none.

    The files' metadata is read ``PLAN_READERS`` files at a time (on object storage each
    file costs a few requests); ``progress(done, total)`` is called as files are described.
    """
    loader = datasets_loader(location, input_format)
    if loader is not None:
        return discover_loaded(*loader, dataset, probe=_probe_file, rows=lambda source: source.num_rows)
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
    files = probe_all(storage, paths, input_format, progress)
    if not files:
        raise InputError(f"input {location!r} holds no Parquet or Arrow files")
    return files


def file_stamp(storage: Storage, path: str) -> tuple[int, str]:
    """Size and modification stamp of a file: what the input fingerprint compares."""
    info = storage.fs.info(path)
    modified = str(info.get("mtime") or info.get("LastModified") or info.get("ETag") or "")
    return int(info.get("size") or 0), modified


def probe(storage: Storage, path: str, input_format: str = "auto") -> SourceFile:
    """Read the metadata of one file (row count, size, modification time, read units; a Parquet
    file's schema too), keeping its layout for :func:`schema_of` and :func:`read_units`."""
    fmt = format_of(storage, path, input_format)
    size, modified = file_stamp(storage, path)
    url = _url(storage, path)
    try:
        layout = reader_for(fmt).layout(storage, path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read {url}: {exc}") from exc
    source = SourceFile(url=url, format=fmt, num_rows=layout.rows, size=size, modified=modified)
    with _layouts_lock:
        _layouts[source.identity()] = layout
    return source


def _probe_file(name: str, input_format: str) -> SourceFile:
    storage = Storage.at(name)
    return probe(storage, storage.root, input_format)


def probe_all(storage: Storage, paths: list[str], input_format: str = "auto", progress: Progress | None = None,
                 threads: int = PLAN_READERS) -> list[SourceFile]:
    """:func:`probe` every path, ``threads`` at a time; in the order given."""
    total = len(paths)
    done = 0
    lock = threading.Lock()

    def one(path: str) -> SourceFile:
        nonlocal done
        source = probe(storage, path, input_format)
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
    with _layouts_lock:
        known = _layouts.get(source.identity())
    if known is not None and known.schema is not None:
        return known.schema
    storage, path = _split(source.url)
    try:
        return reader_for(source.format).schema(storage, path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read the schema of {source.url}: {exc}") from exc


def read_units(source: SourceFile) -> tuple[int, ...] | None:
    """Rows of each piece a range read of ``source`` decodes whole (:class:`FileLayout`'s ``units``)."""
    with _layouts_lock:
        known = _layouts.get(source.identity())
    if known is not None:
        return known.units
    storage, path = _split(source.url)
    try:
        return reader_for(source.format).layout(storage, path).units
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read {source.url}: {exc}") from exc


def forget_layouts(sources: list[SourceFile]) -> None:
    """Drop the layouts kept for ``sources`` (planning is done with them)."""
    with _layouts_lock:
        for source in sources:
            _layouts.pop(source.identity(), None)


def read_rows(source: SourceFile, start: int, stop: int, columns: list[str]) -> pa.Table:
    """Rows ``[start, stop)`` of ``columns`` from one file, reading little else.

    What a reader reads before any row (a Parquet footer, an Arrow file's batch headers: its
    :meth:`~jobs.io.readers.base.Reader.index`) is read once per process and file version, not once
    per shard: a worker runs many shards of one file. The version is ``source`` itself (url, size,
    modification stamp, rows), which :func:`check_source` holds the file to before every shard, so a
    file rewritten under its url is either refused there or, resubmitted, a new key here."""
    storage, path = _split(source.url)
    try:
        reader = reader_for(source.format)
        return reader.read_range(storage, path, start, stop, columns, _worker_index(source))
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read rows {start}-{stop} of {source.url}: {exc}") from exc
    except KeyError as exc:
        raise InputError(f"{source.url} has no column {exc}") from exc


@functools.lru_cache(maxsize=INDEX_CACHE_FILES)
def _worker_index(source: SourceFile) -> Any:
    storage, path = _split(source.url)
    return reader_for(source.format).index(storage, path)


def forget_indexes() -> None:
    """Drop the file indexes :func:`read_rows` remembers: the next read of each file is a first one."""
    _worker_index.cache_clear()


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

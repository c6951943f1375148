"""Input datasets: find their files, count rows from metadata, read row ranges.

Planning needs only file metadata (row counts, schemas), never the text; a
worker then reads just its rows and columns. Supported: Parquet files,
directories and globs; Arrow IPC files (Feather v2) and streams; and directories
written by ``datasets.Dataset.save_to_disk`` (Arrow streams listed in state.json).

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
import json
import os
import posixpath
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from jobs.errors import InputError
from jobs.io.storage import Storage

if TYPE_CHECKING:
    from jobs.settings import Settings
    from jobs.spec import DatasetOptions

PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")
ARROW_SUFFIXES = (".arrow", ".feather", ".ipc")
ARROW_FILE_MAGIC = b"ARROW1"
HUB_DATASETS = "hf://datasets/"
LOADER_SUFFIXES = {".jsonl": "json", ".ndjson": "json", ".json": "json", ".csv": "csv"}
LOADER_FORMATS = {"jsonl": "json", "csv": "csv"}
MATERIALIZED_DIR = "batchformers"
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


def discover(location: str, input_format: str = "auto", dataset: DatasetOptions | None = None,
             progress: Progress | None = None) -> list[SourceFile]:
    """Every input file under ``location`` in a stable order; InputError when none.

    The files' metadata is read ``PLAN_READERS`` files at a time (on object storage each
    file costs a few requests); ``progress(done, total)`` is called as files are described.
    """
    loader = datasets_loader(location, input_format)
    if loader is not None:
        return _discover_loaded(*loader, dataset)
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
    fmt = _format_of(storage, path, input_format)
    size, modified = file_stamp(storage, path)
    url = _url(storage, path)
    schema = None
    try:
        if fmt == "parquet":
            with storage.fs.open(path, "rb") as handle:
                metadata = pq.ParquetFile(handle).metadata
            num_rows, schema = int(metadata.num_rows), metadata.schema.to_arrow_schema()
        else:
            num_rows = _count_rows(storage, path, fmt)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read {url}: {exc}") from exc
    source = SourceFile(url=url, format=fmt, num_rows=num_rows, size=size, modified=modified)
    if schema is not None:
        with _schemas_lock:
            _schemas[source.identity()] = schema
    return source


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


def datasets_loader(location: str, input_format: str = "auto") -> tuple[str, dict[str, Any]] | None:
    """``(path, arguments)`` for ``datasets.load_dataset`` when ``location`` is read through it, else None."""
    hub = _hub_dataset(location)
    if hub is not None:
        return hub[0], {"revision": hub[1]}
    builder = LOADER_FORMATS.get(input_format)
    if builder is None and input_format == "auto":
        builder = next((b for suffix, b in LOADER_SUFFIXES.items() if location.lower().endswith(suffix)), None)
    return (builder, {"data_files": location}) if builder else None


def _hub_dataset(location: str) -> tuple[str, str | None] | None:
    """``hf://datasets/NAME[@REVISION]`` -> (NAME, REVISION); a path inside the repo is files, not a dataset."""
    if not location.startswith(HUB_DATASETS):
        return None
    repo, at, tail = location[len(HUB_DATASETS):].strip("/").partition("@")
    revision, _, inside = tail.partition("/")
    if not repo or inside or any(ch in repo for ch in "*?[") or len(repo.split("/")) > 2:
        return None
    return repo, (revision or None) if at else None


def _discover_loaded(path: str, arguments: dict[str, Any], options: DatasetOptions | None) -> list[SourceFile]:
    """Load with ``datasets.load_dataset`` and describe the Arrow (or Parquet) files holding its rows."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - a dependency of batchformers
        raise InputError("Please install `datasets` to read this input (`pip install datasets`)") from None
    if "data_files" in arguments:
        arguments = {**arguments, "data_files": _data_files(arguments["data_files"], path)}
    if options is not None:
        arguments = {**arguments, "name": options.config, "split": options.split,
                     "revision": options.revision or arguments.get("revision")}
    arguments = {"split": "train", **{k: v for k, v in arguments.items() if v is not None}}
    call = ", ".join([repr(path)] + [f"{k}={v!r}" for k, v in arguments.items()])
    try:
        loaded = datasets.load_dataset(path, **arguments)
    except Exception as exc:  # hub, network, file and format errors all surface here
        raise InputError(f"datasets.load_dataset({call}) failed: {exc}") from exc
    if not isinstance(loaded, datasets.Dataset):
        raise InputError(f"datasets.load_dataset({call}) gave a {type(loaded).__name__}, not one split; "
                         "set dataset.split")
    files = [entry["filename"] for entry in loaded.cache_files]
    sources = [describe(Storage.at(name), Storage.at(name).root, "datasets") for name in files]
    if loaded._indices is None and sources and sum(s.num_rows for s in sources) == loaded.num_rows:
        return sources
    return [_materialized(loaded, datasets.config.HF_DATASETS_CACHE)]


def _data_files(location: str, builder: str) -> str | list[str]:
    """A directory of JSON Lines/CSV files becomes globs of its matching files."""
    storage = Storage.at(location)
    if not storage.fs.isdir(storage.root):
        return location
    suffixes = [suffix for suffix, b in LOADER_SUFFIXES.items() if b == builder]
    patterns = [f"{location.rstrip('/')}/*{suffix}" for suffix in suffixes
                if storage.fs.glob(posixpath.join(storage.root, f"*{suffix}"))]
    if not patterns:
        raise InputError(f"input {location!r} holds no {'/'.join(suffixes)} files")
    return patterns


def _materialized(loaded: Any, cache: str | os.PathLike[str]) -> SourceFile:
    """One Parquet copy of a dataset whose rows are not its cache files 1:1, written once per fingerprint."""
    folder = Path(cache) / MATERIALIZED_DIR
    target = folder / f"{loaded._fingerprint}.parquet"
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / f".{target.name}.{uuid.uuid4().hex}.tmp"
        loaded.to_parquet(str(temporary))
        os.replace(temporary, target)
    storage = Storage.at(str(target))
    return describe(storage, storage.root, "parquet")


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

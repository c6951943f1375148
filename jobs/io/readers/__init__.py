"""Input formats, one module each, chosen from the registries below (never by ``if/elif`` over names).

- ``READERS``: file formats by the name a manifest stores (:class:`~jobs.io.readers.base.Reader`):
  Parquet (:mod:`.parquet`), Arrow IPC files and streams (:mod:`.arrow`);
- ``LOADERS``: inputs read through ``datasets.load_dataset`` (:mod:`.loaded`), each a function
  ``(location, input_format) -> (path, arguments) | None``: hub datasets (:mod:`.hub`) and
  JSON Lines / CSV (:mod:`.text`);
- a directory saved by ``datasets`` (:mod:`.datasets_dir`) is a list of Arrow stream files.

Adding a file format is one module with a :class:`Reader` and one line in ``READERS``; adding a
format that ``datasets`` loads is one module with a ``loader_call`` and one line in ``LOADERS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jobs.errors import InputError
from jobs.io.readers import hub, text
from jobs.io.readers.arrow import ArrowFileReader, ArrowStreamReader
from jobs.io.readers.base import Reader
from jobs.io.readers.parquet import ParquetReader
from jobs.io.storage import Storage

READERS: dict[str, Reader] = {reader.name: reader for reader in (
    ParquetReader(),
    ArrowFileReader(),
    ArrowStreamReader(),
)}
LoaderCall = Callable[[str, str], tuple[str, dict[str, Any]] | None]
LOADERS: tuple[LoaderCall, ...] = (
    hub.loader_call,
    text.loader_call,
)
DATA_SUFFIXES = tuple(dict.fromkeys(suffix for reader in READERS.values() for suffix in reader.suffixes))
MAGIC_BYTES = max(len(reader.magic or b"") for reader in READERS.values())


def reader_for(name: str) -> Reader:
    """The reader of a manifest's file ``format``; InputError naming the known ones."""
    try:
        return READERS[name]
    except KeyError:
        raise InputError(f"unknown input file format {name!r}; known: {', '.join(READERS)}") from None


def datasets_loader(location: str, input_format: str = "auto") -> tuple[str, dict[str, Any]] | None:
    """``(path, arguments)`` for ``datasets.load_dataset`` when ``location`` is read through it, else None."""
    return next((call for call in (loader(location, input_format) for loader in LOADERS) if call), None)


def format_of(storage: Storage, path: str, input_format: str = "auto") -> str:
    """The file format of ``path``: the one reader ``input_format`` or the suffix names, else told by the
    file's first bytes, else the format without a signature that ``input_format`` allows."""
    named = [reader for reader in READERS.values() if input_format in reader.input_formats
             or (input_format == "auto" and path.endswith(reader.suffixes))]
    if len(named) == 1:
        return named[0].name
    with storage.open_ranges(path) as handle:  # without read-ahead: a few bytes, not the first 50 MB
        head = handle.read(MAGIC_BYTES)
    signed = [reader for reader in READERS.values() if reader.magic is not None and head.startswith(reader.magic)]
    unsigned = [reader for reader in READERS.values() if reader.magic is None
                and (input_format == "auto" or input_format in reader.input_formats)]
    if signed or unsigned:
        return (signed or unsigned)[0].name
    raise InputError(f"cannot tell the format of {path}; set input_format")

"""JSON Lines and CSV files (or directories of them), loaded with ``datasets.load_dataset`` (:mod:`.loaded`)."""

from __future__ import annotations

import posixpath
from typing import Any

from jobs.errors import InputError
from jobs.io.storage import Storage

SUFFIXES = {".jsonl": "json", ".ndjson": "json", ".json": "json", ".csv": "csv"}  # suffix -> datasets builder
FORMATS = {"jsonl": "json", "csv": "csv"}  # the spec's input_format -> datasets builder


def loader_call(location: str, input_format: str) -> tuple[str, dict[str, Any]] | None:
    """``(builder, arguments)`` for ``datasets.load_dataset`` when ``location`` is JSON Lines or CSV."""
    builder = FORMATS.get(input_format)
    if builder is None and input_format == "auto":
        builder = next((b for suffix, b in SUFFIXES.items() if location.lower().endswith(suffix)), None)
    return (builder, {"data_files": location}) if builder else None


def data_files(location: str, builder: str) -> str | list[str]:
    """A directory of JSON Lines/CSV files becomes globs of its matching files."""
    storage = Storage.at(location)
    if not storage.fs.isdir(storage.root):
        return location
    suffixes = [suffix for suffix, b in SUFFIXES.items() if b == builder]
    patterns = [f"{location.rstrip('/')}/*{suffix}" for suffix in suffixes
                if storage.fs.glob(posixpath.join(storage.root, f"*{suffix}"))]
    if not patterns:
        raise InputError(f"input {location!r} holds no {'/'.join(suffixes)} files")
    return patterns

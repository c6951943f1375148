"""Inputs read through ``datasets.load_dataset`` on the producer (hub datasets, JSON Lines, CSV).

Their rows are then read from the Arrow files in the ``datasets`` cache (or, for a slice of
a split or an in-memory dataset, from one Parquet copy written there once), so workers must
see the producer's ``HF_HOME`` / ``HF_DATASETS_CACHE``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from jobs.errors import InputError
from jobs.io.readers import text

MATERIALIZED_DIR = "batchformers"
Described = TypeVar("Described")


class DatasetChoice(Protocol):
    """The spec's ``dataset`` options (``jobs.spec.DatasetOptions``), read-only."""

    @property
    def config(self) -> str | None: ...
    @property
    def split(self) -> str: ...
    @property
    def revision(self) -> str | None: ...


def discover_loaded(path: str, arguments: dict[str, Any], options: DatasetChoice | None,
                    probe: Callable[[str, str], Described], rows: Callable[[Described], int]) -> list[Described]:
    """Load with ``datasets.load_dataset``; ``probe(file, input_format)`` each file holding its rows."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - a dependency of batchformers
        raise InputError("Please install `datasets` to read this input (`pip install datasets`)") from None
    if "data_files" in arguments:
        arguments = {**arguments, "data_files": text.data_files(arguments["data_files"], path)}
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
    sources = [probe(entry["filename"], "datasets") for entry in loaded.cache_files]
    if loaded._indices is None and sources and sum(rows(s) for s in sources) == loaded.num_rows:
        return sources
    return [probe(materialized(loaded, datasets.config.HF_DATASETS_CACHE), "parquet")]


def materialized(loaded: Any, cache: str | os.PathLike[str]) -> str:
    """One Parquet copy of a dataset whose rows are not its cache files 1:1, written once per fingerprint."""
    folder = Path(cache) / MATERIALIZED_DIR
    target = folder / f"{loaded._fingerprint}.parquet"
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / f".{target.name}.{uuid.uuid4().hex}.tmp"
        loaded.to_parquet(str(temporary))
        os.replace(temporary, target)
    return str(target)

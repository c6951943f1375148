"""The input readers: each format through the registry, written with pyarrow and read back by range."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from jobs.errors import InputError
from jobs.io.readers import READERS, datasets_loader, format_of, reader_for
from jobs.io.storage import Storage

TABLE = pa.table({"id": list(range(50)), "text": [f"row {i}" for i in range(50)]})


def write(path: Path, fmt: str) -> None:
    if fmt == "parquet":
        pq.write_table(TABLE, path, row_group_size=7)
    elif fmt == "arrow_file":
        feather.write_feather(TABLE, path, compression="uncompressed", chunksize=9)
    else:
        with pa.OSFile(str(path), "wb") as sink, ipc.new_stream(sink, TABLE.schema) as writer:
            for batch in TABLE.to_batches(max_chunksize=11):
                writer.write_batch(batch)


@pytest.mark.parametrize("fmt", sorted(READERS))
def test_every_reader_counts_describes_and_reads_a_range(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "data.bin"  # no telling suffix: the first bytes decide
    write(path, fmt)
    storage = Storage.at(str(path))
    assert format_of(storage, storage.root) == fmt
    reader = reader_for(fmt)
    rows, schema = reader.probe(storage, storage.root)
    assert rows == 50 and schema in (None, TABLE.schema)
    assert reader.schema(storage, storage.root) == TABLE.schema
    assert reader.read_range(storage, storage.root, 12, 31, ["text"]).equals(TABLE.select(["text"]).slice(12, 19))
    with pytest.raises(KeyError):
        reader.read_range(storage, storage.root, 0, 5, ["nope"])


def test_the_format_named_wins_and_an_unknown_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.arrow"
    write(path, "arrow_stream")
    storage = Storage.at(str(path))
    assert format_of(storage, storage.root, "arrow") == "arrow_stream"
    assert format_of(storage, storage.root, "parquet") == "parquet"  # as told, without looking
    with pytest.raises(InputError, match="known: parquet, arrow_file, arrow_stream"):
        reader_for("orc")


def test_loaders_claim_hub_datasets_and_text_files() -> None:
    assert datasets_loader("hf://datasets/org/name@v1") == ("org/name", {"revision": "v1"})
    assert datasets_loader("/data/rows.jsonl") == ("json", {"data_files": "/data/rows.jsonl"})
    assert datasets_loader("/data/rows", "csv") == ("csv", {"data_files": "/data/rows"})
    assert datasets_loader("/data/rows.parquet") is None
    assert datasets_loader("hf://datasets/org/name/file.parquet") is None  # files inside a repo

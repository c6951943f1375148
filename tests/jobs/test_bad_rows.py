"""Bad rows through a whole shard (read from Parquet, run, output table built): a row error or a
normal result for each, never a failed shard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.shard import run_shard
from jobs.spec import load_spec
from producer.plan import build_manifest

MEGABYTE_TEXT = "John Smith flew from Paris to Berlin. " * 28_000  # ~1 MB, ~250k tokens
TEXTS: list[Any] = [None, "", "   ", "\t\n ", MEGABYTE_TEXT, "Angela Merkel met Emmanuel Macron.",
                    "\x00\ufffd\u200b"]
NULL_ERROR = "text is null"


def _run(tmp_path: Path, model: Path, task: str, table: pa.Table, **params: Any) -> pa.Table:
    source = tmp_path / "in.parquet"
    pq.write_table(table, source)
    spec = load_spec({"task": task, "model": str(model), "input": str(source), "columns": {"id": "id"},
                      "output": str(tmp_path / "out"), "params": params, "batch_size": 4})
    manifest = build_manifest(spec)
    task_type = spec.task_type()
    runner = task_type.load(spec.load_options())
    output, summary = run_shard(manifest, manifest.shards[0], task_type, runner)
    assert output.num_rows == table.num_rows == summary["rows"]
    assert output.column("id").to_pylist() == table.column("id").to_pylist()
    return output


@pytest.fixture
def text_table() -> pa.Table:
    return pa.table({"id": [f"r{i}" for i in range(len(TEXTS))], "text": pa.array(TEXTS, pa.string())})


def test_ner_bad_rows(tmp_path: Path, ner_model: Path, text_table: pa.Table) -> None:
    output = _run(tmp_path, ner_model, "ner", text_table, aggregation_strategy="simple")
    errors = output.column("error").to_pylist()
    entities = output.column("entities").to_pylist()
    assert errors == [NULL_ERROR] + [None] * (len(TEXTS) - 1)
    assert entities[0] is None and entities[1] == entities[2] == entities[3] == []
    assert entities[4] and all(e["end"] <= len(MEGABYTE_TEXT) for e in entities[4])  # truncated, not failed
    assert entities[5]


def test_tokenize_bad_rows(tmp_path: Path, ner_model: Path, text_table: pa.Table) -> None:
    output = _run(tmp_path, ner_model, "tokenize", text_table)
    assert output.column("error").to_pylist() == [NULL_ERROR] + [None] * (len(TEXTS) - 1)
    counts = output.column("num_tokens").to_pylist()
    assert counts[0] is None and counts[1] == counts[2] == counts[3] == 2  # [CLS] [SEP]
    assert counts[4] > 200_000  # the whole megabyte, since truncation is off


INT, BYTES, LIST = (f"text must be a string, got {kind}" for kind in ("int", "bytes", "list"))


@pytest.mark.parametrize("task", ["ner", "tokenize"])
@pytest.mark.parametrize(
    ("values", "errors"),
    [(pa.array([1, None, 3], pa.int64()), [INT, NULL_ERROR, INT]),
     (pa.array([b"bytes", b"", None], pa.binary()), [BYTES, BYTES, NULL_ERROR]),
     (pa.array([[1.5], [], None], pa.list_(pa.float64())), [LIST, LIST, NULL_ERROR])],
    ids=["int", "binary", "list"],
)
def test_non_string_columns_are_row_errors(tmp_path: Path, ner_model: Path, task: str, values: pa.Array,
                                           errors: list[str]) -> None:
    output = _run(tmp_path, ner_model, task, pa.table({"id": ["a", "b", "c"], "text": values}))
    assert output.column("error").to_pylist() == errors

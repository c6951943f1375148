"""Downstream: a real job's output read by pandas, polars, DuckDB and `datasets`, and `batchformers inspect`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.io.layout import MANIFEST_FILE, SUCCESS_FILE
from jobs.settings import Settings
from jobs.spec import load_spec
from producer.inspect import inspect_output
from producer.submit import submit
from producer.watch import wait

pytestmark = pytest.mark.slow  # a real worker produces the output the readers read

ROOT = Path(__file__).resolve().parents[1]
ROWS = 66


@pytest.fixture(scope="module")
def ner_output(shared_workers: Settings, tmp_path_factory: pytest.TempPathFactory, news_texts: list[str]) -> Path:
    """One NER job over three shards with an id and a pass-through column, run by a real worker."""
    import pyarrow as pa

    from tests.models import tiny_model_path

    root = tmp_path_factory.mktemp("downstream")
    source = root / "news.parquet"
    pq.write_table(pa.table({"doc_id": [f"doc-{i}" for i in range(ROWS)], "body": news_texts,
                             "source": ["wire"] * ROWS}), source)
    spec = load_spec({"task": "ner", "model": str(tiny_model_path("bert-ner")), "input": str(source),
                      "columns": {"text": "body", "id": "doc_id"}, "passthrough": ["source"],
                      "output": str(root / "out"), "params": {"aggregation_strategy": "simple"},
                      "shard_rows": 25})
    submission = submit(spec, shared_workers)
    assert wait(submission.output, timeout=120).state == "complete"
    return Path(submission.output)


def test_one_parquet_dataset_with_a_stable_schema(ner_output: Path) -> None:
    manifest = json.loads((ner_output / MANIFEST_FILE).read_text())
    parts = sorted(ner_output.glob("*.parquet"))
    assert [p.name for p in parts] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    schemas = {str(pq.read_schema(p)) for p in parts}
    assert len(schemas) == 1  # every part has the same schema...
    schema = pq.read_schema(parts[0])
    arrow_names = [(c["name"], c["type"].replace("list<item: ", "list<element: ")) for c in manifest["output_schema"]]
    assert [(f.name, str(f.type)) for f in schema] == arrow_names  # ...the manifest's (Parquet says "element")
    assert schema.names == ["doc_id", "source", "row_index", "entities", "truncated", "error"]
    # The manifest says what made the data.
    assert manifest["spec"]["model"].endswith("bert-ner") and "revision" in manifest["spec"]
    assert {"transformers", "torch", "pyarrow", "batchformers"} <= set(manifest["versions"])
    assert manifest["total_rows"] == ROWS and [s["stop"] - s["start"] for s in manifest["shards"]] == [25, 25, 16]
    success = json.loads((ner_output / SUCCESS_FILE).read_text())
    assert success["rows"] == ROWS and success["completed_at"] >= manifest["created_at"]


def test_pandas(ner_output: Path) -> None:
    import pandas as pd

    frame = pd.read_parquet(ner_output)  # the directory: _batchformers/ is ignored
    assert len(frame) == ROWS and sorted(frame["doc_id"]) == sorted(f"doc-{i}" for i in range(ROWS))
    assert frame.sort_values("row_index")["doc_id"].tolist() == [f"doc-{i}" for i in range(ROWS)]
    assert frame["error"].isna().all()


def test_polars(ner_output: Path) -> None:
    import polars as pl

    frame = pl.read_parquet(f"{ner_output}/*.parquet")
    assert frame.height == ROWS and frame["doc_id"].n_unique() == ROWS
    exploded = frame.select("doc_id", "entities").explode("entities").drop_nulls("entities")
    assert exploded.height > ROWS and "entity_group" in exploded.unnest("entities").columns


def test_duckdb(ner_output: Path) -> None:
    import duckdb

    [(rows, ids, first, last)] = duckdb.sql(
        f"SELECT count(*), count(DISTINCT doc_id), min(row_index), max(row_index) FROM '{ner_output}/*.parquet'"
    ).fetchall()
    assert (rows, ids, first, last) == (ROWS, ROWS, 0, ROWS - 1)
    groups = duckdb.sql(
        f"SELECT e.entity_group, count(*) FROM (SELECT unnest(entities) AS e FROM '{ner_output}/*.parquet') "
        "GROUP BY 1").fetchall()
    assert sum(count for _, count in groups) > ROWS


def test_datasets(ner_output: Path, tmp_path: Path) -> None:
    import datasets

    loaded = datasets.load_dataset("parquet", data_files=f"{ner_output}/*.parquet", split="train",
                                   cache_dir=str(tmp_path / "hf-cache"))
    assert loaded.num_rows == ROWS and sorted(loaded["doc_id"]) == sorted(f"doc-{i}" for i in range(ROWS))
    assert loaded.features["entities"].feature["entity_group"].dtype == "string"
    assert any(row["entities"] for row in loaded)


def test_inspect(ner_output: Path) -> None:
    described = inspect_output(str(ner_output), rows=3)
    assert described.state == "complete" and described.rows == ROWS == described.rows_expected
    assert described.parts == 3 and described.schema_matches_manifest and described.failed_shards == 0
    assert [row["doc_id"] for row in described.head] == ["doc-0", "doc-1", "doc-2"]

    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHFORMERS_")}
    done = subprocess.run([sys.executable, "-m", "producer.cli", "inspect", str(ner_output), "--rows", "2"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, env={**env, "COLUMNS": "160"})
    assert done.returncode == 0, done.stderr
    for text in ("complete", "66 of 66", "entities", "list<element: struct<entity_group", "doc-1", "first 2 rows",
                 "duckdb"):
        assert text in done.stdout, (text, done.stdout)
    done = subprocess.run([sys.executable, "-m", "producer.cli", "inspect", str(ner_output), "--json"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert done.returncode == 0 and json.loads(done.stdout)["rows"] == ROWS
    missing = subprocess.run([sys.executable, "-m", "producer.cli", "inspect", str(ner_output / "nope")],
                             capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert missing.returncode == 2 and "holds no batchformers job" in missing.stderr

"""End to end: producer -> real Redis -> real Celery worker processes -> Parquet read back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
import yaml

from jobs.settings import Settings
from jobs.spec import load_spec
from producer.submit import submit
from producer.watch import wait
from tests.models import tiny_model_path
from tests.reliability import queue_lists, queued_messages
from worker.faults import FAULTS_ENV

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def inputs(tmp_path: Path, news_texts: list[str]) -> dict[str, tuple[str, list[str]]]:
    """The same kind of rows as a Parquet directory (two files), an Arrow IPC file and a datasets dir."""
    import datasets

    ids = [f"doc-{i}" for i in range(len(news_texts))]
    half = len(ids) // 2
    parquet_dir = tmp_path / "parquet"
    parquet_dir.mkdir()
    pq.write_table(pa.table({"doc_id": ids[:half], "body": news_texts[:half]}), parquet_dir / "a.parquet",
                   row_group_size=7)
    pq.write_table(pa.table({"doc_id": ids[half:], "body": news_texts[half:]}), parquet_dir / "b.parquet")
    arrow_file = tmp_path / "news.arrow"
    feather.write_feather(pa.table({"doc_id": ids, "body": news_texts}), arrow_file, compression="uncompressed")
    hf_dir = tmp_path / "hf"
    datasets.Dataset.from_dict({"doc_id": ids, "body": news_texts}).save_to_disk(str(hf_dir))
    return {"parquet": (str(parquet_dir), ids), "arrow": (str(arrow_file), ids), "datasets": (str(hf_dir), ids)}


def _read_output(output: str) -> pa.Table:
    return ds.dataset(output, format="parquet").to_table()


def test_multi_shard_jobs_over_every_input_format(
    inputs: dict[str, tuple[str, list[str]]], tmp_path: Path, ner_model: Path, settings: Settings,
    start_workers: Any,
) -> None:
    workers = start_workers(1)
    for name, (location, ids) in inputs.items():
        spec = load_spec({"task": "ner", "model": str(ner_model), "input": location,
                          "columns": {"text": "body", "id": "doc_id"}, "output": str(tmp_path / f"out-{name}"),
                          "params": {"aggregation_strategy": "simple"}, "shard_rows": 9})
        submission = submit(spec, settings)
        assert submission.shards >= 7 and submission.enqueued == submission.shards
        status = wait(submission.output, timeout=180)
        assert status.state == "complete", status
        table = _read_output(submission.output)
        assert sorted(table.column("doc_id").to_pylist()) == sorted(ids)  # every row exactly once
        assert sorted(table.column("row_index").to_pylist()) == list(range(len(ids)))
        by_index = dict(zip(table.column("row_index").to_pylist(), table.column("doc_id").to_pylist(), strict=True))
        assert [by_index[i] for i in range(len(ids))] == ids  # row_index follows input order
        assert table.column("error").null_count == table.num_rows
        assert sum(len(e) for e in table.column("entities").to_pylist()) > len(ids)

        # Running it again changes nothing and does no model work.
        parts = {p.name: p.stat().st_mtime_ns for p in Path(submission.output).glob("part-*.parquet")}
        again = submit(spec, settings)
        assert again.enqueued == 0 and again.already_committed == submission.shards
        assert {p.name: p.stat().st_mtime_ns for p in Path(submission.output).glob("part-*.parquet")} == parts
    logs = "".join(p.read_text() for p in workers.log_dir.glob("*.log"))
    assert logs.count("batchformers: loaded ner model") == 1  # one load for every shard of every job


def test_message_is_a_small_reference(tmp_path: Path, news_texts: list[str], ner_model: Path,
                                      settings: Settings) -> None:
    """A message points at its rows (file, range), never carries them: its body, decoded, holds none
    of the shard's text, and it stays small although each shard's rows are far bigger than 4 KiB."""
    import base64
    import json

    import redis

    texts = [f"{text} Zanzibarquux{i}" for i, text in enumerate(news_texts * 4)]  # a word in no message
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"doc_id": [f"d{i}" for i in range(len(texts))], "body": texts}), source)
    shard_rows = 100
    assert len(" ".join(texts[:shard_rows]).encode()) > 2 * 4096  # inline rows could not fit the bound
    spec = load_spec({"task": "ner", "model": str(ner_model), "input": str(source),
                      "columns": {"text": "body"}, "output": str(tmp_path / "out"), "shard_rows": shard_rows})
    submit(spec, settings)
    client = redis.Redis.from_url(settings.broker_url)
    raw = queued_messages(settings.broker_url, settings.queue)
    client.delete(*queue_lists(settings.broker_url, settings.queue))
    assert len(raw) == -(-len(texts) // shard_rows)
    for message in raw:
        assert len(message) < 4096
        envelope = json.loads(message)
        assert envelope["headers"]["task"] == "batchformers.run_shard"
        assert envelope["properties"]["body_encoding"] == "base64"
        body = base64.b64decode(envelope["body"]).decode()
        args, kwargs, _ = json.loads(body)
        assert "Zanzibarquux" not in body and "Zanzibarquux" not in message.decode()
        reference = args[0] if args else kwargs["message"]
        assert reference["job_id"] and isinstance(reference["shard"], int)


@pytest.mark.slow  # `batchformers run` in a subprocess: its own Redis and workers
def test_run_command_embedded(tmp_path: Path, news_parquet: Path, ner_model: Path) -> None:
    """`batchformers run JOB.yaml` with no broker: its own Redis and workers, exit 0, Parquet out."""
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"task": "tokenize", "model": str(ner_model), "input": str(news_parquet),
                                   "columns": {"text": "body", "id": "doc_id"}, "output": str(tmp_path / "out"),
                                   "shard_rows": 20}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHFORMERS_")}
    done = subprocess.run([sys.executable, "-m", "producer.cli", "run", str(job), "--no-progress"],
                          capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "complete" in done.stdout and str(tmp_path / "out") in done.stdout
    table = _read_output(str(tmp_path / "out"))
    assert table.num_rows == 66 and set(table.column_names) >= {"doc_id", "input_ids", "num_tokens", "error"}


@pytest.mark.slow  # `batchformers run` in a subprocess: its own Redis and workers
def test_run_command_exits_non_zero_when_a_shard_fails(tmp_path: Path, news_parquet: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"task": "tokenize", "model": str(tiny_model_path("bert-ner")),
                                   "input": str(news_parquet), "columns": {"text": "body"},
                                   "output": str(tmp_path / "out"), "shard_rows": 40, "max_retries": 0}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHFORMERS_")}
    env[FAULTS_ENV] = "raise=0"  # the first shard fails every time (a missing model is refused at submit)
    done = subprocess.run([sys.executable, "-m", "producer.cli", "run", str(job), "--no-progress"],
                          capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "failed" in done.stdout and "InjectedFault" in done.stdout

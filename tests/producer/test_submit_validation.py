"""Invalid specs fail at submit time, name the field, and enqueue nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
import yaml

from jobs.errors import SpecError
from jobs.settings import Settings
from jobs.spec import load_spec, spec_json_schema
from producer.submit import submit
from tests.reliability import queue_lists, queued_messages


def _spec(news_parquet: Path, tmp_path: Path, ner_model: Path, **changes: Any) -> dict[str, Any]:
    spec = {"task": "ner", "model": str(ner_model), "input": str(news_parquet),
            "columns": {"text": "body", "id": "doc_id"}, "output": str(tmp_path / "out"), "shard_rows": 10}
    spec.update(changes)
    return {k: v for k, v in spec.items() if v is not None}


def _queued(settings: Settings) -> int:
    return len(queued_messages(settings.broker_url, settings.queue))


def _empty_parquet(tmp_path: Path) -> str:
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"body": pa.array([], pa.string())}), path)
    return str(path)


def _other_job_output(tmp_path: Path, news_parquet: Path, ner_model: Path, settings: Settings) -> str:
    other = _spec(news_parquet, tmp_path, ner_model, task="tokenize", output=str(tmp_path / "taken"),
                  columns={"text": "body"})
    submit(load_spec(other), settings)
    redis.Redis.from_url(settings.broker_url).delete(*queue_lists(settings.broker_url, settings.queue))
    return str(tmp_path / "taken")


BAD_SPECS = [
    ("unknown task", lambda t, p, m, s: {"task": "sentiment"}, "task", "valid tasks: classification, embeddings, fill_mask, generation, ner, qa"),
    ("missing column", lambda t, p, m, s: {"columns": {"text": "content"}}, "columns.text", "'content' is not in"),
    ("unknown role", lambda t, p, m, s: {"columns": {"txt": "body"}}, "columns", "unknown role"),
    ("unknown param", lambda t, p, m, s: {"params": {"aggregation": "simple"}}, "params.aggregation", "unknown field"),
    ("bad param value", lambda t, p, m, s: {"params": {"aggregation_strategy": "big"}},
     "params.aggregation_strategy", "'none', 'simple'"),
    ("unknown spec field", lambda t, p, m, s: {"shards": 4}, "shards", "unknown field"),
    ("unreadable input", lambda t, p, m, s: {"input": str(t / "nope.parquet")}, "input", "does not exist"),
    ("not a dataset", lambda t, p, m, s: {"input": str(_garbage(t))}, "input", "cannot read"),
    ("empty dataset", lambda t, p, m, s: {"input": _empty_parquet(t), "columns": {"text": "body"}}, "input",
     "has no rows"),
    ("output of another job", lambda t, p, m, s: {"output": _other_job_output(t, p, m, s)}, "output",
     "holds another job"),
    ("output with foreign files", lambda t, p, m, s: {"output": str(_foreign(t))}, "output", "not empty"),
    ("negative shard_rows", lambda t, p, m, s: {"shard_rows": 0}, "shard_rows", "greater than 0"),
    ("bad device", lambda t, p, m, s: {"device": "tpu"}, "device", "unknown device"),
]


def _garbage(tmp_path: Path) -> Path:
    path = tmp_path / "garbage.parquet"
    path.write_bytes(b"this is not parquet at all")
    return path


def _foreign(tmp_path: Path) -> Path:
    folder = tmp_path / "foreign"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    return folder


@pytest.mark.parametrize(("case", "change", "field", "message"), BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_bad_spec_names_field_and_enqueues_nothing(
    case: str, change: Any, field: str, message: str,
    tmp_path: Path, news_parquet: Path, ner_model: Path, settings: Settings,
) -> None:
    raw = _spec(news_parquet, tmp_path, ner_model, **change(tmp_path, news_parquet, ner_model, settings))
    with pytest.raises(SpecError) as caught:
        submit(load_spec(raw), settings)
    assert caught.value.field == field
    assert message in caught.value.message
    assert _queued(settings) == 0
    assert not (tmp_path / "out" / "_batchformers").exists()


def test_spec_files_yaml_and_json_with_relative_paths(tmp_path: Path, news_parquet: Path, ner_model: Path) -> None:
    job = tmp_path / "input" / "job.yaml"
    job.write_text(yaml.safe_dump({"task": "ner", "model": str(ner_model), "input": "news.parquet",
                                   "columns": {"text": "body"}, "output": "out/"}))
    spec = load_spec(job)
    assert spec.input == str(news_parquet) and spec.output == str(tmp_path / "input" / "out")
    with pytest.raises(SpecError, match="not valid YAML"):
        bad = tmp_path / "bad.yaml"
        bad.write_text("task: [ner")
        load_spec(bad)
    with pytest.raises(SpecError, match="cannot read job file"):
        load_spec(tmp_path / "missing.yaml")


def test_json_schema_is_published() -> None:
    schema = spec_json_schema()
    assert {"task", "input", "output"} <= set(schema["required"])
    assert "params" in schema["properties"] and schema["additionalProperties"] is False


@pytest.mark.parametrize("name", ["ner", "tokenize", "qa", "summarization", "translation"])
def test_example_jobs_are_valid(name: str) -> None:
    examples = Path(__file__).resolve().parents[2] / "examples"
    spec = load_spec(examples / f"{name}.yaml")
    assert spec.task == name and spec.resolved_model()
    assert Path(spec.input).exists()


@pytest.mark.parametrize("field", ["output", "input", "model"])
def test_credentials_in_a_location_are_refused_and_never_stored(
    field: str, tmp_path: Path, news_parquet: Path, ner_model: Path, settings: Settings,
) -> None:
    """``ftp://user:pass@host/...`` would put the password in the manifest, every shard message and the logs."""
    secret = "pass-w0rd-123"
    raw = _spec(news_parquet, tmp_path, ner_model, **{field: f"ftp://user:{secret}@127.0.0.1:1/{field}"})
    with pytest.raises(SpecError) as caught:
        submit(load_spec(raw), settings)
    assert caught.value.field == field and "user name and password" in caught.value.message
    assert secret not in str(caught.value)
    client = redis.Redis.from_url(settings.broker_url)
    assert not [key for key in client.scan_iter(match=f"*{secret}*")]
    assert _queued(settings) == 0
    assert not (tmp_path / "out" / "_batchformers").exists()

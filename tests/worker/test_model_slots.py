"""Model slots of a worker process (LRU eviction) and remembered failed loads, with real tiny models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.errors import ModelLoadError
from jobs.settings import Settings
from jobs.spec import JobSpec, load_spec
from tests.models import tiny_model_path
from worker import runners


@pytest.fixture
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No model loaded and no failure remembered, as in a new worker process."""
    monkeypatch.setattr(runners, "_cache", {})
    monkeypatch.setattr(runners, "_failed", {})
    yield


@pytest.fixture
def rows(tmp_path: Path) -> Path:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["John Smith visited Paris."]}), path)
    return path


def _spec(rows: Path, task: str, model: str | Path, **fields: Any) -> JobSpec:
    return load_spec({"task": task, "model": str(model), "input": str(rows), "output": str(rows.parent / task),
                      "device": "cpu", **fields})


def _loads(calls: list[JobSpec], settings: Settings) -> int:
    before = runners.load_attempts()
    for spec in calls:
        runners.runner_for(spec, settings)
    return runners.load_attempts() - before


def test_slots_keep_the_recent_models_and_evict_the_least_recently_used(
    rows: Path, fresh_process: None, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    ner = _spec(rows, "ner", tiny_model_path("bert-ner"))
    classify = _spec(rows, "classification", tiny_model_path("bert-classifier"))
    tokenize = _spec(rows, "tokenize", tiny_model_path("bert-ner"))
    two = Settings(model_slots=2)
    caplog.set_level("INFO", logger="worker.runners")

    assert _loads([ner, classify, ner, classify], two) == 2  # both stay loaded
    assert _loads([tokenize], two) == 1 and runners.loaded_count() == 2  # evicts ner: used least recently
    assert _loads([classify], two) == 0
    assert _loads([ner], two) == 1  # ner was the one evicted
    assert sum("batchformers: evicted" in record.message for record in caplog.records) == 2
    assert sum("batchformers: loaded" in record.message for record in caplog.records) == 4

    monkeypatch.setattr(runners, "_cache", {})
    one = Settings(model_slots=1)
    assert _loads([classify, ner, classify, ner, ner], one) == 4  # every switch loads
    assert runners.loaded_count() == 1


def test_a_model_that_cannot_be_loaded_fails_later_shards_at_once(
    rows: Path, tmp_path: Path, fresh_process: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "bert"}')  # no weights, no tokenizer
    spec = _spec(rows, "ner", broken)
    settings = Settings()
    before = runners.load_attempts()
    errors = []
    for _ in range(4):
        with pytest.raises(ModelLoadError) as caught:
            runners.runner_for(spec, settings)
        errors.append(str(caught.value))
    assert runners.load_attempts() - before == 1  # one try; the next three shards fail without loading
    assert len(set(errors)) == 1 and str(broken) in errors[0]

    monkeypatch.setattr(runners, "FAILED_LOAD_SECONDS", 0.0)  # remembered for a while only: fixed models load
    with pytest.raises(ModelLoadError):
        runners.runner_for(spec, settings)
    assert runners.load_attempts() - before == 2


def test_a_load_failed_by_the_network_is_not_remembered(
    rows: Path, fresh_process: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec(rows, "ner", tiny_model_path("bert-ner"))
    tries = []

    def unreachable(task: Any, options: Any) -> Any:
        tries.append(options.model)
        try:
            raise ConnectionError("hub unreachable")
        except ConnectionError as exc:
            raise ModelLoadError(f"cannot download {options.model}") from exc

    monkeypatch.setattr(type(spec.task_type()), "load", unreachable)
    for _ in range(2):
        with pytest.raises(ModelLoadError):
            runners.runner_for(spec, Settings())
    assert len(tries) == 2  # transient: each shard tries again

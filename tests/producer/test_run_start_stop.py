"""How ``batchformers run`` starts and stops its own Redis and workers: alongside submit, not for a
finished job, and killed outright once every shard is done (real Redis, real worker processes)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

from jobs.io.layout import OutputLayout
from jobs.spec import JobSpec, load_spec
from producer.embedded import LocalWorkers

pytestmark = pytest.mark.slow

run_module = importlib.import_module("producer.run")  # `producer.run` the attribute is the function


class _RecordedWorkers(LocalWorkers):
    """Real local workers that remember how each process ended (its return code)."""

    ended: list[list[int | None]] = []

    def stop(self, fast: bool = False) -> None:
        processes = list(self.processes)
        super().stop(fast=fast)
        self._record(processes)

    def kill(self) -> None:
        processes = list(self.processes)
        super().kill()
        self._record(processes)

    def _record(self, processes: list[Any]) -> None:
        if processes:
            _RecordedWorkers.ended.append([process.returncode for process in processes])


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[list[int | None]]:
    monkeypatch.delenv("BATCHFORMERS_BROKER_URL", raising=False)  # run brings its own
    monkeypatch.setattr(run_module, "LocalWorkers", _RecordedWorkers)
    _RecordedWorkers.ended = []
    return _RecordedWorkers.ended


def _spec(rows: Path, model: Path, output: Path, **fields: Any) -> JobSpec:
    return load_spec({"task": "ner", "model": str(model), "input": str(rows), "output": str(output),
                      "columns": {"text": "body", "id": "doc_id"}, "device": "cpu", **fields})


def test_a_finished_job_kills_its_workers_and_a_complete_one_starts_none(
    news_parquet: Path, ner_model: Path, tmp_path: Path, recorded: list[list[int | None]]
) -> None:
    spec = _spec(news_parquet, ner_model, tmp_path / "out")
    final = run_module.run(spec, progress=False, log_dir=str(tmp_path / "logs-1"))
    assert final.state == "complete" and OutputLayout(spec.output).is_complete()
    assert recorded == [[-9]]  # nothing left to finish: killed, not a warm shutdown's pool join

    again = run_module.run(spec, progress=False, log_dir=str(tmp_path / "logs-2"))
    assert again.state == "complete"
    assert recorded == [[-9]] and not (tmp_path / "logs-2").exists()  # no worker was started


def test_a_refused_submit_kills_the_workers_started_alongside_it(
    news_parquet: Path, ner_model: Path, tmp_path: Path, recorded: list[list[int | None]]
) -> None:
    from jobs.errors import SpecError

    spec = _spec(news_parquet, ner_model, tmp_path / "out", columns={"text": "no_such_column"})
    with pytest.raises(SpecError):
        run_module.run(spec, progress=False, log_dir=str(tmp_path / "logs"))
    assert (tmp_path / "logs" / "worker-0.log").exists()  # it had started one, with submit
    assert recorded == [[-9]]

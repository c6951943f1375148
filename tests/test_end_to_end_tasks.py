"""Every task type through real Celery workers and Redis, Parquet read back and checked
against the same rows run directly through the task's runner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from jobs.settings import Settings
from jobs.spec import load_spec
from producer.submit import submit
from producer.watch import wait
from tests.models import close, rows_of, tiny_model_path

CONTEXT = ("The Louvre in Paris closed for a day after staff went on strike over crowding. "
           "Thousands of visitors queued outside the glass pyramid in the rain. ")


def _qa_rows(texts: list[str]) -> dict[str, list[Any]]:
    contexts = [(text or "") + " " + CONTEXT * (1 + i % 4) for i, text in enumerate(texts)]
    questions = ["Who went on strike?", "Where is the pyramid?", "What happened?"]
    return {"question": [questions[i % 3] for i in range(len(texts))], "context": contexts}


JOBS = {
    "tokenize": ("bert-ner", {}, lambda texts: {"text": texts}),
    "ner": ("bert-ner", {"aggregation_strategy": "first"}, lambda texts: {"text": texts}),
    "qa": ("bert-qa", {"top_k": 2}, _qa_rows),
    "summarization": ("bart", {"num_beams": 2}, lambda texts: {"text": texts}),
    "translation": ("marian", {}, lambda texts: {"text": texts}),
}


@pytest.mark.parametrize("task", list(JOBS))
def test_task_end_to_end(task: str, tmp_path: Path, news_texts: list[str], shared_workers: Settings) -> None:
    kind, params, make_columns = JOBS[task]
    texts = news_texts[:24] + [None]  # one bad row rides along
    columns = make_columns(texts)
    if task == "qa":
        columns["context"][-1] = None
    table = pa.table({"doc_id": [f"d{i}" for i in range(len(texts))], **columns})
    source = tmp_path / "in.parquet"
    pq.write_table(table, source)
    model = str(tiny_model_path(kind))
    spec = load_spec({"task": task, "model": model, "input": str(source), "output": str(tmp_path / "out"),
                      "columns": {"id": "doc_id"}, "params": params, "shard_rows": 7, "batch_size": 4})
    submission = submit(spec, shared_workers)
    assert submission.shards == 4
    status = wait(submission.output, timeout=240)
    assert status.state == "complete", status

    output = ds.dataset(submission.output, format="parquet").to_table().sort_by("row_index")
    assert output.column("doc_id").to_pylist() == table.column("doc_id").to_pylist()
    errors = output.column("error").to_pylist()
    assert errors[-1] is not None and all(e is None for e in errors[:-1])

    runner = spec.task_type().load(spec.load_options())
    direct = rows_of(runner.run({role: table.column(role).to_pylist() for role in spec.input_columns()}))
    for name in spec.task_type().output_schema().names:
        got, want = output.column(name).to_pylist(), [row[name] for row in direct]
        assert close(got, want), name

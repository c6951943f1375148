"""The five pipeline tasks (classification, zero-shot, fill-mask, embeddings, generation) through
real Celery workers and Redis, on the session's shared worker, then search over the embeddings job.

Each job's Parquet output is checked against the same rows run directly through the task's runner
(which the per-task tests hold to the transformers pipelines)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from jobs.settings import Settings
from jobs.spec import load_spec
from producer.search import search
from producer.submit import submit
from producer.watch import wait
from tests.models import tiny_model_path

pytestmark = pytest.mark.slow

JOBS: dict[str, tuple[str, dict[str, Any]]] = {
    "sentiment-analysis": ("bert-classifier", {"top_k": None}),
    "zero-shot-classification": ("bert-nli", {"candidate_labels": ["economy", "sport", "politics"]}),
    "fill-mask": ("bert-mlm", {"top_k": 3}),
    "feature-extraction": ("bert-embeddings", {"pooling": "mean", "normalize": True}),
    "text-generation": ("gpt2", {"max_new_tokens": 6, "seed": 7}),
}
ONNX = "@onnxruntime"  # the same job on engine: onnxruntime (an alias with this suffix)
JOBS.update({f"{alias}{ONNX}": JOBS[alias] for alias in ("sentiment-analysis", "zero-shot-classification",
                                                          "fill-mask", "feature-extraction")})


@pytest.fixture(scope="module")
def outputs(shared_workers: Settings, news_texts: list[str],
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, pa.Table, pa.Table]]:
    """Every job submitted at once to the same workers; (spec, input table, output table) per alias."""
    root = tmp_path_factory.mktemp("pipelines")
    texts = news_texts[:20] + [None]
    submitted = {}
    for alias, (kind, params) in JOBS.items():
        task, _, engine = alias.partition("@")
        column = [t.replace(" ", " [MASK] ", 1) if t and task == "fill-mask" else t for t in texts]
        table = pa.table({"doc_id": [f"d{i}" for i in range(len(texts))], "text": column,
                          "lang": ["en" if i % 2 else "fr" for i in range(len(texts))]})
        source = root / f"{kind}{engine}.parquet"
        pq.write_table(table, source)
        spec = load_spec({"task": task, "model": str(tiny_model_path(kind)), "input": str(source),
                          "output": str(root / f"{kind}{engine}"), "columns": {"id": "doc_id"},
                          "passthrough": ["lang"], "params": params, "shard_rows": 6, "batch_size": 4,
                          "engine": engine or "transformers"})
        submitted[alias] = (spec, table, submit(spec, shared_workers))
    results = {}
    for alias, (spec, table, submission) in submitted.items():
        status = wait(submission.output, timeout=300)
        assert status.state == "complete", (alias, status)
        output = ds.dataset(submission.output, format="parquet").to_table().sort_by("row_index")
        results[alias] = (spec, table, output)
    return results


@pytest.mark.parametrize("alias", list(JOBS))
def test_pipeline_task_end_to_end(alias: str, outputs: dict[str, tuple[Any, pa.Table, pa.Table]]) -> None:
    spec, table, output = outputs[alias]
    assert output.column("doc_id").to_pylist() == table.column("doc_id").to_pylist()
    errors = output.column("error").to_pylist()
    assert errors[-1] == "text is null" and all(e is None for e in errors[:-1])
    runner = spec.task_type().load(spec.load_options())
    direct = runner.run_table({"text": table.column("text").to_pylist()}).table.to_pylist()
    for name in spec.task_type().output_schema().names:
        got, want = output.column(name).to_pylist(), [row[name] for row in direct]
        if name in ("labels", "scores", "predictions", "embedding"):
            assert _close(got, want), name
        else:  # generation: sampled with per-row seeds, so sharding and batching change nothing
            assert got == want, name
    if alias.startswith("feature-extraction"):
        assert output.schema.field("embedding").type == pa.list_(pa.float32(), 32)


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) < 1e-5
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return bool(a == b)


@pytest.mark.parametrize("method", ["duckdb", "numpy"])
def test_search_finds_each_rows_own_text_first(method: str, outputs: dict[str, tuple[Any, pa.Table, pa.Table]],
                                               news_texts: list[str]) -> None:
    spec, _, _ = outputs["feature-extraction"]
    for row in (0, 7, 13):
        hits = search(spec.output, news_texts[row], top_k=3, method=method)
        assert hits.column("doc_id").to_pylist()[0] == f"d{row}"
        assert hits.column("score")[0].as_py() == pytest.approx(1.0, abs=1e-5)
        assert hits.column("score").to_pylist() == sorted(hits.column("score").to_pylist(), reverse=True)
        assert set(hits.column_names) == {"doc_id", "lang", "row_index", "score"}
    filtered = search(spec.output, news_texts[0], top_k=5, where="lang = 'en'", method=method)
    assert filtered.num_rows == 5 and set(filtered.column("lang").to_pylist()) == {"en"}


def test_search_command_prints_the_nearest_rows(outputs: dict[str, tuple[Any, pa.Table, pa.Table]],
                                                news_texts: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from producer.cli import main

    spec, _, _ = outputs["feature-extraction"]
    assert main(["search", spec.output, news_texts[4], "--top-k", "2", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and rows[0]["doc_id"] == "d4"
    assert main(["search", str(Path(outputs["fill-mask"][0].output)), "x"]) == 2  # not an embeddings job

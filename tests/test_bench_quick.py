"""The benchmark harness (``python -m bench --quick``) runs and reports sane numbers.

Speed is not asserted (CI machines are noisy); what is checked is that every
measurement exists, counts every row, and that batchformers' outputs equal the
baseline's. Task types whose module is not there are skipped with that reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import main
from bench.run import module_missing
from bench.scenarios import many_workers

pytestmark = pytest.mark.slow  # runs the benchmark harness with real workers

REQUIRED = ("ner", "tokenize")
# Rows per task: what the assertions need (every method counts every row, outputs equal the baseline's)
# is there at any size; the quick sizes' hundreds of rows are for reading rates, which nothing asserts.
ROWS = 24
MANY_WORKERS = 4  # several workers racing for shards on one broker; 16 is the full bench's scenario
OPTIONAL = ("qa", "summarization", "translation", "classification", "zero_shot", "embeddings", "fill_mask",
            "generation")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("bench")
    tasks = [*REQUIRED, *(task for task in OPTIONAL if module_missing(task) is None)]
    markdown = root / "BENCHMARKS.md"
    code = main(["--quick", "--tasks", ",".join(tasks), "--workers", "1", "--rows", str(ROWS),
                 "--workdir", str(root / "work"), "--markdown", str(markdown), "--no-scenarios"])
    assert code == 0
    payload: dict[str, Any] = json.loads(markdown.with_suffix(".json").read_text())
    payload["markdown"] = markdown.read_text()
    return payload


def _task(report: dict[str, Any], name: str) -> dict[str, Any]:
    missing = module_missing(name)
    if missing:
        pytest.skip(f"benchmark of {name} skipped: {missing}")
    return next(task for task in report["tasks"] if task["task"] == name)


@pytest.mark.parametrize("name", [*REQUIRED, *OPTIONAL])
def test_quick_mode_measures_the_task(report: dict[str, Any], name: str) -> None:
    task = _task(report, name)
    methods = task["measurements"]
    expected = {"baseline", "batchformers"} | (set() if name == "tokenize" else {"floor"})
    assert set(methods) == expected
    for method in methods.values():
        assert method["rows"] == task["rows"] == ROWS
        assert method["seconds"] > 0 and method["rows_per_second"] > 0
        assert method["tokens"] >= task["rows"] and method["tokens_per_second"] > 0
    if name != "tokenize":
        assert methods["floor"]["padding"] >= 1.0 and methods["baseline"]["padding"] >= 1.0
        assert methods["batchformers"]["extra"]["startup_seconds"] >= 0
    assert task["ratios"]["vs_baseline"] > 0
    assert task["parity"] == {"rows": task["rows"], "equal": task["rows"]}, task["parity"]
    assert f"| {name} | baseline |" in report["markdown"]
    assert set(task["targets"]) >= {"vs_baseline"}


def test_report_names_the_machine(report: dict[str, Any]) -> None:
    assert report["machine"]["cores"] >= 1 and report["mode"] == "quick"
    assert "Machine:" in report["markdown"] and "| task | target |" in report["markdown"]


def test_many_workers_take_each_row_exactly_once(tmp_path: Path) -> None:
    """Four lightweight workers on one broker, a 40-shard tokenize job: every row once."""
    tokenizer = str(Path(__file__).parent / "fixtures" / "models" / "bert-ner")
    result = many_workers(tokenizer, tmp_path, workers=MANY_WORKERS, rows=800, shard_rows=20)
    assert result["state"] == "complete" and result["shards"] == 40
    assert result["exactly_once"] and result["duplicates"] == 0 and result["missing"] == 0
    assert result["committed_markers"] == 40
    assert result["worker_processes_that_ran_shards"] >= 2  # shards really were shared out

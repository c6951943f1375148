"""The benchmark harness (``python -m bench --quick``, ``--startup --quick``) runs and reports sane numbers.

Speed is not asserted (CI machines are noisy); what is checked is that every
measurement exists, counts every row, and that batchformers' outputs equal the
baseline's. Task types whose module is not there are skipped with that reason.
The start-up bench's parsers (worker log, ``-X importtime``) and its hooks for other
measurement modules are checked on their own, without workers (fast tier).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from bench import startup, startup_probes
from bench import startup_report as startup_text
from bench.__main__ import STARTUP_BEGIN, STARTUP_END, main
from bench.run import module_missing
from bench.scenarios import many_workers

slow = pytest.mark.slow  # runs the benchmark harness with real workers

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


@slow
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


@slow
def test_report_names_the_machine(report: dict[str, Any]) -> None:
    assert report["machine"]["cores"] >= 1 and report["mode"] == "quick"
    assert "Machine:" in report["markdown"] and "| task | target |" in report["markdown"]


@slow
def test_many_workers_take_each_row_exactly_once(tmp_path: Path) -> None:
    """Four lightweight workers on one broker, a 40-shard tokenize job: every row once."""
    tokenizer = str(Path(__file__).parent / "fixtures" / "models" / "bert-ner")
    result = many_workers(tokenizer, tmp_path, workers=MANY_WORKERS, rows=800, shard_rows=20)
    assert result["state"] == "complete" and result["shards"] == 40
    assert result["exactly_once"] and result["duplicates"] == 0 and result["missing"] == 0
    assert result["committed_markers"] == 40
    assert result["worker_processes_that_ran_shards"] >= 2  # shards really were shared out


@pytest.fixture(scope="module")
def startup_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``python -m bench --startup --quick``: one fresh process per figure, one instrumented run."""
    root = tmp_path_factory.mktemp("startup")
    markdown, json_path = root / "BENCHMARKS.md", root / "startup.json"
    markdown.write_text("# Benchmarks\n\nkept text\n")
    assert main(["--startup", "--quick", "--workdir", str(root / "work"), "--markdown", str(markdown),
                 "--json", str(json_path)]) == 0
    payload: dict[str, Any] = json.loads(json_path.read_text())
    payload["markdown"] = markdown.read_text()
    return payload


@slow
def test_startup_quick_measures_every_command(startup_report: dict[str, Any]) -> None:
    figures = {f["name"]: f for f in startup_report["figures"]}
    assert set(figures) == {"help", "version", "run", "submit", "status", "jobs", "s3_client", "status_local", "jobs_local"}
    for f in figures.values():
        assert f.get("error") is None, f
        assert len(f["samples"]) == 1 and f["median"] > 0 and len(f["load"]) == 2
        assert f["met"] is (None if f["target"] is None else f["median"] <= f["target"])
    assert figures["status"]["shards"] == startup.QUICK_STATUS_SHARDS


@slow
def test_startup_quick_breaks_the_run_down(startup_report: dict[str, Any]) -> None:
    rows = {row["step"]: row for row in startup_report["breakdown"]}
    assert list(rows) == [name for name, _ in startup_text.BREAKDOWN]
    for row in rows.values():  # a number, or the reason there is none
        assert (row["median"] is not None) != (row["note"] is not None), row
        assert row["note"] is None or row["note"].startswith("not measured")
    for step in ("CLI import", "model check", "Redis start", "first shard", "total (instrumented run)"):
        assert rows[step]["median"] is not None, rows[step]
    run = startup_report["runs_instrumented"][0]
    assert run["code"] == 0 and {"ready", "received", "loaded"} <= set(run["log"])


@slow
def test_startup_quick_writes_its_section(startup_report: dict[str, Any]) -> None:
    text = startup_report["markdown"]
    assert text.startswith("# Benchmarks\n\nkept text\n") and text.count(STARTUP_BEGIN) == 1
    section = text.split(STARTUP_BEGIN, 1)[1].split(STARTUP_END, 1)[0]
    assert "| command | median s | target s | met | runs | load |" in section
    assert "| step | median s | how it is measured |" in section
    assert all(f"| {name} |" in section for name, _ in startup_text.BREAKDOWN)
    assert set(startup_report["hooks"]) == set(startup.HOOKS)


WORKER_LOG = """\
[2026-12-02 05:53:35,780: INFO/MainProcess] local0-9221@vm ready.
[2026-12-02 05:53:35,788: INFO/MainProcess] Task batchformers.run_shard[63fab58b-0273] received
[2026-12-02 05:53:38,797: INFO/ForkPoolWorker-1] batchformers: imported torch and transformers in process 8042 (0.7s)
[2026-12-02 05:53:45,951: INFO/ForkPoolWorker-1] batchformers: loaded ner model /m/bert-ner in process 9272 (7.2s, \
setup 0c60455a0cc7, 1 of 1 slots)
[2026-12-02 05:53:46,791: INFO/ForkPoolWorker-1] Task batchformers.run_shard[63fab58b-0273] succeeded in 8.0686s: {}
[2026-12-02 05:53:50,000: INFO/MainProcess] other-host@vm ready.
"""


def test_worker_log_gives_ready_load_and_task_times() -> None:
    found = startup_probes.worker_log_events(WORKER_LOG)
    ready = datetime(2026, 12, 2, 5, 53, 35, 780000).timestamp()
    assert found["ready"] == pytest.approx(ready, rel=0, abs=1e-3)  # the first ready line, not a later one
    assert found["received"] - ready == pytest.approx(0.008, abs=1e-4)
    assert found["succeeded"] - found["loaded"] == pytest.approx(0.84, abs=1e-4)
    assert (found["load_seconds"], found["task_seconds"], found["task"]) == (7.2, 8.0686, "63fab58b-0273")
    assert found["import_seconds"] == 0.7 and found["loaded"] - found["imported"] == pytest.approx(7.154, abs=1e-4)
    assert startup_probes.worker_log_events("no timestamps here\n") == {}


def test_importtime_entries_come_heaviest_first() -> None:
    text = ("import time: self [us] | cumulative | imported package\n"
            "import time:       100 |        100 |     numpy.core\n"
            "import time:       300 |        400 |   numpy\n"
            "import time:      2000 |       2400 | producer\n")
    found = startup_probes.parse_importtime(text)
    assert [(e["module"], e["seconds"], e["self"], e["depth"]) for e in found] == [
        ("producer", 0.0024, 0.002, 0), ("numpy", 0.0004, 0.0003, 1), ("numpy.core", 0.0001, 0.0001, 2)]


def test_hooks_report_what_they_could_not_measure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bf_hook_ok.py").write_text(
        "def figures(workdir, quick, log):\n"
        "    return [{'name': 'per-shard overhead', 'value': 40.0, 'unit': 'ms', 'target': 50},\n"
        "            {'name': 'host / raw', 'value': 0.5, 'target': 0.6, 'better': 'higher'}]\n")
    (tmp_path / "bf_hook_broken.py").write_text("def figures(workdir, quick, log):\n    raise ValueError('no S3')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = startup.hook_figures(tmp_path, True, lambda message: None, {
        "missing": "bench.no_such_module", "no function": "bench.data", "ok": "bf_hook_ok",
        "broken": "bf_hook_broken"})
    assert found["missing"]["error"] == "not measured: module missing"
    assert found["no function"]["error"] == "not measured: bench.data has no figures()"
    assert found["broken"]["error"].startswith("not measured: ValueError")
    assert [f["met"] for f in found["ok"]["figures"]] == [True, False]
    results = {"date": "d", "quick": True, "runs": 1, "cores": 2, "load_start": 1.0, "load_end": 1.0,
               "figures": [], "breakdown": [], "hooks": found}
    text = startup_text.markdown(results)
    assert "| per-shard overhead | 40 ms | <= 50 ms | yes |" in text
    assert "| host / raw | 0.5 | >= 0.6 | **no** |" in text
    assert "| missing (`bench.no_such_module`) | not measured: module missing | - | - |" in text

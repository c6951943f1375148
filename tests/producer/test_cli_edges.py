"""The command line's edges, as a new user meets them (issue 12).

Before: ``schema | head`` and ``inspect --json | head`` ended in BrokenPipeError tracebacks,
``--version`` did not exist, several arguments had no help and help had RST backticks,
``worker --broker URL`` was a click traceback, ``inspect`` printed wide tables with
Python's ``None`` next to ``null``, and ``run`` said nothing about row errors, replayed
old rates on a rerun, and logged the worker's own news at WARNING between tqdm bars.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
import yaml

from jobs.settings import Settings
from jobs.spec import load_spec
from producer.cli import _parser, main
from producer.embedded import EmbeddedRedis
from producer.inspect import inspect_output, render
from producer.submit import prepare, submit
from producer.watch import wait
from tests.models import tiny_model_path
from tests.reliability import queue_lists, wait_until
from worker.__main__ import parser as worker_parser

ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("BATCHFORMERS_")},
            "PYTHONPATH": str(ROOT), **extra}


def _actions(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.Action]]:
    found: list[tuple[str, argparse.Action]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += [(f"{name} {a.dest}", a) for a in sub._actions]
        else:
            found.append((action.dest, action))
    return found


def test_every_argument_has_help_without_rst() -> None:
    actions = _actions(_parser()) + [(f"worker {a.dest}", a) for a in worker_parser()._actions]
    missing = [name for name, action in actions if not action.help]
    assert not missing, missing
    texts = [str(action.help) for _, action in actions] + [_parser().description or ""]
    assert not [text for text in texts if "``" in text], "RST backticks in help"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.startswith("batchformers ")


def test_worker_help_shows_the_workers_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["worker", "--help"])
    shown = capsys.readouterr().out
    assert exited.value.code == 0
    assert all(option in shown for option in ("--broker", "--concurrency", "--hostname", "--queues", "celery worker"))


@pytest.mark.slow  # a CLI subprocess
@pytest.mark.parametrize("argv", [["schema"], ["inspect", "{output}", "--json"]], ids=["schema", "inspect-json"])
def test_a_closed_pipe_is_no_traceback(argv: list[str], tmp_path: Path, news_parquet: Path,
                                       settings: Settings) -> None:
    _, layout = prepare(load_spec({"task": "tokenize", "model": str(tiny_model_path("bert-ner")),
                                   "input": str(news_parquet), "columns": {"text": "body"},
                                   "output": str(tmp_path / "out")}), settings)
    command = [sys.executable, "-m", "producer.cli", *(a.format(output=layout.location) for a in argv)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), cwd=ROOT)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # as `| head` does once it has its lines
    err = process.stderr.read().decode()
    assert process.wait(timeout=60) == 0, err
    assert "BrokenPipeError" not in err and "Traceback" not in err, err


def test_inspect_fits_80_columns_and_spells_null_one_way(tmp_path: Path, news_parquet: Path,
                                                         settings: Settings) -> None:
    from rich.console import Console

    manifest, layout = prepare(load_spec({"task": "ner", "model": str(tiny_model_path("bert-ner")),
                                          "input": str(news_parquet), "columns": {"text": "body"},
                                          "output": str(tmp_path / "out")}), settings)
    entity = {"entity_group": "PER", "score": 0.99, "word": "John Smith " * 5, "start": 0, "end": 10}
    table = pa.table({"row_index": [0, 1], "entities": [[entity] * 30, [{**entity, "word": None}]],
                      "error": pa.array([None, None], pa.string())})
    layout.commit(0, table, {"rows": 2, "errors": 0, "seconds": 0.1})
    console = Console(record=True, width=80)
    console.print(render(inspect_output(layout.location, rows=2)))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "30 items" in text and "null" in text and "None" not in text, text


# -- with real workers ----------------------------------------------------------------------------------


def _job(tmp_path: Path, name: str, text: list[object]) -> Path:
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(len(text))], "text": text}), tmp_path / f"{name}.parquet")
    job = tmp_path / f"{name}.yaml"
    job.write_text(yaml.safe_dump({"task": "tokenize", "model": str(tiny_model_path("bert-ner")),
                                   "input": f"{name}.parquet", "columns": {"id": "id"}, "output": f"out-{name}",
                                   "shard_rows": 5}))
    return job


def _run(job: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "producer.cli", "run", str(job), "--no-progress"], capture_output=True,
                          text=True, timeout=180, env=_env(BATCHFORMERS_TORCH_THREADS="1"), cwd=job.parent)


@pytest.mark.slow
def test_run_reports_errors_reruns_and_worker_logs(tmp_path: Path) -> None:
    good = _job(tmp_path, "good", [f"John Smith visited Paris on day {i}." for i in range(10)])
    done = _run(good)
    assert done.returncode == 0, done.stderr
    assert "errors: none" in done.stdout and "worker logs" not in done.stderr

    again = _run(good)  # a finished job: said plainly, no replay of old rates
    assert again.returncode == 0, again.stderr
    assert "already complete" in again.stderr and "rows/s" not in again.stdout

    bad = _job(tmp_path, "bad", list(range(10)))  # a text column of ints: every row is an error
    failed = _run(bad)
    assert failed.returncode == 1, failed.stderr
    assert "FAILED" in failed.stdout and "ERRORS: 10 rows (100%)" in failed.stdout, failed.stdout
    assert "max_error_rate" in failed.stdout
    logs = Path(failed.stderr.split("worker logs: ")[1].split()[0])
    log = (logs / "worker-0.log").read_text()
    assert "INFO/ForkPoolWorker-1] batchformers: loaded tokenize model" in log, log
    assert "WARNING/ForkPoolWorker-1] batchformers" not in log
    assert "Loading weights" not in log and "it/s]" not in log  # no tqdm bars


@pytest.mark.slow
def test_worker_takes_broker_and_masks_only_passwords(tmp_path: Path, redis_url: str, queue_name: str,
                                                      news_parquet: Path) -> None:
    log = tmp_path / "worker.log"
    with EmbeddedRedis(password="s3cret-pw") as backend, open(log, "wb") as handle:
        env = _env(BATCHFORMERS_RESULT_BACKEND=backend.url, BATCHFORMERS_TORCH_THREADS="1")
        worker = subprocess.Popen([sys.executable, "-m", "producer.cli", "worker", "--broker", redis_url,
                                   "-Q", queue_name, "-n", f"{queue_name}@%h"], stdout=handle,
                                  stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        try:
            spec = load_spec({"task": "tokenize", "model": str(tiny_model_path("bert-ner")), "input": str(news_parquet),
                              "columns": {"text": "body"}, "output": str(tmp_path / "out"), "shard_rows": 40})
            submission = submit(spec, Settings(broker_url=redis_url, queue=queue_name))
            assert wait(submission.output, timeout=120).state == "complete", log.read_text()
            wait_until(lambda: "results:" in log.read_text(), 10, "the banner")
        finally:
            worker.terminate()
            worker.wait(timeout=30)
            redis.Redis.from_url(redis_url).delete(*queue_lists(redis_url, queue_name))
    banner = log.read_text()
    host = redis_url.split("://", 1)[1].split("/", 1)[0]
    assert f"transport:   redis://{host}/" in banner, banner  # no password: nothing to mask
    assert "results:     redis://:**@127.0.0.1" in banner and "s3cret-pw" not in banner, banner
    assert "Traceback" not in banner


def test_a_negative_keep_warm_is_refused_before_anything_starts(tmp_path: Path, news_parquet: Path,
                                                                capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATCHFORMERS_BROKER_URL", raising=False)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"task": "tokenize", "model": str(tiny_model_path("bert-ner")),
                                   "input": str(news_parquet), "columns": {"text": "body"},
                                   "output": str(tmp_path / "out")}))
    assert main(["run", str(job), "--keep-warm", "-1", "--no-progress"]) == 2
    assert "--keep-warm must be 0 or more seconds" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

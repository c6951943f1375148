"""The control path imports nothing heavy: each command, in a fresh interpreter, on a real job.

``status``, ``jobs``, ``cancel``, ``retry``, ``inspect``, ``report``, ``schema``, ``--help`` and ``--version``
never load torch, transformers, datasets or pandas (seconds of imports, for a command that reads
a few small files and Redis keys); ``submit`` checks and pins a local model from its files,
without torch or transformers. What a command imported is read from its own ``sys.modules``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
import redis

from jobs.io.layout import OutputLayout
from jobs.settings import Settings
from jobs.spec import load_spec
from producer.submit import submit
from tests.models import tiny_model_path
from tests.reliability import queue_lists

ROOT = Path(__file__).resolve().parents[2]
HEAVY = {"torch", "transformers", "datasets", "pandas"}
RUN = """
import json, sys
from producer.cli import main
try:
    code = main(sys.argv[2:])
except SystemExit as exc:  # --help, --version
    code = exc.code
with open(sys.argv[1], "w") as handle:
    json.dump({"code": code, "modules": sorted(sys.modules)}, handle)
"""


@pytest.fixture(scope="module")
def job(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, str, str]]:
    """A 7-shard tokenize job with one shard committed and one failed, on a queue of its own (dropped after)."""
    settings = Settings(broker_url=redis_url, queue=f"bf-test-light-{uuid.uuid4().hex[:8]}")
    folder = tmp_path_factory.mktemp("light")
    source = folder / "news.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": [f"sentence number {i}." for i in range(66)]}), source)
    spec = load_spec({"task": "tokenize", "model": str(tiny_model_path("bert-ner")), "input": str(source),
                      "columns": {"text": "body"}, "output": str(folder / "out"), "shard_rows": 10})
    submitted = submit(spec, settings)
    layout = OutputLayout(submitted.output)
    layout.commit(0, pa.table({"x": list(range(10))}), {"rows": 10, "errors": 0, "seconds": 0.1})
    layout.mark_failed(6, "ModelLoadError: cannot load model 'nope'", attempts=3)
    yield settings, submitted.job_id, submitted.output
    redis.Redis.from_url(redis_url).delete(*queue_lists(redis_url, settings.queue))


def _imported(settings: Settings, tmp_path: Path, *argv: str) -> set[str]:
    """Run ``batchformers ARGV`` in a fresh interpreter; the modules it had loaded when it returned."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BATCHFORMERS_")},
           "BATCHFORMERS_BROKER_URL": settings.broker_url, "BATCHFORMERS_QUEUE": settings.queue}
    report = tmp_path / "modules.json"
    done = subprocess.run([sys.executable, "-c", RUN, str(report), *argv], capture_output=True, text=True,
                          timeout=120, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    result = json.loads(report.read_text())
    assert result["code"] in (0, None), (argv, done.stdout, done.stderr)
    return {name.partition(".")[0] for name in result["modules"]}


COMMANDS = {
    "status": lambda job_id, output: ["status", output],
    "status-by-id-json": lambda job_id, output: ["status", job_id, "--json"],
    "jobs": lambda job_id, output: ["jobs", "--limit", "5"],
    "jobs-json": lambda job_id, output: ["jobs", "--json"],
    "inspect": lambda job_id, output: ["inspect", output],
    "report": lambda job_id, output: ["report", output, "--out", str(Path(output).parent / "report.html")],
    "schema": lambda job_id, output: ["schema"],
    "help": lambda job_id, output: ["--help"],
    "version": lambda job_id, output: ["--version"],
    "cancel": lambda job_id, output: ["cancel", job_id],
    "retry": lambda job_id, output: ["retry", output],  # after cancel: it lifts it and re-enqueues shard 6
}
SENDS = {"retry"}  # the commands that send shard tasks: only they load Celery


@pytest.mark.parametrize("command", list(COMMANDS))
def test_control_commands_import_no_model_library(command: str, job: tuple[Settings, str, str],
                                                  tmp_path: Path) -> None:
    settings, job_id, output = job
    imported = _imported(settings, tmp_path, *COMMANDS[command](job_id, output))
    assert HEAVY & imported == set()
    assert command in SENDS or "celery" not in imported


def test_help_and_version_import_only_the_cli(job: tuple[Settings, str, str], tmp_path: Path) -> None:
    """Not even the spec's pydantic models, Redis or pyarrow: they only print."""
    for argv in (["--help"], ["--version"], ["status", "--help"]):
        assert {"pydantic", "redis", "pyarrow", "celery"} & _imported(job[0], tmp_path, *argv) == set()


def test_submit_checks_and_pins_a_local_model_without_torch(job: tuple[Settings, str, str], tmp_path: Path) -> None:
    settings = job[0]
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps({"task": "ner", "model": str(tiny_model_path("bert-ner")),
                                    "input": str(Path(job[2]).parent / "news.parquet"), "columns": {"text": "body"},
                                    "output": str(tmp_path / "out"), "shard_rows": 10}))
    imported = _imported(settings, tmp_path, "submit", str(job_file))
    assert {"torch", "transformers"} & imported == set()
    manifest = OutputLayout(str(tmp_path / "out")).read_manifest()
    assert manifest.model_pin and manifest.model_pin["kind"] == "local"  # checked and pinned all the same


def test_status_of_a_job_failed_by_its_row_errors_imports_no_pandas(redis_url: str, tmp_path: Path) -> None:
    """Its first row errors are read from the parts: ``pq.read_table`` would import pandas for that."""
    settings = Settings(broker_url=redis_url, queue=f"bf-test-light-{uuid.uuid4().hex[:8]}")
    source = tmp_path / "rows.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": [f"row {i}" for i in range(5)]}), source)
    spec = load_spec({"task": "tokenize", "model": str(tiny_model_path("bert-ner")), "input": str(source),
                      "columns": {"text": "body"}, "output": str(tmp_path / "out"), "max_error_rate": 0.1})
    submitted = submit(spec, settings)
    OutputLayout(submitted.output).commit(0, pa.table({"x": list(range(5)), "error": ["bad row"] * 5}),
                                          {"rows": 5, "errors": 5, "seconds": 0.1})
    from producer.status import job_status

    assert job_status(submitted.output).first_errors == ["bad row"]  # the path that reads the parts
    for argv in (["status", submitted.output, "--json"], ["jobs", "--json"]):
        assert HEAVY & _imported(settings, tmp_path, *argv) == set(), argv
    redis.Redis.from_url(redis_url).delete(*queue_lists(redis_url, settings.queue))

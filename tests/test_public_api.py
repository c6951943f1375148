"""``batchformers``, the public API: every name resolves, importing it costs nothing, every function
takes ``settings`` the same way, and the control functions act on a real job on a real Redis."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import batchformers as bf
from jobs.io.layout import OutputLayout
from jobs.recovery import shard_of
from jobs.settings import Settings
from tests.models import tiny_model_path
from tests.reliability import queued_messages

ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS = ["run", "submit", "status", "wait", "follow", "cancel", "retry", "jobs", "inspect_output", "search",
             "compact"]


def test_every_public_name_resolves_and_an_unknown_one_is_refused() -> None:
    for name in bf.__all__:
        assert getattr(bf, name) is not None, name
    assert issubclass(bf.SpecError, bf.BatchformersError) and issubclass(bf.BrokerUnavailable, bf.BatchformersError)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        bf.nope  # noqa: B018
    assert set(FUNCTIONS) <= set(bf.__all__)


def test_every_function_takes_settings_the_same_way() -> None:
    for name in FUNCTIONS:
        parameter = inspect.signature(getattr(bf, name)).parameters.get("settings")
        assert parameter is not None and parameter.default is None, name


def test_importing_the_package_loads_none_of_its_parts() -> None:
    code = "import json, sys, batchformers; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    loaded = {name.partition(".")[0] for name in json.loads(done.stdout)}
    assert {"jobs", "producer", "worker", "pydantic", "redis", "pyarrow"} & loaded == set()


def test_cancel_retry_jobs_and_status_act_on_a_real_job(redis_url: str, queue_name: str, tmp_path: Path) -> None:
    settings = Settings(broker_url=redis_url, queue=queue_name)
    source = tmp_path / "news.parquet"
    pq.write_table(pa.table({"body": [f"sentence number {i}." for i in range(30)]}), source)
    spec = bf.load_spec({"task": "tokenize", "model": str(tiny_model_path("bert-ner")), "input": str(source),
                         "columns": {"text": "body"}, "output": str(tmp_path / "out"), "shard_rows": 10})
    submitted = bf.submit(spec, settings)
    layout = OutputLayout(submitted.output)
    layout.commit(0, pa.table({"x": list(range(10))}), {"rows": 10, "errors": 0, "seconds": 0.1})
    layout.mark_failed(2, "ModelLoadError: cannot load model 'nope'", attempts=3)

    assert bf.cancel(submitted.job_id, settings) == submitted.output
    assert bf.status(submitted.job_id, settings).state == "cancelled"
    assert [line.job_id for line in bf.jobs(settings) if line.job_id == submitted.job_id] == [submitted.job_id]

    before = Counter(shard_of(json.loads(raw)) for raw in queued_messages(redis_url, queue_name))
    retried = bf.retry(submitted.job_id, settings)
    assert (retried.job_id, retried.output, retried.shards) == (submitted.job_id, submitted.output, [2])
    after = Counter(shard_of(json.loads(raw)) for raw in queued_messages(redis_url, queue_name))
    assert after - before == Counter({(submitted.job_id, 2): 1})  # only the failed shard, once more
    assert bf.status(submitted.output, settings).state != "cancelled"  # retry lifts the cancel
    assert bf.inspect_output(submitted.job_id, settings).job_id == submitted.job_id

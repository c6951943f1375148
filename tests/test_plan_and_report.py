"""See a job: `batchformers plan` before it runs, `batchformers report` after, on one real job.

One job of known rows (distinct short sentences, exact duplicates, rows over the tiny model's 64
tokens, empty and null texts) runs once for the module on two real workers; the plan's counts
must be exactly those rows, its time estimate within ``ESTIMATE_FACTOR`` of the job's own
shards, and the report, rendered by a real headless Chromium, must draw its charts with one
timeline lane per worker and show the markers' numbers. Markers of the previous release (none of
the new fields), of a job not finished yet, must still give a page.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.io.layout import SHARDS_DIR, SUCCESS_FILE, OutputLayout
from jobs.settings import Settings
from jobs.spec import JobSpec, load_spec
from producer.cli import main
from producer.embedded import LocalWorkers
from producer.preflight import preflight
from producer.report import write_report
from producer.submit import submit
from producer.watch import wait
from tests.browser import browse, needs_chromium
from tests.conftest import _kill

pytestmark = pytest.mark.slow  # two workers and a browser

DISTINCT, DUPLICATES, LONG, EMPTY, NULL = 150, 9, 7, 4, 3
ESTIMATE_FACTOR = 4.0  # the plan's shard seconds against the job's: a tiny model on a shared 2-core machine
NEW_FIELDS = ("worker_name", "started_at", "queue_wait_seconds", "model_load_seconds", "stages")
CHARTS = ("timeline", "throughput", "stages", "padding", "stragglers", "errors")


def known_rows() -> list[str | None]:
    short = [f"Anna met Boris in Paris on day {i} of the summit." for i in range(DISTINCT)]
    long = [" ".join(f"word{j}" for j in range(120)) + f" end {i}" for i in range(LONG)]
    rows: list[str | None] = [*short, *long, *short[:DUPLICATES], *[""] * EMPTY, *[None] * NULL]
    order = list(range(len(rows)))
    order = order[::2] + order[1::2]  # mixed, so that every shard has some of each
    return [rows[i] for i in order]


@pytest.fixture(scope="module")
def job(redis_url: str, ner_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[JobSpec, str]]:
    """The job, run to the end on two workers of a queue of its own."""
    folder = tmp_path_factory.mktemp("see-a-job")
    rows = known_rows()
    pq.write_table(pa.table({"doc_id": [f"d{i}" for i in range(len(rows))], "body": pa.array(rows, pa.string())}),
                   folder / "known.parquet")
    spec = load_spec({"task": "ner", "model": str(ner_model), "input": str(folder / "known.parquet"),
                      "columns": {"text": "body", "id": "doc_id"}, "output": str(folder / "out"),
                      "shard_rows": 40, "batch_size": 16})
    settings = Settings(broker_url=redis_url, queue=f"bf-test-report-{uuid.uuid4().hex[:8]}", lease_seconds=10)
    workers = LocalWorkers(redis_url, count=2, queue=settings.queue, log_dir=str(folder / "logs"),
                           extra_env={"BATCHFORMERS_LEASE_SECONDS": "10", "BATCHFORMERS_TORCH_THREADS": "1"}).start()
    try:
        submission = submit(spec, settings)
        assert wait(submission.output, timeout=180).state == "complete"
    finally:
        _kill(workers)
    yield spec, submission.output


def markers(output: str) -> dict[int, dict[str, Any]]:
    return OutputLayout(output).committed()


def test_plan_counts_the_known_rows_and_estimates_the_real_run(job: tuple[JobSpec, str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    spec, output = job
    before = sorted(p.relative_to(output) for p in Path(output).rglob("*"))
    monkeypatch.setenv("BATCHFORMERS_TORCH_THREADS", "1")  # as the job's workers ran
    found = preflight(spec, sample=4000, model_rows=200, workers=2)
    total = DISTINCT + DUPLICATES + LONG + EMPTY + NULL
    assert (found.rows, found.sample_rows, found.shards) == (total, total, 5)
    assert found.invalid == {"text is null": NULL}
    assert (found.empty, found.duplicates, found.over_limit) == (EMPTY, DUPLICATES, LONG)
    assert found.model_limit == 64 and "truncated: true" in found.over_limit_effect
    assert sum(rows for _, _, rows in found.token_histogram) == total - NULL
    # The job found the same: its errors are the null rows, its truncated rows the long ones.
    committed = markers(output)
    assert sum(m["errors"] for m in committed.values()) == NULL
    assert sum(m["truncated"] for m in committed.values()) == LONG
    # The estimate against the job's own shards (their seconds, without model loads).
    assert found.estimate is not None
    real = sum(m["seconds"] + m["stages"]["write"] for m in committed.values())
    assert real / ESTIMATE_FACTOR <= found.estimate.shard_seconds <= real * ESTIMATE_FACTOR, (found.estimate, real)
    assert sorted(p.relative_to(output) for p in Path(output).rglob("*")) == before  # nothing written


def test_plan_json_without_the_model(job: tuple[JobSpec, str], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    spec, _ = job
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(spec.model_dump(mode="json", exclude_none=True)))
    capsys.readouterr()
    assert main(["plan", str(job_file), "--no-model", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["estimate"] is None and found["invalid"] == {"text is null": NULL}
    assert (found["empty"], found["duplicates"], found["over_limit"]) == (EMPTY, DUPLICATES, LONG)


def timeline_lanes(dom: str) -> list[str]:
    start = dom.index('id="chart-timeline"')
    segment = dom[start:dom.index('id="chart-throughput"')]
    return re.findall(r'class="ytick"><text[^>]*data-unformatted="([^"]*)"', segment)


def rendered(path: str) -> tuple[str, dict[str, str]]:
    dom = browse(Path(path).resolve().as_uri())
    for chart in CHARTS:  # plotly drew each chart: an svg inside its div
        start = dom.index(f'id="chart-{chart}"')
        assert 'class="main-svg"' in dom[start:start + 20000], chart
    return dom, dict(re.findall(r'data-key="([^"]+)">([^<]*)<', dom))


@needs_chromium
def test_report_in_a_browser(job: tuple[JobSpec, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, output = job
    page = tmp_path / "report.html"
    assert main(["report", output, "--out", str(page), "--png", str(tmp_path / "png")]) == 0
    assert sorted(p.stem for p in (tmp_path / "png").glob("*.png")) == sorted(CHARTS)
    assert "<script src=" not in page.read_text()  # plotly.js is inlined: the page opens offline
    dom, shown = rendered(str(page))
    committed = markers(output)
    for marker in committed.values():  # what each shard records now
        assert set(marker["stages"]) == {"read", "encode", "forward", "decode", "write"}
        assert marker["queue_wait_seconds"] >= 0 and marker["started_at"] <= marker["committed_at"]
    workers = {m["worker_name"] for m in committed.values()}
    assert len(workers) == 2 and sorted(timeline_lanes(dom)) == sorted(workers)
    assert int(shown["rows"]) == sum(m["rows"] for m in committed.values())
    assert int(shown["errors"]) == sum(m["errors"] for m in committed.values()) == NULL
    assert int(shown["truncated"]) == sum(m["truncated"] for m in committed.values()) == LONG
    assert int(shown["committed"]) == len(committed) == 5 and int(shown["failed"]) == 0
    assert int(shown["model_loads"]) == sum(1 for m in committed.values() if "model_load_seconds" in m) >= 1
    assert int(shown["tokens"]) == sum(m["tokens"] for m in committed.values())
    assert f"<td>text is null</td><td>{NULL}</td>" in dom  # the rows in error, by kind


@needs_chromium
def test_report_on_a_running_job_with_markers_of_the_previous_release(job: tuple[JobSpec, str],
                                                                      tmp_path: Path) -> None:
    """Markers without the new fields, and a job not finished yet (one shard and _SUCCESS not there)."""
    _, output = job
    old = tmp_path / "old"
    shutil.copytree(output, old)
    for marker in (old / SHARDS_DIR).glob("*.json"):
        record = json.loads(marker.read_text())
        marker.write_text(json.dumps({k: v for k, v in record.items() if k not in NEW_FIELDS}))
    last = json.loads((old / SHARDS_DIR / "00004.json").read_text())
    (old / SHARDS_DIR / "00004.json").unlink()
    (old / SUCCESS_FILE).unlink()
    written = write_report(str(old), out=str(tmp_path / "old.html"))
    dom, shown = rendered(written.path)
    hosts = {m["worker"] for m in markers(str(old)).values()}
    assert sorted(timeline_lanes(dom)) == sorted(hosts)  # the host stands in for the worker's name
    total = DISTINCT + DUPLICATES + LONG + EMPTY + NULL
    assert int(shown["rows"]) == total - last["rows"] and int(shown["model_loads"]) == 0
    assert int(shown["committed"]) == 4 and "4 of 5 shards committed so far" in dom

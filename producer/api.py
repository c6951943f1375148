"""The public API, re-exported as :mod:`batchformers`: one function per command, each taking ``settings``.

A job is named by its id (looked up on the broker) or by its output location, everywhere.
``settings`` None means :class:`jobs.settings.Settings` read from the ``BATCHFORMERS_*``
environment. The command line (:mod:`producer.cli`) calls these functions and only prints, so
nothing a command does is out of reach from Python. Each function imports what it needs when
called: importing this module costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

    from jobs.settings import Settings
    from jobs.spec import JobSpec
    from producer.compact import Compaction
    from producer.inspect import OutputDescription
    from producer.jobs_view import JobLine
    from producer.preflight import Preflight
    from producer.report import Report
    from producer.status import JobStatus
    from producer.submit import Submission


@dataclass(frozen=True)
class Retried:
    """What ``retry`` re-enqueued: the job and its failed shards, sent again."""

    job_id: str
    output: str
    shards: list[int]


def run(spec: JobSpec, settings: Settings | None = None, *, workers: int = 1, progress: bool = False,
        timeout: float | None = None, log_dir: str | None = None,
        on_submit: Callable[[Submission], None] | None = None,
        on_stopping: Callable[[int], None] | None = None, keep_warm: float | None = None) -> JobStatus:
    """Run ``spec`` to the end: on the settings' broker when ``settings`` are given or
    ``BATCHFORMERS_BROKER_URL`` is set, else on an embedded Redis and ``workers`` local workers
    (:func:`producer.run.chosen_broker`), kept warm ``keep_warm`` idle seconds for the next run
    (default ``BATCHFORMERS_KEEP_WARM_SECONDS``; :mod:`producer.warm_pool`). A signal raises
    :class:`producer.run.RunInterrupted`."""
    from producer.run import run as run_job

    return run_job(spec, broker_url=settings.broker_url if settings is not None else None, workers=workers,
                   progress=progress, timeout=timeout, log_dir=log_dir, on_submit=on_submit,
                   on_stopping=on_stopping, keep_warm=keep_warm)


def submit(spec: JobSpec, settings: Settings | None = None) -> Submission:
    """Check, plan and enqueue ``spec`` on the broker; returns at once with the job's id."""
    from producer.submit import submit as submit_job

    return submit_job(spec, settings)


def status(job: str, settings: Settings | None = None) -> JobStatus:
    """One look at a job: from the broker's ledger when it answers, else from the output."""
    from producer.status import status as job_status

    return job_status(job, settings)


def wait(job: str, settings: Settings | None = None, *, timeout: float | None = None, poll: float = 0.5,
         on_update: Callable[[JobStatus], None] | None = None) -> JobStatus:
    """Poll until every shard is committed or failed, or the job is cancelled (TimeoutError after
    ``timeout`` seconds). With ``settings`` the wait also takes over dead workers' shards."""
    from producer.watch import wait as wait_for

    return wait_for(_output(job, settings), poll=poll, timeout=timeout, on_update=on_update, settings=settings)


def follow(job: str, settings: Settings | None = None, *, interval: float = 2.0) -> Iterator[JobStatus]:
    """The job's status now and every ``interval`` seconds until it finishes; meanwhile it takes over
    dead workers' shards and re-enqueues lost ones, as workers do."""
    from jobs.settings import Settings
    from producer.watch import follow as follow_job

    return follow_job(job, settings or Settings(), interval)


def cancel(job: str, settings: Settings | None = None) -> str:
    """Start no new shard of the job (running ones finish); submitting it again resumes it. Returns its output."""
    from jobs.errors import BatchformersError
    from jobs.io.layout import OutputLayout
    from jobs.settings import Settings
    from jobs.status_record import mirror

    settings = settings or Settings()
    output = _output(job, settings)
    layout = OutputLayout(output)
    layout.cancel()  # the truth; then its copy in the job's status record, which status reads
    try:
        job_id = job if output != job else layout.read_manifest().job_id
    except (BatchformersError, OSError):  # no job there to mirror the flag of
        return output
    mirror(settings.broker_url, job_id, "cancelled", True)
    return output


def retry(job: str, settings: Settings | None = None) -> Retried:
    """Re-enqueue only the job's failed shards, with fresh attempts (and lift a cancel)."""
    from jobs.io.layout import OutputLayout
    from jobs.settings import Settings
    from producer.submit import retry_failed

    settings = settings or Settings()
    layout = OutputLayout(_output(job, settings))
    messages = retry_failed(layout, settings)
    return Retried(layout.read_manifest().job_id, layout.location, [message.shard for message in messages])


def jobs(settings: Settings | None = None, limit: int | None = None) -> list[JobLine]:
    """Every job the broker knows, newest first, with what ``status`` would say of each."""
    from jobs.settings import Settings
    from producer.jobs_view import job_lines

    return job_lines(settings or Settings(), limit=limit)


def inspect_output(job: str, settings: Settings | None = None, rows: int = 5) -> OutputDescription:
    """A job output's schema, counts and first ``rows`` rows."""
    from producer.inspect import inspect_output

    return inspect_output(_location(job, settings), rows=rows)


def search(job: str, query: str, settings: Settings | None = None, *, top_k: int = 10, where: str | None = None,
           method: str = "duckdb") -> pa.Table:
    """The ``top_k`` rows of an embeddings job nearest to ``query`` (cosine), best first."""
    from producer.search import search as search_output

    return search_output(_location(job, settings), query, top_k=top_k, where=where, method=method)


def plan(spec: JobSpec, settings: Settings | None = None, *, sample: int = 4000, model_rows: int = 256,
         workers: int = 1, run_model: bool = True) -> Preflight:
    """The job's pre-flight profile and time estimate, from a sample of its input (no broker; writes nothing)."""
    from producer.preflight import preflight

    del settings  # no broker, no output: the plan reads the input and the model only
    return preflight(spec, sample=sample, model_rows=model_rows, workers=workers, run_model=run_model)


def report(job: str, settings: Settings | None = None, *, out: str | None = None,
           png_dir: str | None = None) -> Report:
    """One self-contained HTML page of the job (what is committed so far), optionally its charts as PNG."""
    from producer.report import write_report

    return write_report(_location(job, settings), out=out, png_dir=png_dir)


def compact(job: str, settings: Settings | None = None, *, target_mb: float = 256,
            log: Callable[[str], None] | None = None) -> Compaction:
    """Merge a finished job's small parts into parts of about ``target_mb`` MB; ``log`` hears each step."""
    from producer.compact import compact as compact_output

    return compact_output(_location(job, settings), target_bytes=int(target_mb * 2**20), log=log)


def _output(job: str, settings: Settings | None) -> str:
    """The output location of a job id or location (the broker is asked only for an id)."""
    from jobs.settings import Settings
    from producer.job_index import resolve

    return resolve(settings or Settings(), job)


def _location(job: str, settings: Settings | None) -> str:
    """A path or URL as given (what reads it says what is wrong with it); a bare name is a job id."""
    import os

    if "/" in job or os.sep in job or os.path.exists(job):
        return job
    return _output(job, settings)


__all__ = ["Retried", "cancel", "compact", "follow", "inspect_output", "jobs", "plan", "report", "retry", "run", "search", "status", "submit",
           "wait"]

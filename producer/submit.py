"""Submit a job: validate, write the manifest, enqueue one task per shard not yet done.

Submitting the same spec over the same input again resumes it: committed shards
are skipped, so a finished job enqueues nothing and does no model work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jobs.errors import BrokerUnavailable, OutputError, SpecError
from jobs.layout import OutputLayout
from jobs.manifest import Manifest
from jobs.message import TASK_NAME, ShardMessage
from jobs.settings import Settings
from jobs.spec import JobSpec
from producer.job_index import remember
from producer.plan import build_manifest


@dataclass(frozen=True)
class Submission:
    job_id: str
    output: str
    shards: int
    rows: int
    enqueued: int
    already_committed: int


def prepare(spec: JobSpec) -> tuple[Manifest, OutputLayout]:
    """Validate against the data and the output location; write the manifest if new."""
    manifest = build_manifest(spec)
    layout = OutputLayout(spec.output)
    if layout.has_manifest():
        existing = layout.read_manifest()
        if existing.spec_fingerprint != manifest.spec_fingerprint:
            raise SpecError(
                "output",
                f"{spec.output} holds another job ({existing.job_id}, task {existing.spec['task']}) "
                "with a different spec; choose another output directory or delete that one",
            )
        if existing.input_fingerprint != manifest.input_fingerprint:
            raise SpecError(
                "input",
                f"the input changed since job {existing.job_id} was submitted to {spec.output}; "
                "write to a new output directory (or delete the old one) to process the new data",
            )
        return existing, layout
    if layout.holds_other_data():
        raise SpecError("output", f"{spec.output} is not empty and holds no batchformers job; choose an empty directory")
    try:
        layout.storage.makedirs()
        layout.write_manifest(manifest)
    except OSError as exc:
        raise OutputError(f"cannot write to {spec.output}: {exc}") from exc
    return manifest, layout


def messages_for(manifest: Manifest, layout: OutputLayout, only: set[int] | None = None) -> list[ShardMessage]:
    """Messages for the shards that are not committed (optionally only some of them)."""
    committed = set(layout.committed())
    return [
        ShardMessage(
            job_id=manifest.job_id,
            shard=plan.index,
            output=layout.location,
            source=manifest.sources[plan.source].url,
            start=plan.start,
            stop=plan.stop,
        )
        for plan in manifest.shards
        if plan.index not in committed and (only is None or plan.index in only)
    ]


def enqueue(messages: list[ShardMessage], settings: Settings, app: Any = None) -> None:
    from worker.app import make_app

    app = app or make_app(settings)
    try:
        with app.producer_or_acquire() as producer:
            for message in messages:
                app.send_task(
                    TASK_NAME,
                    args=[message.to_dict()],
                    queue=settings.queue,
                    producer=producer,
                    argsrepr=f"job={message.job_id} shard={message.shard} rows={message.rows}",
                )
    except OSError as exc:
        raise BrokerUnavailable(f"cannot reach the broker: {exc}") from exc


def submit(spec: JobSpec, settings: Settings | None = None) -> Submission:
    settings = settings or Settings()
    manifest, layout = prepare(spec)
    layout.uncancel()
    for shard in layout.failed():
        layout.clear_failed(shard)
    messages = messages_for(manifest, layout)
    remember(settings, manifest.job_id, layout.location)
    if messages:
        enqueue(messages, settings)
    return Submission(
        job_id=manifest.job_id,
        output=layout.location,
        shards=len(manifest.shards),
        rows=manifest.total_rows,
        enqueued=len(messages),
        already_committed=len(manifest.shards) - len(messages),
    )

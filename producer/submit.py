"""Submit a job: validate, write the manifest, enqueue one task per shard not yet done.

Submitting the same spec over the same input again resumes it: committed shards
are skipped, so a finished job enqueues nothing and does no model work. A resubmit
(or ``retry``) also clears the shards' failure markers and delivery counts, so that
failed shards get their full number of attempts again.

Each task carries its time limits: ``soft_time_limit`` is the spec's
``shard_time_limit`` (else the settings'), ``time_limit`` that plus a grace period
in which the shard can record its failure (see :mod:`worker.lease`).

Before anything is written, ``submit`` makes sure the broker answers, the model
fits the task (:mod:`producer.model_check`) and the job stays within the operator's
caps (:mod:`producer.caps`), so a refused submit leaves the output location as it found
it. The manifest is written with the storage's create-once: of two submits to one fresh
output at the same moment, one writes its job and the other is refused. An output whose job never got anywhere (no shard committed;
every shard failed, or the job was interrupted or never enqueued) can be reused by a
different job.

The job's status record on the broker (:mod:`jobs.status_record`) is deleted before a
submit touches the broker's state of the job, and written again once its shards are enqueued.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from typing import NoReturn

import redis

from jobs.broker import QUICK_TIMEOUT, TIMEOUT, broker_errors, client
from jobs.dispatch import enqueue, messages_for, time_limits
from jobs.errors import BrokerUnavailable, OutputError, SpecError
from jobs.io.layout import META_DIR, OutputLayout
from jobs.ledger import Ledger
from jobs.manifest import Manifest
from jobs.protocol import ShardMessage
from jobs.settings import Settings
from jobs.spec import JobSpec
from jobs.status_record import forget as forget_record
from jobs.status_record import mirror, record_of
from jobs.status_record import write as write_record
from jobs.trust import check_model as allowed_model
from jobs.trust import check_no_userinfo
from producer.broker import forget_attempts, sending_app
from producer.caps import check_caps
from producer.interruption import clear_interrupted, interruption, mark_interrupted
from producer.job_index import remember
from producer.model_check import check_model
from producer.pin import check_pin, resolve_pin
from producer.plan import plan_job, read_warnings

NO_BROKER_ADVICE = ("nothing was written or enqueued. Start Redis there, or give the right URL (--broker or "
                    "BATCHFORMERS_BROKER_URL); batchformers run without a broker brings its own")


@dataclass(frozen=True)
class Submission:
    job_id: str
    output: str
    shards: int
    rows: int
    enqueued: int
    already_committed: int
    warnings: list[str] = dataclass_field(default_factory=list)

    @property
    def already_complete(self) -> bool:
        """Every shard was committed by an earlier run: nothing was enqueued."""
        return self.already_committed == self.shards


def check_allowed(spec: JobSpec, settings: Settings) -> None:
    """Input, output and a local model must lie under BATCHFORMERS_ALLOWED_ROOTS when the operator set it."""
    for field, location in (("output", spec.output), ("input", spec.input)):
        _refuse_outside(field, location, settings)
    allowed_model(spec.resolved_model(), settings)


def _refuse_outside(field: str, location: str, settings: Settings) -> None:
    if not settings.allows(location):
        raise SpecError(
            field,
            f"{location} is outside the allowed roots ({', '.join(settings.roots())}); "
            "use a location under one of them, or ask the operator to allow it in BATCHFORMERS_ALLOWED_ROOTS",
        )


def refuse_credentials(spec: JobSpec) -> None:
    """A location with ``user:password@`` is refused before anything is written or sent."""
    for field, location in (("output", spec.output), ("input", spec.input), ("model", spec.model or "")):
        check_no_userinfo(field, location)


def prepare(spec: JobSpec, settings: Settings | None = None) -> tuple[Manifest, OutputLayout]:
    """Validate against the data and the output location; write the manifest if new."""
    manifest, layout, _ = prepare_with_warnings(spec, settings)
    return manifest, layout


def prepare_with_warnings(spec: JobSpec, settings: Settings | None = None) -> tuple[Manifest, OutputLayout, list[str]]:
    """:func:`prepare`, and what the job's plan says about its inputs' read amplification (for the
    plan actually used: an existing job keeps the plan of its manifest)."""
    settings = settings or Settings()
    refuse_credentials(spec)
    check_allowed(spec, settings)  # before the plan reads anything
    manifest, units = plan_job(spec)
    for source in manifest.sources:  # the input files the plan found
        _refuse_outside("input", source.url, settings)
    check_caps(spec, manifest, settings)
    layout = OutputLayout(spec.output)
    replaced: Manifest | None = None
    if layout.has_manifest():
        existing = layout.read_manifest()
        if _same_job(existing, manifest):  # a resume loads the model pinned at the first submit
            check_pin(existing)
            return existing, layout, read_warnings(existing, units)
        if not _abandoned(layout, existing):
            _refuse_taken(spec, existing, manifest)
        _forget_job(layout)
        replaced = existing
    if layout.holds_other_data():
        raise SpecError("output", f"{spec.output} is not empty and holds no batchformers job; choose an empty directory")
    manifest = replace(manifest, model_pin=resolve_pin(spec).to_dict())
    try:
        layout.storage.makedirs()
        written = _write_manifest(layout, manifest, replaced)
    except OSError as exc:
        raise OutputError(f"cannot write to {spec.output}: {exc}") from exc
    if written and replaced is not None:  # `status` of the job it replaced reads this output's new manifest
        with contextlib.suppress(BrokerUnavailable):  # prepare needs no broker; submit checked it answers
            _forget_record(settings, replaced.job_id)
    if not written:  # another submit to this output got there first
        existing = layout.read_manifest()
        if not _same_job(existing, manifest):
            raise SpecError("output", f"another submit wrote job {existing.job_id} (task {existing.spec['task']}) "
                            f"to {spec.output} at the same moment; nothing of this job was written or enqueued. "
                            "Choose another output directory")
        check_pin(existing)
        return existing, layout, read_warnings(existing, units)
    return manifest, layout, read_warnings(manifest, units)


def _same_job(existing: Manifest, manifest: Manifest) -> bool:
    return (existing.spec_fingerprint, existing.input_fingerprint) == (manifest.spec_fingerprint,
                                                                      manifest.input_fingerprint)


def _write_manifest(layout: OutputLayout, manifest: Manifest, replaced: Manifest | None) -> bool:
    """Write the manifest once: with the storage's create-once on a fresh output; over an abandoned job's,
    only by the one submit that claims it first. False when another submit won."""
    if replaced is None:
        return layout.create_manifest(manifest)
    claim = f"{META_DIR}/replaced-{replaced.job_id}-{replaced.created_at!r}"
    if not layout.storage.create_once(manifest.job_id.encode(), claim):
        return False
    layout.write_manifest(manifest)
    return True


def _refuse_taken(spec: JobSpec, existing: Manifest, manifest: Manifest) -> NoReturn:
    if existing.spec_fingerprint != manifest.spec_fingerprint:
        raise SpecError(
            "output",
            f"{spec.output} holds another job ({existing.job_id}, task {existing.spec['task']}) "
            "with a different spec; choose another output directory or delete that one",
        )
    raise SpecError(
        "input",
        f"the input changed since job {existing.job_id} was submitted to {spec.output}; "
        "write to a new output directory (or delete the old one) to process the new data",
    )


def _abandoned(layout: OutputLayout, manifest: Manifest) -> bool:
    """No shard of the job was committed, and none can still be running: every one failed, or the
    job was interrupted with its embedded broker, or never enqueued."""
    committed, failed = layout.marker_numbers()
    if committed or layout.is_cancelled():
        return False
    return len(failed) == len(manifest.shards) or interruption(layout) is not None


def _forget_job(layout: OutputLayout) -> None:
    """Remove the markers of an abandoned job, so that another job can take its output location."""
    for shard in layout.marker_numbers()[1]:
        layout.clear_failed(shard)
    clear_interrupted(layout)


def _forget_record(settings: Settings, job_id: str) -> None:
    connection = client(settings.broker_url, TIMEOUT)
    try:
        with broker_errors(settings.broker_url, f"forget the status record of job {job_id}"):
            forget_record(connection, job_id)
    finally:
        connection.close()


def _write_record(settings: Settings, manifest: Manifest, output: str) -> None:
    """Best effort: the job is enqueued already, and without its record ``status`` reads the output."""
    connection = client(settings.broker_url, TIMEOUT)
    try:
        write_record(connection, record_of(manifest, output))
    except (BrokerUnavailable, OSError, redis.RedisError):
        pass
    finally:
        connection.close()


def check_broker(settings: Settings) -> None:
    """BrokerUnavailable unless the broker answers a ping."""
    connection = client(settings.broker_url, QUICK_TIMEOUT)
    try:
        with broker_errors(settings.broker_url, advice=NO_BROKER_ADVICE):
            connection.ping()
    finally:
        connection.close()


def give_fresh_attempts(manifest: Manifest, layout: OutputLayout, settings: Settings,
                        shards: set[int]) -> None:
    """Forget the failures and delivery counts of ``shards`` before they are enqueued again."""
    for shard in layout.marker_numbers()[1] & shards:
        layout.clear_failed(shard)
    connection = client(settings.broker_url, TIMEOUT)
    try:
        with broker_errors(settings.broker_url):
            forget_attempts(connection, manifest.job_id, shards)
            # the ledger's failures too: the status record's path trusts them without the failure markers
            Ledger.for_manifest(connection, manifest).forget_failure(shards)
    finally:
        connection.close()


def submit(spec: JobSpec, settings: Settings | None = None) -> Submission:
    """Check, write the manifest (if new) and enqueue the shards not yet committed."""
    settings = settings or Settings()
    refuse_credentials(spec)
    check_broker(settings)
    warnings = check_model(spec, settings)
    manifest, layout, read_amplification = prepare_with_warnings(spec, settings)
    warnings = warnings + read_amplification
    try:  # before the output's flags change: the record never says what the output no longer does
        _forget_record(settings, manifest.job_id)
    except BrokerUnavailable as exc:
        mark_interrupted(layout, f"not enqueued: {exc}")
        raise
    layout.uncancel()
    clear_interrupted(layout)
    messages = messages_for(manifest, layout)
    try:
        give_fresh_attempts(manifest, layout, settings, {m.shard for m in messages})
        remember(settings, manifest.job_id, layout.location)
        if messages:
            enqueue(messages, settings, sending_app(settings), limits=time_limits(spec, settings), spec=spec)
    except BrokerUnavailable as exc:  # the broker went away after the check: say so in the output
        mark_interrupted(layout, f"not enqueued: {exc}")
        raise
    _write_record(settings, manifest, layout.location)
    return Submission(
        job_id=manifest.job_id,
        output=layout.location,
        shards=len(manifest.shards),
        rows=manifest.total_rows,
        enqueued=len(messages),
        already_committed=len(manifest.shards) - len(messages),
        warnings=warnings,
    )


def retry_failed(layout: OutputLayout, settings: Settings) -> list[ShardMessage]:
    """Re-enqueue only the failed shards of the job at ``layout`` (and lift a cancel)."""
    manifest = layout.read_manifest()
    committed, failed = layout.marker_numbers()
    failed -= committed
    layout.uncancel()
    mirror(settings.broker_url, manifest.job_id, "cancelled", False)
    messages = messages_for(manifest, layout, only=failed)
    give_fresh_attempts(manifest, layout, settings, failed)
    if messages:
        spec = manifest.job_spec()
        enqueue(messages, settings, sending_app(settings), limits=time_limits(spec, settings), spec=spec)
    return messages

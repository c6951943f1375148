"""What the producer and the worker share: the task, its message, the Redis keys, the Celery settings.

Both sides depend on this module and never on each other. It imports no Celery (``jobs/``
never does): :func:`celery_config` is a plain dict that ``worker.app`` and
``producer.broker`` each build their app from.

Every Redis key batchformers writes, by job (``<job>``) and shard (``<shard>``):

    batchformers:ledger:<job>            HASH  counts and totals of committed shards (jobs.ledger)
    batchformers:ledger:<job>:committed  SET   shard numbers that have a commit marker
    batchformers:ledger:<job>:unread     SET   committed shards whose marker is not in the totals yet
    batchformers:ledger:<job>:failed     HASH  shard -> error, failed for good (until retried)
    batchformers:ledger:<job>:running    SET   shards a worker has started (checked against leases)
    batchformers:lease:<job>:<shard>           the lease of a running shard (worker.lease)
    batchformers:deliveries:<job>:<shard>      starts of a shard (worker.deliveries)
    batchformers:last-error:<job>:<shard>      its last error (worker.deliveries)
    batchformers:job:<job>                     job id -> output location (producer.job_index; kept)
    batchformers:output-job:<output>           output location -> the job id last submitted there (kept)
    batchformers:jobs                    ZSET  job ids by latest submit time (producer.job_index; kept)
    batchformers:job-queues              HASH  job id -> the queue its shards were sent to (kept)
    batchformers:requeue:<job>:<shard>:<n>     SET NX lock: one scanner re-enqueues the shard after its
                                               n-th start (jobs.recovery; expires)
    batchformers:unseen:<job>            HASH  shard -> when a scan first found it nowhere: no marker,
                                               message, lease or running entry (jobs.recovery)
    batchformers:heal-scan                     SET NX lock: one process a period looks for lost messages
    batchformers:routes:<queue>          HASH  job queue -> its route: job, priority, model (jobs.routing)
    batchformers:routes:<queue>:version        bumped on every route change; workers poll it (jobs.routing)
    batchformers:serving:<queue>         HASH  worker -> the models it has loaded (worker.routing)
    batchformers:since:<job>             HASH  shard -> when its current run started (jobs.speculation)
    batchformers:copy:<job>:<shard>            SET NX lock: one speculative copy of a straggler (expires)
    batchformers:copy-lease:<job>:<shard>      the lease of a running copy (worker.lease)
    batchformers:copies:<job>            HASH  shard -> copies started of it (status shows their count)
    batchformers:status:<job>            HASH  what status reads of the manifest, and the output's cancel
                                               and interruption flags, mirrored (jobs.status_record;
                                               lives as the ledger does)

A job's cancel flag is the ``CANCELLED`` file in the output location (:mod:`jobs.io.layout`), so it
survives a lost Redis; the status record only mirrors it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

# kombu's ``priority_steps``: one Redis list per priority 0-9, so two priorities never share one (jobs.routing).
MIN_PRIORITY = 0
MAX_PRIORITY = 9
DEFAULT_PRIORITY = 5
"""A spec's ``priority``: 0-9, higher first (:mod:`jobs.routing` maps it onto kombu's priorities)."""
PRIORITY_STEPS = list(range(10))

if TYPE_CHECKING:
    from jobs.settings import Settings

TASK_NAME = "batchformers.run_shard"
# How `batchformers run` tells its local workers' pool processes the job to preload (worker.preload):
# its output location and spec fingerprint.
PRELOAD_OUTPUT_ENV = "BATCHFORMERS_PRELOAD_OUTPUT"
PRELOAD_SPEC_ENV = "BATCHFORMERS_PRELOAD_SPEC"

LEDGER_PREFIX = "batchformers:ledger:"
LEDGER_PARTS = ("committed", "unread", "failed", "running")
LEASE_PREFIX = "batchformers:lease:"
DELIVERIES_PREFIX = "batchformers:deliveries:"
LAST_ERROR_PREFIX = "batchformers:last-error:"
JOB_INDEX_PREFIX = "batchformers:job:"
OUTPUT_JOB_PREFIX = "batchformers:output-job:"
JOBS_KEY = "batchformers:jobs"
JOB_QUEUES_KEY = "batchformers:job-queues"
REQUEUE_PREFIX = "batchformers:requeue:"
UNSEEN_PREFIX = "batchformers:unseen:"
HEAL_SCAN_KEY = "batchformers:heal-scan"
ROUTES_PREFIX = "batchformers:routes:"
SERVING_PREFIX = "batchformers:serving:"
SINCE_PREFIX = "batchformers:since:"
COPY_PREFIX = "batchformers:copy:"
COPY_LEASE_PREFIX = "batchformers:copy-lease:"
COPIES_PREFIX = "batchformers:copies:"
STATUS_RECORD_PREFIX = "batchformers:status:"

# A shard whose worker vanished is redelivered after VISIBILITY_MARGIN leases; the lease in
# worker.lease stops a slow-but-alive shard from running twice meanwhile (see its docstring).
VISIBILITY_MARGIN = 2.0
# Unacked messages older than the visibility timeout are looked for every lease / RESTORE_SWEEPS
# seconds (kombu's default is about every 100 s, too slow for a one-minute bound).
RESTORE_SWEEPS_PER_LEASE = 2
MAX_RESTORE_INTERVAL = 30
# A replacement pool process imports torch before it reports up; on a loaded machine that takes
# longer than Celery's 4 s, and the process would be killed and replaced again and again.
PROCESS_UP_TIMEOUT = 60.0
# Publishing a task or storing a result waits this long for a restarting broker.
PUBLISH_RETRY = {"max_retries": 20, "interval_start": 0.5, "interval_step": 1.0, "interval_max": 5.0}
RESULT_EXPIRES_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class ShardMessage:
    """The wire message of a shard task: a reference to the data, never the data.

    JSON-safe; a few hundred bytes whatever the dataset size.
    """

    job_id: str
    shard: int
    output: str
    source: str
    start: int
    stop: int
    enqueued_at: float | None = None
    """When it was sent (``time.time()``), for the queue wait a marker records; older messages lack it."""
    copy: bool = False
    """A speculative copy of a straggling shard (:mod:`jobs.speculation`): it runs beside the holder."""

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ShardMessage:
        optional = {"enqueued_at", "copy"}  # messages sent before they existed have none
        return cls(**{name: raw[name] for name in cls.__dataclass_fields__ if name in raw or name not in optional})


def ledger_keys(job_id: str) -> list[str]:
    """The ledger's keys: the hash, then the committed, unread, failed and running sets."""
    base = f"{LEDGER_PREFIX}{job_id}"
    return [base, *(f"{base}:{part}" for part in LEDGER_PARTS)]


def running_key(job_id: str) -> str:
    """The ledger's set of shards a worker has started and not yet committed or failed."""
    return f"{LEDGER_PREFIX}{job_id}:running"


def requeue_key(job_id: str, shard: int, starts: int | str) -> str:
    """The claim on re-enqueueing ``shard`` after its ``starts``-th start (:mod:`jobs.recovery`)."""
    return f"{REQUEUE_PREFIX}{job_id}:{shard}:{starts}"


def lease_key(job_id: str, shard: int) -> str:
    return f"{LEASE_PREFIX}{job_id}:{shard}"


def copy_lease_key(job_id: str, shard: int) -> str:
    return f"{COPY_LEASE_PREFIX}{job_id}:{shard}"


def deliveries_key(job_id: str, shard: int) -> str:
    return f"{DELIVERIES_PREFIX}{job_id}:{shard}"


def last_error_key(job_id: str, shard: int) -> str:
    return f"{LAST_ERROR_PREFIX}{job_id}:{shard}"


def attempt_keys(job_id: str, shards: Iterable[int]) -> list[str]:
    """The delivery counts and last errors of ``shards``: what a resubmit or ``retry`` forgets."""
    return [key for shard in shards for key in (deliveries_key(job_id, shard), last_error_key(job_id, shard))]


def job_index_key(job_id: str) -> str:
    return f"{JOB_INDEX_PREFIX}{job_id}"


def output_job_key(output: str) -> str:
    """The id of the job last submitted to ``output``, so that ``status OUTPUT`` finds its status record."""
    return f"{OUTPUT_JOB_PREFIX}{output}"


def status_record_key(job_id: str) -> str:
    """The job's status record (:mod:`jobs.status_record`)."""
    return f"{STATUS_RECORD_PREFIX}{job_id}"


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration of both apps: JSON only, late acks, prefetch 1, events on for Flower."""
    restore_every = max(1, min(MAX_RESTORE_INTERVAL, int(settings.lease_seconds / RESTORE_SWEEPS_PER_LEASE)))
    transport: dict[str, Any] = {
        "visibility_timeout": max(1, int(settings.lease_seconds * VISIBILITY_MARGIN)),
        "unacked_restore_interval": restore_every,
        "unacked_restore_throttle": 1,
    }
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "result_backend": settings.backend_url(),
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_timeout": False,  # a shard killed at its hard time limit is requeued, then counted
        "worker_prefetch_multiplier": 1,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "task_default_queue": settings.queue,
        # One Redis list per priority (jobs.routing); workers replace the queue order with their own.
        "broker_transport_options": {**transport, "priority_steps": PRIORITY_STEPS,
                                     "queue_order_strategy": "round_robin"},
        "result_backend_transport_options": transport,
        "result_expires": RESULT_EXPIRES_SECONDS,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # a worker outlives any broker restart
        "task_publish_retry_policy": PUBLISH_RETRY,
        "result_backend_always_retry": True,
        "result_backend_max_retries": PUBLISH_RETRY["max_retries"],
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_proc_alive_timeout": PROCESS_UP_TIMEOUT,
    }
    if settings.broker_url.startswith("rediss://"):
        config["broker_use_ssl"] = {"ssl_cert_reqs": "required"}
    if settings.backend_url().startswith("rediss://"):
        config["redis_backend_use_ssl"] = {"ssl_cert_reqs": "required"}
    return config

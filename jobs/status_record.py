"""A job's status record on the broker: what ``status`` needs of the manifest, and the flags it reads.

``status`` of a job on an object store would otherwise import the store's client (s3fs and its
aiobotocore stack: most of a second) and make a round trip for each of the manifest, the cancel
flag, the interruption markers and ``_SUCCESS``, before the broker's ledger gives it every count.
So ``submit`` keeps, in one Redis hash ``batchformers:status:<job>`` (:mod:`jobs.protocol`):

    facts        JSON: job id, output, spec fingerprint, created_at, shard rows (run-length encoded:
                 5,000 equal shards are a few bytes), task, model as pinned, priority, max_error_rate
    cancelled    "1" while ``cancel`` holds the job (the output's ``CANCELLED``)
    interrupted  the ``INTERRUPTED`` marker's JSON, or "" (:mod:`producer.interruption`)
    run          the ``RUN`` marker's JSON, or ""

and each command that writes one of those flags in the output writes it here too. The output stays
the truth: a record that is missing, unreadable, of another job or another output, or on a broker
that does not answer sends ``status`` back to the output (:func:`producer.status.job_status`); a worker that finds
the output cancelled sets the flag too, for a cancel written while the broker was down.
The record is written after the job is enqueued and deleted before a resubmit touches anything, so
a submit that fails half-way leaves no record that disagrees with its output. It lives as the
ledger does (:mod:`jobs.ledger`): ``ACTIVE_SECONDS`` from submit, the retention period from the
job's end (:meth:`jobs.ledger.Ledger.finish`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from jobs.broker import QUICK_TIMEOUT, client, text
from jobs.ledger import ACTIVE_SECONDS
from jobs.protocol import DEFAULT_PRIORITY, status_record_key

if TYPE_CHECKING:
    from jobs.manifest import Manifest

RECORD_VERSION = 1
FLAGS = ("cancelled", "interrupted", "run")

# Set one flag of an existing record only: a flag alone, without its facts, would be a key without a TTL.
_SET_FLAG = """
if redis.call('HEXISTS', KEYS[1], 'facts') == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


@dataclass(frozen=True)
class StatusRecord:
    """What ``status`` reads of a job besides its counts, as the output had it at the last write."""

    job_id: str
    output: str
    spec_fingerprint: str
    created_at: float
    shard_rows: list[int]
    task: str
    model: str
    priority: int
    max_error_rate: float
    cancelled: bool = False
    interrupted: dict[str, Any] | None = None
    run: dict[str, Any] | None = None

    @property
    def shards(self) -> int:
        return len(self.shard_rows)

    @property
    def total_rows(self) -> int:
        return sum(self.shard_rows)


def record_of(manifest: Manifest, output: str) -> StatusRecord:
    """The record of a job freshly submitted (no flag set: submit lifts a cancel and an interruption)."""
    return StatusRecord(job_id=manifest.job_id, output=output, spec_fingerprint=manifest.spec_fingerprint,
                        created_at=float(manifest.created_at), shard_rows=[s.rows for s in manifest.shards],
                        task=str(manifest.spec.get("task", "")), model=pinned_model(manifest),
                        priority=priority_of(manifest),
                        max_error_rate=float(manifest.spec_value("max_error_rate")))


def priority_of(manifest: Manifest) -> int:
    """The spec's ``priority`` (0-9, higher first) when it has one, else the default."""
    priority = manifest.spec.get("priority")
    return DEFAULT_PRIORITY if priority is None else int(priority)


def pinned_model(manifest: Manifest) -> str:
    """The pin in one line; the spec's model (and revision) for a job submitted before pins."""
    from jobs.pinning import pin_of

    pin = pin_of(manifest)
    if pin is not None:
        return pin.label()
    model = str(manifest.spec.get("model") or "")
    revision = manifest.spec.get("revision")
    return f"{model} @ {revision} (not pinned)" if revision else f"{model} (not pinned)"


def encode(record: StatusRecord) -> dict[str, str]:
    """The hash's fields."""
    facts = {"v": RECORD_VERSION, "job_id": record.job_id, "output": record.output,
             "spec_fingerprint": record.spec_fingerprint, "created_at": repr(record.created_at),
             "rows": _runs(record.shard_rows), "task": record.task, "model": record.model,
             "priority": record.priority, "max_error_rate": record.max_error_rate}
    return {"facts": json.dumps(facts, separators=(",", ":")), "cancelled": "1" if record.cancelled else "0",
            "interrupted": _json_or_empty(record.interrupted), "run": _json_or_empty(record.run)}


def decode(fields: dict[Any, Any]) -> StatusRecord | None:
    """The record, or None when it is missing, of another version, or cannot be read."""
    values = {text(k): text(v) for k, v in fields.items()}
    try:
        facts = json.loads(values["facts"])
        if facts.get("v") != RECORD_VERSION:
            return None
        return StatusRecord(
            job_id=str(facts["job_id"]), output=str(facts["output"]), spec_fingerprint=str(facts["spec_fingerprint"]),
            created_at=float(facts["created_at"]), shard_rows=_unruns(facts["rows"]), task=str(facts["task"]),
            model=str(facts["model"]), priority=int(facts["priority"]), max_error_rate=float(facts["max_error_rate"]),
            cancelled=values.get("cancelled") == "1", interrupted=_dict_or_none(values.get("interrupted", "")),
            run=_dict_or_none(values.get("run", "")))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def read(connection: redis.Redis, job_id: str) -> StatusRecord | None:
    """The record of ``job_id``; None without one (or with one that names another job). RedisError passes."""
    found = decode(connection.hgetall(status_record_key(job_id)))
    return found if found is not None and found.job_id == job_id else None


def write(connection: redis.Redis, record: StatusRecord, ttl: int = ACTIVE_SECONDS) -> None:
    key = status_record_key(record.job_id)
    pipe = connection.pipeline()
    pipe.delete(key)
    pipe.hset(key, mapping=encode(record))  # type: ignore[arg-type]
    pipe.expire(key, ttl)
    pipe.execute()


def forget(connection: redis.Redis, job_id: str) -> None:
    connection.delete(status_record_key(job_id))


def set_flag(connection: redis.Redis, job_id: str, name: str, value: bool | dict[str, Any] | None) -> bool:
    """Mirror one flag the output just got; False when the job has no record (status then reads the output)."""
    assert name in FLAGS, name
    encoded = ("1" if value else "0") if isinstance(value, bool) else _json_or_empty(value)
    return bool(connection.eval(_SET_FLAG, 1, status_record_key(job_id), name, encoded))


def mirror(broker_url: str, job_id: str, name: str, value: bool | dict[str, Any] | None) -> bool:
    """:func:`set_flag` at ``broker_url``, best effort: False when the broker does not answer.

    The flag is in the output already; a broker that is down now has no reader of the record either,
    and the next submit writes the record again from the output's state."""
    connection = client(broker_url, QUICK_TIMEOUT)
    try:
        return set_flag(connection, job_id, name, value)
    except redis.RedisError:
        return False
    finally:
        connection.close()


def _runs(rows: list[int]) -> list[list[int]]:
    """[[rows, count], ...]: a plan's shards are all ``shard_rows`` long but the last of each input."""
    runs: list[list[int]] = []
    for value in rows:
        if runs and runs[-1][0] == value:
            runs[-1][1] += 1
        else:
            runs.append([value, 1])
    return runs


def _unruns(runs: list[list[int]]) -> list[int]:
    rows: list[int] = []
    for value, count in runs:
        if int(count) < 0 or int(value) < 0:
            raise ValueError("negative shard rows")
        rows.extend([int(value)] * int(count))
    return rows


def _json_or_empty(value: dict[str, Any] | None) -> str:
    return "" if value is None else json.dumps(value, separators=(",", ":"))


def _dict_or_none(text: str) -> dict[str, Any] | None:
    if not text:
        return None
    loaded = json.loads(text)
    if not isinstance(loaded, dict):
        raise ValueError("a flag that is not an object")
    return loaded


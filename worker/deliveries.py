"""How many times each shard was started, counted in Redis (Redis itself does not count deliveries).

A shard that kills its worker (a segfault, the OOM killer) raises no exception anywhere:
its message is simply delivered again. Counting starts at the beginning of each run is
what bounds such a poison shard: after ``1 + max_retries`` starts it is marked failed with
its last error, instead of killing workers forever. Before running, a worker records
"the worker was lost" as the shard's last error; an exception caught later replaces it,
so whatever ended the last run is what ``status`` shows.
"""

from __future__ import annotations

import redis

from jobs.protocol import deliveries_key, last_error_key

KEEP_SECONDS = 14 * 24 * 3600  # counters of abandoned jobs expire on their own
_DECREMENT_TO_ZERO = """
if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then
    return redis.call('DECR', KEYS[1])
end
return 0
"""


class DeliveryCount:
    """The delivery counter and last error of one shard."""

    def __init__(self, client: redis.Redis, job_id: str, shard: int) -> None:
        self.client = client
        self.key = deliveries_key(job_id, shard)
        self.error_key = last_error_key(job_id, shard)

    def increment(self) -> int:
        """Count one more start of the shard; returns the count, 1 for the first."""
        pipe = self.client.pipeline()
        pipe.incr(self.key)
        pipe.expire(self.key, KEEP_SECONDS)
        count, _ = pipe.execute()
        return int(count)

    def give_back(self) -> None:
        """Take back the start counted for a run that a stopping worker gave back (never below zero):
        a preemption is not a failed attempt."""
        self.client.eval(_DECREMENT_TO_ZERO, 1, self.key)

    def record_error(self, error: str) -> None:
        self.client.set(self.error_key, error, ex=KEEP_SECONDS)

    def last_error(self) -> str | None:
        value = self.client.get(self.error_key)
        return value.decode() if isinstance(value, bytes) else value

    def clear(self) -> None:
        self.client.delete(self.key, self.error_key)

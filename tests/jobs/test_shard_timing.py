"""What a commit marker records of a shard's time, and messages from before the send time existed."""

from __future__ import annotations

from jobs.protocol import ShardMessage
from jobs.shard import timing

OLD_MESSAGE = {"job_id": "ner-1", "shard": 3, "output": "/out", "source": "/in.parquet", "start": 30, "stop": 40}


def test_a_message_without_its_send_time_still_reads() -> None:
    message = ShardMessage.from_dict(OLD_MESSAGE)
    assert message.enqueued_at is None and message.rows == 10
    sent = ShardMessage.from_dict({**OLD_MESSAGE, "enqueued_at": 100.0})
    assert sent.enqueued_at == 100.0 and sent.to_dict()["enqueued_at"] == 100.0


def test_timing_records_the_queue_wait_and_the_load_only_when_known() -> None:
    assert timing("w1@host/7", 105.0, 100.0, 2.5) == {"worker_name": "w1@host/7", "started_at": 105.0,
                                                     "queue_wait_seconds": 5.0, "model_load_seconds": 2.5}
    assert timing("w1@host/7", 105.0, None, None) == {"worker_name": "w1@host/7", "started_at": 105.0}

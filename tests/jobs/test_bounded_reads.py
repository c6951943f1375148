"""What a worker or producer reads is bounded: a model directory's special files, a long queue."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs import recovery
from jobs.pinning import local_files, stamp_of
from jobs.protocol import TASK_NAME
from jobs.recovery import Recovery
from tests.models import tiny_model_path


def test_fingerprinting_skips_fifos_and_devices(tmp_path: Path) -> None:
    """A FIFO in a model directory blocked the submit forever; a link to /dev/zero would read forever."""
    model = tmp_path / "model"
    model.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (model / name).write_bytes((tiny_model_path("bert-ner") / name).read_bytes())
    os.mkfifo(model / "pipe")
    (model / "zeros").symlink_to("/dev/zero")
    found: dict[str, Any] = {}
    walker = threading.Thread(target=lambda: found.update(local_files(model)), daemon=True)
    walker.start()
    walker.join(timeout=20)
    assert not walker.is_alive(), "fingerprinting blocked on a FIFO or device"
    assert sorted(found) == ["config.json", "tokenizer.json"]
    assert found["tokenizer.json"] == stamp_of(model / "tokenizer.json")


class _CountingRedis(redis.Redis):
    """A real client that remembers how many items each LRANGE asked for (-1: all of them)."""

    spans: list[int]

    def lrange(self, name: Any, start: int, end: int) -> Any:
        self.spans.append(-1 if end < 0 else end - start + 1)
        return super().lrange(name, start, end)


@pytest.fixture
def counting(redis_url: str, queue_name: str) -> Iterator[_CountingRedis]:
    client = _CountingRedis.from_url(redis_url)
    client.spans = []
    yield client
    client.delete(queue_name)
    client.close()


def test_the_lost_message_scan_reads_queues_a_page_at_a_time(counting: _CountingRedis, queue_name: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recovery, "SCAN_PAGE", 100, raising=False)
    messages = [json.dumps({"headers": {"task": TASK_NAME}, "properties": {},
                            "body": json.dumps([[{"job_id": queue_name, "shard": shard}], {}, {}])})
                for shard in range(450)]
    counting.lpush(queue_name, *messages)
    found = Recovery(counting, lambda *_: None, 20.0, queue_name).queued_shards()
    assert found[queue_name] == set(range(450))
    assert counting.spans and all(0 < span <= 100 for span in counting.spans), counting.spans

"""The wire message of a shard task: a reference to the data, never the data."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

TASK_NAME = "batchformers.run_shard"


@dataclass(frozen=True)
class ShardMessage:
    """JSON-safe; a few hundred bytes whatever the dataset size."""

    job_id: str
    shard: int
    output: str
    source: str
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ShardMessage:
        return cls(**{name: raw[name] for name in cls.__dataclass_fields__})

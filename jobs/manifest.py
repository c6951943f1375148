"""The job manifest: the spec, the shard plan and where the inputs were, frozen at submit.

Written once into the output location before anything is enqueued, so that any
worker, and ``status`` on any machine, knows the whole job from the output alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from jobs.io.source_file import SourceFile

if TYPE_CHECKING:
    from jobs.spec import JobSpec

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class ShardPlan:
    """Rows ``[start, stop)`` of input file ``source`` (an index into the manifest's sources)."""

    index: int
    source: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Manifest:
    job_id: str
    spec: dict[str, Any]
    spec_fingerprint: str
    input_fingerprint: str
    sources: list[SourceFile]
    shards: list[ShardPlan]
    output_schema: list[dict[str, str]]
    versions: dict[str, str]
    created_at: float
    version: int = MANIFEST_VERSION
    model_pin: dict[str, Any] | None = None
    """What the model resolved to at submit (:class:`jobs.pinning.ModelPin`); None in older manifests."""

    @property
    def total_rows(self) -> int:
        return sum(shard.rows for shard in self.shards)

    def job_spec(self) -> JobSpec:
        """The spec, validated (which imports every task type's parameters: use :meth:`spec_value` to read one)."""
        from jobs.spec import JobSpec

        return JobSpec(**self.spec)

    def spec_value(self, name: str) -> Any:
        """One field of the spec as submitted, without validating it; the field's default for a manifest
        written before the field existed."""
        if name in self.spec:
            return self.spec[name]
        return getattr(self.job_spec(), name)

    def to_json(self) -> bytes:
        payload = asdict(self)
        payload["total_rows"] = self.total_rows
        return json.dumps(payload, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        raw = json.loads(data)
        raw.pop("total_rows", None)
        raw.pop("extra", None)  # an always-empty field of manifests written before it was dropped
        raw["sources"] = [SourceFile(**s) for s in raw["sources"]]
        raw["shards"] = [ShardPlan(**s) for s in raw["shards"]]
        return cls(**raw)

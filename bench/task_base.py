"""What every task benchmark shares: its sizes, the worker's tokenized rows, and the base class that
times the floor over the worker's own batches (the tasks themselves are in :mod:`bench.tasks`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from bench import floor
from bench.measure import Measurement
from jobs.engine.batching import length_sorted_batches

SCORE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Size:
    """How much work one task does in one mode."""

    rows: int
    batch_size: int
    shard_rows: int
    max_batch_tokens: int | None = None
    max_words: int | None = None  # input length cap, for tiny models with short position tables
    workers: int | None = None  # worker processes when not one per core (see QaBench)


@dataclass
class Prepared:
    """The rows tokenized as a worker tokenizes them, grouped per shard."""

    features: list[dict[str, list[int]]]
    shard_of: list[int]  # shard of each feature (a chunk of a row)
    row_of: list[int]  # input row of each feature

    @property
    def lengths(self) -> list[int]:
        return [len(f["input_ids"]) for f in self.features]

    @property
    def tokens(self) -> int:
        return sum(self.lengths)


class TaskBench(ABC):
    name: ClassVar[str]
    input_columns: ClassVar[tuple[str, ...]] = ("text",)
    engines: ClassVar[tuple[tuple[str, str], ...]] = ()
    """Other (engine, dtype) runs of batchformers measured in the same run, each with its parity."""
    sizes: ClassVar[dict[str, Size]]
    """``quick`` and ``full`` sizes."""

    def __init__(self, model_dir: Path, size: Size, workers: int = 1, seed: int = 0,
                 floor_in_process: bool = False) -> None:
        self.model_dir = str(model_dir)
        self.size = size
        self.workers = workers
        self.seed = seed
        self.floor_in_process = floor_in_process

    # -- data ---------------------------------------------------------------------

    @abstractmethod
    def make_rows(self) -> dict[str, list[str]]:
        """The input columns, deterministic for the seed."""

    def spec(self, input_path: Path, output: Path) -> dict[str, Any]:
        spec = {"task": self.name, "model": self.model_dir, "input": str(input_path), "output": str(output),
                "columns": {"id": "id", **{c: c for c in self.input_columns}}, "params": self.params(),
                "batch_size": self.size.batch_size, "shard_rows": self.size.shard_rows}
        if self.size.max_batch_tokens:
            spec["max_batch_tokens"] = self.size.max_batch_tokens
        return spec

    def params(self) -> dict[str, Any]:
        return {}

    # -- the three measurements ----------------------------------------------------

    @abstractmethod
    def baseline(self, rows: dict[str, list[str]]) -> tuple[Measurement, list[Any]]:
        """Time the user's loop; its measurement and one output per row."""

    @abstractmethod
    def floor(self, rows: dict[str, list[str]]) -> Measurement | None:
        """Time the model calls alone over the worker's batches (None where there is no model)."""

    @abstractmethod
    def outputs(self, table: pa.Table) -> list[Any]:
        """batchformers' output per row, in the baseline's form."""

    @abstractmethod
    def same(self, expected: Any, got: Any) -> bool:
        """Whether one row's outputs agree (scores up to float noise)."""

    def worker_padding(self, prepared: Prepared) -> float:
        """Padding of the batches the worker forms: length-sorted per shard, like the floor's."""
        return self._padding(prepared, [b for shard in self._sorted(prepared) for b in shard])

    def timed_floor(self, prepared: Prepared, job_class: str, names: tuple[str, ...], pad_id: int,
                    generate: dict[str, Any] | None = None) -> Measurement:
        job = floor.FloorJob(self.model_dir, job_class, prepared.features, names, pad_id, generate)
        per_shard = self._sorted(prepared)
        timing = floor.run_floor(job, per_shard, self.workers, self.floor_in_process)
        padding = self._padding(prepared, [b for shard in per_shard for b in shard])
        rows = len(set(prepared.row_of))
        extra: dict[str, Any] = {"per_process_seconds": timing.per_process}
        if generate is not None:
            extra["generated_tokens"] = timing.generated_tokens
        return Measurement("floor", timing.seconds, timing.cpu_seconds, rows, prepared.tokens, padding, extra)

    # -- helpers ------------------------------------------------------------------

    def shard_groups(self, count: int) -> list[list[int]]:
        step = self.size.shard_rows
        return [list(range(first, min(first + step, count))) for first in range(0, count, step)]

    def _sorted(self, prepared: Prepared) -> list[list[list[int]]]:
        """Length-sorted batches of the features of each shard, per shard."""
        members: dict[int, list[int]] = {}
        for index, shard in enumerate(prepared.shard_of):
            members.setdefault(shard, []).append(index)
        lengths = prepared.lengths
        per_shard: list[list[list[int]]] = []
        for shard in sorted(members):
            indices = members[shard]
            batches = length_sorted_batches([lengths[i] for i in indices], self.size.batch_size,
                                            self.size.max_batch_tokens)
            per_shard.append([[indices[position] for position in batch] for batch in batches])
        return per_shard

    @staticmethod
    def _padding(prepared: Prepared, batches: list[list[int]]) -> float:
        return floor.padded_tokens(prepared.lengths, batches) / max(1, prepared.tokens)

    def _input_order_padding(self, prepared: Prepared) -> float:
        return self._padding(prepared, floor.input_order_batches(len(prepared.features), self.size.batch_size))


def close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= SCORE_TOLERANCE * max(1.0, abs(a))

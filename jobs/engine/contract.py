"""The stage contract: what flows between a task's ``encode``, ``forward`` and ``decode``, and what the
engine calls on a runner (:class:`Stages`, which :class:`jobs.engine.staged.StagedRunner` implements).

``batch_size`` counts model items for every task: chunks for NER and QA (a long text
with ``stride`` or a long QA context gives several), rows for the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import pyarrow as pa


@dataclass
class Item:
    """One model row: a whole input row, or one chunk of it."""

    row: int
    """Position of its input row in the shard."""
    ids: Sequence[int]
    """Token ids, padded by the engine."""
    data: Any = None
    """Whatever ``decode`` needs of this item (offsets, special-token mask ...)."""
    type_ids: Sequence[int] | None = None
    part: int = 0
    """Position among its row's items."""
    parts: int = 1
    """How many items its row has."""


@dataclass
class Encoded:
    """What ``encode`` made of a block of rows."""

    items: list[Item]
    errors: dict[int, str] = field(default_factory=dict)
    """Row -> why it cannot run; such rows have no items."""


@dataclass
class Batch:
    """A padded batch on its way to the device."""

    items: list[Item]
    tensors: dict[str, Any]
    real_tokens: int
    padded_tokens: int


@dataclass(frozen=True)
class ItemFailed:
    """Stands in for the output of an item whose forward failed alone (``isolate_failures``)."""

    message: str


@dataclass
class Finished:
    """Rows whose every item is through the model, ready for ``decode``."""

    rows: list[int]
    outputs: list[list[Any]]
    """Per row, its items' outputs in part order."""
    items: list[list[Item]]


class Stages(Protocol):
    """What :class:`jobs.engine.execution.Execution` calls on a runner; the meaning of each part is on
    :class:`jobs.engine.staged.StagedRunner`, the one implementation."""

    schema: pa.Schema
    encode_rows: ClassVar[int]
    device_stage: ClassVar[bool]
    isolate_failures: ClassVar[bool]

    def row_errors(self, inputs: dict[str, list[Any]], count: int) -> dict[int, str]: ...
    def row_lengths(self, inputs: dict[str, list[Any]], rows: Sequence[int]) -> Sequence[int]: ...
    def encode(self, inputs: dict[str, list[Any]], rows: list[int]) -> Encoded: ...
    def collate(self, items: list[Item]) -> Batch: ...
    def forward(self, batch: Batch) -> Sequence[Any]: ...
    def decode(self, inputs: dict[str, list[Any]], finished: Finished) -> pa.Table: ...
    def empty_table(self, count: int) -> pa.Table: ...

"""The base of every task's runner: a task declares three stages, the engine runs them.

A task type's runner subclasses :class:`StagedRunner` and declares:

- ``encode`` (host): a block of rows -> model items (a row may give several, as NER
  with ``stride`` and QA chunks do), plus row errors for rows that cannot run;
- ``forward`` (device): one padded batch of items -> one output per item;
- ``decode`` (host): the finished rows' outputs -> their result columns (an Arrow table).

What flows between them is :mod:`jobs.engine.contract`; the rest (row checks, batching,
out-of-memory halving, overlap, progress, order and the ``error`` column) is
:mod:`jobs.engine.execution`, once for every task. The runner's ``schema`` is the task's own
output columns; the engine appends ``error``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from jobs.engine.base import ProgressCallback, Runner, RunOptions, RunResult
from jobs.engine.batching import text_error
from jobs.engine.contract import Batch, Encoded, Finished, Item
from jobs.engine.execution import Execution
from jobs.engine.padding import attention_mask, lengths_of, pad

ENCODE_ROWS = 1024
"""Rows per ``encode`` call (one batched tokenizer call); their items are then length-sorted together."""


class StagedRunner(Runner):
    """Base of every task's runner: declare the stages, the engine runs them."""

    input_roles: ClassVar[tuple[str, ...]] = ("text",)
    encode_rows: ClassVar[int] = ENCODE_ROWS
    device_stage: ClassVar[bool] = True
    """False for tasks with nothing to run on a device (tokenize): encoded rows go straight to ``decode``."""
    isolate_failures: ClassVar[bool] = False
    """When a batch raises (other than out of memory), retry its items alone; an item that still fails
    becomes a row error instead of failing the shard (generation does this)."""

    def __init__(self, schema: pa.Schema, options: RunOptions | None = None, device: Any = None,
                 pad_id: int = 0, with_type_ids: bool = False, padding_side: str = "right") -> None:
        self.schema = schema
        """The task's output columns (``TaskType.output_schema``), without ``error``."""
        self.padding_side = padding_side
        self.options = options or RunOptions()
        self.device = device
        self.pad_id = pad_id
        self.with_type_ids = with_type_ids

    # -- the stages a task declares ---------------------------------------------

    def row_error(self, values: dict[str, Any]) -> str | None:
        """Why a row cannot run at all (null or non-string inputs); checked before ``encode``."""
        for role in self.input_roles:
            error = text_error(values[role], role)
            if error:
                return error
        return None

    def row_length(self, values: dict[str, Any]) -> int:
        """A cheap stand-in for a row's token count (characters), to encode longest rows first."""
        return sum(len(values[role]) for role in self.input_roles)

    def row_errors(self, inputs: dict[str, list[Any]], count: int) -> dict[int, str]:
        """``row_error`` of every row that has one. Column by column when a task keeps the default check
        (only non-strings are looked at), row by row through ``row_error`` when it has its own."""
        if type(self).row_error is not StagedRunner.row_error:
            roles = self.input_roles
            errors = ((row, self.row_error({role: inputs[role][row] for role in roles})) for row in range(count))
            return {row: error for row, error in errors if error}
        found: dict[int, str] = {}
        for role in reversed(self.input_roles):  # the first role's error wins, as in ``row_error``
            column = inputs[role]
            errors = ((row, text_error(column[row], role)) for row in _non_strings(column))
            found.update((row, error) for row, error in errors if error)  # every non-string has one
        return dict(sorted(found.items()))

    def row_lengths(self, inputs: dict[str, list[Any]], rows: Sequence[int]) -> Sequence[int]:
        """``row_length`` of ``rows`` (all valid); characters summed over the roles, column by column,
        unless a task has its own ``row_length``."""
        roles = self.input_roles
        if type(self).row_length is not StagedRunner.row_length:
            return [self.row_length({role: inputs[role][row] for role in roles}) for row in rows]
        return np.sum([lengths_of(inputs[role][row] for row in rows) for role in roles], axis=0).tolist()

    def encode(self, inputs: dict[str, list[Any]], rows: list[int]) -> Encoded:
        """Host: turn ``rows`` (positions in ``inputs``) into model items."""
        raise NotImplementedError

    def forward(self, batch: Batch) -> Sequence[Any]:
        """Device: run one padded batch; one output per item (bring it to the host)."""
        raise NotImplementedError

    def decode(self, inputs: dict[str, list[Any]], finished: Finished) -> pa.Table:
        """Host: result columns (``self.schema``) of the finished rows, in their order."""
        raise NotImplementedError

    # -- what the engine owns ----------------------------------------------------

    def run_table(self, inputs: dict[str, list[Any]], progress: ProgressCallback | None = None,
                  options: RunOptions | None = None) -> RunResult:
        return Execution(self, inputs, progress, options or self.options).run()

    def collate(self, items: list[Item]) -> Batch:
        """Pad ``items`` into tensors on the device (pinned, non-blocking copies on CUDA)."""
        import torch

        ids = [item.ids for item in items]
        lengths = lengths_of(ids)
        arrays = {"input_ids": pad(ids, self.pad_id, self.padding_side),
                  "attention_mask": attention_mask(lengths, self.padding_side)}
        if self.with_type_ids:  # an item of one sequence has none: all zeros
            arrays["token_type_ids"] = pad([item.type_ids if item.type_ids is not None else [0] * len(item.ids)
                                            for item in items], 0, self.padding_side)
        tensors = {name: _on_device(torch.from_numpy(array), self.device) for name, array in arrays.items()}
        return Batch(items, tensors, int(lengths.sum()), arrays["input_ids"].size)

    def empty_table(self, count: int) -> pa.Table:
        """``count`` rows of nulls in the task's columns."""
        return pa.Table.from_arrays([pa.nulls(count)] * len(self.schema), schema=self.schema)  # typed by the schema


def _on_device(tensor: Any, device: Any) -> Any:
    """``tensor`` on ``device`` (None: where it is); to a GPU from pinned memory without blocking, so the copy
    overlaps the host's work on the next batch."""
    if device is None:
        return tensor
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _non_strings(column: Sequence[Any]) -> list[int]:
    """Positions of the values that are not ``str`` (None included)."""
    return [row for row, value in enumerate(column) if not isinstance(value, str)]

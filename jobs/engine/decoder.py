"""The decode stage: item outputs gathered per row, then the finished rows decoded together."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa

from jobs.engine.batching import RowOutOfMemory
from jobs.engine.contract import Finished, Item, ItemFailed


class Decoder:
    """Collects item outputs until each row has them all, then decodes the finished rows together.

    ``decode`` is the task's (timed by the caller), ``add`` takes the decoded rows and their table,
    ``fail`` a row whose item could not run (out of memory alone, or ``ItemFailed``)."""

    def __init__(self, decode: Callable[[Finished], pa.Table], add: Callable[[list[int], pa.Table], None],
                 fail: Callable[[int, str], None]) -> None:
        self._decode = decode
        self._add = add
        self._fail = fail
        self.outputs: dict[int, list[Any]] = {}
        self.items: dict[int, list[Any]] = {}
        self.missing: dict[int, int] = {}

    def consume(self, work: Finished | tuple[list[Item], Sequence[Any]]) -> list[None]:
        """The decode stage of the overlapped line: finished rows, or a batch's items and outputs."""
        if isinstance(work, Finished):
            self.decode(work)
        else:
            self.take(*work)
        return []

    def take(self, items: list[Item], outputs: Sequence[Any]) -> None:
        finished: list[int] = []
        for item, output in zip(items, outputs, strict=True):
            row = item.row
            if row not in self.missing:
                self.missing[row] = item.parts
                self.outputs[row] = [None] * item.parts
                self.items[row] = [None] * item.parts
            self.outputs[row][item.part] = output
            self.items[row][item.part] = item
            self.missing[row] -= 1
            if not self.missing[row]:
                del self.missing[row]
                finished.append(row)
        if finished:
            self.decode(Finished(finished, [self.outputs.pop(r) for r in finished],
                                 [self.items.pop(r) for r in finished]))

    def decode(self, finished: Finished) -> None:
        """Rows with a failed item become row errors; the rest go to the task's ``decode``."""
        good = Finished([], [], [])
        for row, outputs, items in zip(finished.rows, finished.outputs, finished.items, strict=True):
            failure = next((o for o in outputs if isinstance(o, RowOutOfMemory | ItemFailed)), None)
            if failure is not None:
                self._fail(row, failure.message)
                continue
            good.rows.append(row)
            good.outputs.append(outputs)
            good.items.append(items)
        if good.rows:
            table = self._decode(good)
            if table.num_rows != len(good.rows):
                raise RuntimeError(f"decode returned {table.num_rows} rows for {len(good.rows)}")
            self._add(good.rows, table)

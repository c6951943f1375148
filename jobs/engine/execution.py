"""One ``run_table`` call: the rows of a shard through a runner's encode, forward and decode.

The engine owns everything but the stages, once for every task: row validation, the order rows
are encoded in (longest first, so an out-of-memory batch shows up early), length-sorted,
token-budgeted batches, out-of-memory halving down to one item (then a row error), progress,
batch metrics, the ``error`` column, and putting results back in input order.

With ``overlap`` on, the stages run concurrently (:mod:`jobs.engine.pipeline`): a thread encodes
and pads batch k+1 (pinned memory, non-blocking copies on CUDA) while the caller's thread runs
batch k on the device and a third thread decodes batch k-1. Bounded queues keep memory flat.
The batches and their order are the same with overlap on or off, so the results are
identical, byte for byte.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from jobs.engine.base import ERROR, ProgressCallback, RunOptions, RunResult, RunStats, with_error
from jobs.engine.batching import is_out_of_memory, length_sorted_batches, notify_batch, run_splitting_on_oom
from jobs.engine.contract import Batch, Encoded, Finished, Item, ItemFailed, Stages
from jobs.engine.decoder import Decoder
from jobs.engine.pipeline import Line

QUEUE_DEPTH = 4
"""Batches waiting between two stages: enough to keep the device fed, little enough to keep memory flat."""
BLOCK_DEPTH = 1
"""Encoded blocks waiting to be padded: the next block is tokenized while the current one runs."""


class Execution:
    """One ``run_table`` call: the rows of a shard through encode, forward and decode."""

    def __init__(self, runner: Stages, inputs: dict[str, list[Any]], progress: ProgressCallback | None,
                 options: RunOptions) -> None:
        self.runner = runner
        self.inputs = inputs
        self.progress = progress
        self.options = options
        self.count = len(next(iter(inputs.values()))) if inputs else 0
        self.errors: dict[int, str] = {}
        self.pieces: list[tuple[list[int], pa.Table]] = []
        self.done = 0
        self.reported = 0
        self.lock = threading.Lock()
        self.stats = RunStats()

    # -- the plan ----------------------------------------------------------------

    def blocks(self) -> list[list[int]]:
        """Valid rows, longest first, in blocks of ``encode_rows``; invalid rows become errors now.

        With a device stage the first blocks are small (one batch, then doubling up to ``encode_rows``):
        the device starts after one batch's tokenizing instead of a whole block of the longest rows."""
        self.errors.update(self.runner.row_errors(self.inputs, self.count))
        self._finished_rows(len(self.errors))
        valid = [row for row in range(self.count) if row not in self.errors] if self.errors else range(self.count)
        lengths = np.asarray(self.runner.row_lengths(self.inputs, valid), dtype=np.int64)
        order = np.asarray(valid, dtype=np.int64)[np.argsort(-lengths, kind="stable")].tolist()
        size = max(1, self.options.encode_rows or self.runner.encode_rows)
        first = min(size, max(1, self.options.batch_size)) if self.runner.device_stage else size
        return list(_ramped(order, first, size))

    def encode(self, block: list[int]) -> tuple[list[int], Encoded]:
        """The task's ``encode`` of one block; its row errors are recorded now."""
        started = time.perf_counter()
        encoded = self.runner.encode(self.inputs, block)
        self.stats.encode_seconds += time.perf_counter() - started
        with self.lock:
            self.errors.update(encoded.errors)
        self._finished_rows(len(encoded.errors))
        return block, encoded

    def batches(self, block: list[int], encoded: Encoded) -> Iterator[list[Item] | Finished]:
        """The block's items in length-sorted batches (and, first, rows that need no model)."""
        with_items = {item.row for item in encoded.items}
        idle = [row for row in block if row not in with_items and row not in encoded.errors]
        if idle:
            yield Finished(idle, [[] for _ in idle], [[] for _ in idle])
        items = encoded.items
        if not self.runner.device_stage:
            yield _finished_without_device(items)
            return
        lengths = [len(item.ids) for item in items]
        for indices in length_sorted_batches(lengths, self.options.batch_size, self.options.max_batch_tokens):
            yield [items[i] for i in indices]

    # -- running -----------------------------------------------------------------

    def run(self) -> RunResult:
        import torch

        with torch.inference_mode():
            if self.options.overlap:
                self._run_overlapped()
            else:
                self._run_in_series()
        return RunResult(self._assemble(), self.stats)

    def _decoder(self) -> Decoder:
        return Decoder(self._decode, self.add, self._fail)

    def _run_in_series(self) -> None:
        decoder = self._decoder()
        for block in self.blocks():
            for work in self.batches(*self.encode(block)):
                if isinstance(work, Finished):
                    decoder.decode(work)
                    continue
                batch = self._collate(work)
                decoder.take(batch.items, self._forward(batch))
                self._report()

    def _run_overlapped(self) -> None:
        """Four stages joined by bounded queues: encode (tokenize a block), pad (batches into device
        tensors), forward (on the calling thread), decode. The next block is tokenized while the
        current one's batches run; the first error anywhere stops every stage and is raised here.
        """
        line = Line()
        blocks = self.blocks()
        encoded = line.stage("encode", lambda _: (self.encode(block) for block in blocks), None, BLOCK_DEPTH)
        padded = line.stage("pad", lambda block: (work if isinstance(work, Finished) else self._collate(work)
                                                  for work in self.batches(*block)), encoded, QUEUE_DEPTH)
        forwarded = line.stage(None, lambda work: [work if isinstance(work, Finished)
                                                   else (work.items, self._forward(work))], padded, QUEUE_DEPTH)
        line.stage("decode", self._decoder().consume, forwarded, None)
        line.run(on_each=self._report)

    def _collate(self, items: list[Item]) -> Batch:
        started = time.perf_counter()
        batch = self.runner.collate(items)
        self.stats.pad_seconds += time.perf_counter() - started
        return batch

    def _forward(self, batch: Batch) -> list[Any]:
        """The device stage of one batch, halving it on out-of-memory; one output per item."""
        runner = self.runner
        started = time.perf_counter()

        def run(indices: list[int]) -> Sequence[Any]:
            part = batch if len(indices) == len(batch.items) else runner.collate([batch.items[i] for i in indices])
            return runner.forward(part)

        indices = list(range(len(batch.items)))
        try:
            outputs: list[Any] = run_splitting_on_oom(run, indices)
        except Exception as exc:
            if not runner.isolate_failures or is_out_of_memory(exc):
                raise
            outputs = [self._alone(run, i) for i in indices]
        seconds = time.perf_counter() - started
        notify_batch(len(batch.items), batch.real_tokens, batch.padded_tokens, seconds)
        self.stats.batches += 1
        self.stats.items += len(batch.items)
        self.stats.forward_seconds += seconds
        self.stats.tokens += batch.real_tokens
        self.stats.padded_tokens += batch.padded_tokens
        return outputs

    @staticmethod
    def _alone(run: Callable[[list[int]], Sequence[Any]], index: int) -> Any:
        try:
            return run_splitting_on_oom(run, [index])[0]
        except Exception as exc:
            if is_out_of_memory(exc):
                raise
            return ItemFailed(f"{type(exc).__name__}: {exc}")

    def _decode(self, finished: Finished) -> pa.Table:
        started = time.perf_counter()
        table = self.runner.decode(self.inputs, finished)
        self.stats.decode_seconds += time.perf_counter() - started
        return table

    # -- results -----------------------------------------------------------------

    def _finished_rows(self, count: int) -> None:
        if count:
            with self.lock:
                self.done += count

    def _report(self) -> None:
        """Progress from the calling thread only (the worker's reporter talks to the broker)."""
        if self.progress is None:
            return
        with self.lock:
            new, self.reported = self.done - self.reported, self.done
        if new:
            self.progress(new)

    def add(self, rows: list[int], table: pa.Table) -> None:
        with self.lock:
            self.pieces.append((rows, table))
            self.done += len(rows)

    def _fail(self, row: int, message: str) -> None:
        with self.lock:
            self.errors[row] = message
            self.done += 1

    def _assemble(self) -> pa.Table:
        """Every row's columns and error, in input order."""
        self._report()
        errors = sorted(self.errors)
        pieces = list(self.pieces)
        if errors:
            pieces.append((errors, self.runner.empty_table(len(errors))))
        rows = [row for part, _ in pieces for row in part]
        if len(rows) != self.count or len(set(rows)) != self.count:
            raise RuntimeError(f"engine produced {len(rows)} results for {self.count} rows")
        body = (pa.concat_tables([table for _, table in pieces]) if pieces
                else self.runner.empty_table(0))
        message = [self.errors.get(row) for row in rows]
        body = body.append_column(pa.field(ERROR, pa.string()), pa.array(message, type=pa.string()))
        order = np.argsort(np.asarray(rows, dtype=np.int64), kind="stable")
        body = body.take(pa.array(order))
        schema = with_error(self.runner.schema)
        if body.schema != schema:
            body = body.cast(schema)
        return body.combine_chunks()


def _ramped(order: list[int], first: int, size: int) -> Iterator[list[int]]:
    """``order`` in blocks of ``first`` rows, then twice as many each time, up to ``size``."""
    start, step = 0, first
    while start < len(order):
        yield order[start : start + step]
        start += step
        step = min(size, step * 2)


def _finished_without_device(items: list[Item]) -> Finished:
    """Rows of ``items`` as finished, each item's output being its own data."""
    finished = Finished([], [], [])
    for item in items:
        if item.part == 0:
            finished.rows.append(item.row)
            finished.outputs.append([])
            finished.items.append([])
        finished.outputs[-1].append(item.data)
        finished.items[-1].append(item)
    return finished

"""The task engine: one staged, batched runner that every task type fills in.

A task type's runner subclasses :class:`StagedRunner` and declares three stages:

- ``encode`` (host): a block of rows -> model items (a row may give several, as NER
  with ``stride`` and QA chunks do), plus row errors for rows that cannot run;
- ``forward`` (device): one padded batch of items -> one output per item;
- ``decode`` (host): the finished rows' outputs -> their result columns (an Arrow table).

The engine owns the rest, once for every task: row validation, the order rows are
encoded in (longest first, so an out-of-memory batch shows up early), length-sorted,
token-budgeted batches, the one padding helper, out-of-memory halving down to one item
(then a row error), progress, batch metrics, and putting results back in input order.

With ``overlap`` on, the three stages run concurrently: a thread encodes and pads batch
k+1 (pinned memory, non-blocking copies on CUDA) while the caller's thread runs batch k
on the device and a third thread decodes batch k-1. Bounded queues keep memory flat.
The batches and their order are the same with overlap on or off, so the results are
identical, byte for byte.

``batch_size`` counts model items for every task: chunks for NER and QA (a long text
with ``stride`` or a long QA context gives several), rows for the others.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from jobs.engine.base import ProgressCallback, Runner
from jobs.engine.batching import (
    DEFAULT_BATCH_SIZE,
    RowOutOfMemory,
    is_out_of_memory,
    length_sorted_batches,
    notify_batch,
    run_splitting_on_oom,
    text_error,
)

ERROR = "error"
ENCODE_ROWS = 1024
"""Rows per ``encode`` call (one batched tokenizer call); their items are then length-sorted together."""
QUEUE_DEPTH = 4
"""Batches waiting between two stages: enough to keep the device fed, little enough to keep memory flat."""
SWITCH_INTERVAL = 0.0005
"""Seconds a thread may hold the GIL while another waits (Python's default is 0.005). The device
thread gives the GIL up in every torch call and must get it back quickly, or it waits behind the
host threads' Python work once per kernel launch."""
BLOCK_DEPTH = 1
"""Encoded blocks waiting to be padded: the next block is tokenized while the current one runs."""
DEVICE_SECONDS_ENV = "BATCHFORMERS_BENCH_DEVICE_SECONDS_PER_TOKEN"
"""Benchmark hook only: every forward also sleeps this long per padded token (a stand-in for device time,
releasing the GIL as a device sync does). Never set it in production."""


@dataclass(frozen=True)
class RunOptions:
    """How a loaded model is run; changing these never reloads the model."""

    batch_size: int = DEFAULT_BATCH_SIZE
    max_batch_tokens: int | None = None
    overlap: bool = True
    encode_rows: int | None = None
    """Rows per ``encode`` call; None: the runner's own (``StagedRunner.encode_rows``)."""


@dataclass
class RunStats:
    """What one run fed the model: batches, items, real tokens, padded tokens (items x longest) and the seconds
    each stage spent (with overlap on they run at once, so they add up to more than the run's wall time)."""

    batches: int = 0
    items: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    forward_seconds: float = 0.0
    encode_seconds: float = 0.0
    """Tokenizing (``encode``) and padding batches into tensors (``collate``)."""
    decode_seconds: float = 0.0
    pad_seconds: float = 0.0

    def stage_seconds(self) -> dict[str, float]:
        """Seconds per stage, as a shard's marker records them: encode (tokenize and pad), forward, decode."""
        return {"encode": round(self.encode_seconds + self.pad_seconds, 4), "forward": round(self.forward_seconds, 4),
                "decode": round(self.decode_seconds, 4)}


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


class StagedRunner(Runner):
    """Base of every task's runner: declare the stages, the engine runs them."""

    input_roles: ClassVar[tuple[str, ...]] = ("text",)
    encode_rows: ClassVar[int] = ENCODE_ROWS
    device_stage: ClassVar[bool] = True
    """False for tasks with nothing to run on a device (tokenize): encoded rows go straight to ``decode``."""
    isolate_failures: ClassVar[bool] = False
    """When a batch raises (other than out of memory), retry its items alone; an item that still fails
    becomes a row error instead of failing the shard (generation does this, as before)."""

    def __init__(self, schema: pa.Schema, options: RunOptions | None = None, device: Any = None,
                 pad_id: int = 0, with_type_ids: bool = False, padding_side: str = "right") -> None:
        self.schema = schema
        self.padding_side = padding_side
        self.options = options or RunOptions()
        self.device = device
        self.pad_id = pad_id
        self.with_type_ids = with_type_ids
        self.last_stats = RunStats()

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
            for row in _non_strings(column):
                found[row] = text_error(column[row], role) or ""  # never empty: not a string
        return dict(sorted(found.items()))

    def row_lengths(self, inputs: dict[str, list[Any]], rows: Sequence[int]) -> Sequence[int]:
        """``row_length`` of ``rows`` (all valid); characters summed over the roles, column by column,
        unless a task has its own ``row_length``."""
        roles = self.input_roles
        if type(self).row_length is not StagedRunner.row_length:
            return [self.row_length({role: inputs[role][row] for role in roles}) for row in rows]
        every = len(rows) == len(inputs[roles[0]])
        total = np.zeros(len(rows), dtype=np.int64)
        for role in roles:
            column = inputs[role] if every else [inputs[role][row] for row in rows]
            total += np.fromiter(map(len, column), dtype=np.int64, count=len(rows))
        return total.tolist()

    def encode(self, inputs: dict[str, list[Any]], rows: list[int]) -> Encoded:
        """Host: turn ``rows`` (positions in ``inputs``) into model items."""
        raise NotImplementedError

    def forward(self, batch: Batch) -> Sequence[Any]:
        """Device: run one padded batch; one output per item (bring it to the host)."""
        raise NotImplementedError

    def decode(self, inputs: dict[str, list[Any]], finished: Finished) -> pa.Table:
        """Host: result columns (``self.schema`` less ``error``) of the finished rows, in their order."""
        raise NotImplementedError

    # -- what the engine owns ----------------------------------------------------

    def run_table(self, inputs: dict[str, list[Any]], progress: ProgressCallback | None = None,
                  options: RunOptions | None = None) -> pa.Table:
        return Execution(self, inputs, progress, options or self.options).run()

    def collate(self, items: list[Item]) -> Batch:
        """Pad ``items`` into tensors on the device (pinned, non-blocking copies on CUDA)."""
        import torch

        lengths = np.fromiter((len(item.ids) for item in items), dtype=np.int64, count=len(items))
        arrays = {"input_ids": pad([item.ids for item in items], self.pad_id, self.padding_side, lengths)}
        arrays["attention_mask"] = attention_mask(lengths, self.padding_side)
        if self.with_type_ids:
            if all(item.type_ids is None for item in items):  # one sequence per item: all zeros
                arrays["token_type_ids"] = np.zeros_like(arrays["input_ids"])
            else:
                arrays["token_type_ids"] = pad([item.type_ids if item.type_ids is not None else [0] * len(item.ids)
                                                for item in items], 0, self.padding_side, lengths)
        cuda = self.device is not None and getattr(self.device, "type", "cpu") == "cuda"
        tensors = {}
        for name, array in arrays.items():
            tensor = torch.from_numpy(array)
            if cuda:
                tensor = tensor.pin_memory().to(self.device, non_blocking=True)
            elif self.device is not None:
                tensor = tensor.to(self.device)
            tensors[name] = tensor
        real = int(lengths.sum())
        return Batch(items, tensors, real, int(lengths.max()) * len(items) if len(items) else 0)

    def empty_table(self, count: int) -> pa.Table:
        """``count`` rows of nulls in the task's columns."""
        return pa.Table.from_arrays([pa.nulls(count, type=f.type) for f in self.schema if f.name != ERROR],
                                    schema=_without_error(self.schema))


def pad(rows: Sequence[Sequence[int]], fill: int, side: str = "right",
        lengths: np.ndarray | None = None, dtype: Any = np.int64) -> np.ndarray:
    """Rows of unequal length as one array, padded on the right or the left, without a loop per row."""
    if lengths is None:
        lengths = np.fromiter((len(row) for row in rows), dtype=np.int64, count=len(rows))
    longest = int(lengths.max()) if len(rows) else 0
    array = np.full((len(rows), longest), fill, dtype=dtype)
    if longest:
        flat = np.fromiter(chain.from_iterable(rows), dtype=dtype, count=int(lengths.sum()))
        array[_filled(lengths, longest, side)] = flat
    return array


def attention_mask(lengths: np.ndarray, side: str = "right") -> np.ndarray:
    """1 on real tokens, 0 on padding, for rows of ``lengths``."""
    longest = int(lengths.max()) if len(lengths) else 0
    return _filled(lengths, longest, side).astype(np.int64)


def _filled(lengths: np.ndarray, longest: int, side: str) -> np.ndarray:
    positions = np.arange(longest)[None, :]
    if side == "left":
        return positions >= (longest - lengths)[:, None]
    return positions < lengths[:, None]


def _without_error(schema: pa.Schema) -> pa.Schema:
    index = schema.get_field_index(ERROR)
    return schema.remove(index) if index >= 0 else schema


_STOP: Any = object()


class Execution:
    """One ``run_table`` call: the rows of a shard through encode, forward and decode."""

    def __init__(self, runner: StagedRunner, inputs: dict[str, list[Any]], progress: ProgressCallback | None,
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
        self.device_seconds = float(os.environ.get(DEVICE_SECONDS_ENV, "0") or 0)
        self.stats = RunStats()
        runner.last_stats = self.stats

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

    def run(self) -> pa.Table:
        import torch

        with torch.inference_mode():
            if self.options.overlap:
                self._run_overlapped()
            else:
                self._run_in_series()
        return self._assemble()

    def _run_in_series(self) -> None:
        decoder = Decoder(self)
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
        line = _Line()
        blocks = self.blocks()
        encoded = line.stage("encode", lambda _: (self.encode(block) for block in blocks), None, BLOCK_DEPTH)
        padded = line.stage("pad", lambda block: (work if isinstance(work, Finished) else self._collate(work)
                                                  for work in self.batches(*block)), encoded, QUEUE_DEPTH)
        forwarded = line.stage(None, lambda work: [work if isinstance(work, Finished)
                                                   else (work.items, self._forward(work))], padded, QUEUE_DEPTH)
        decoder = Decoder(self)
        line.stage("decode", decoder.consume, forwarded, None)
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
            outputs = runner.forward(part)
            if self.device_seconds:
                time.sleep(self.device_seconds * part.padded_tokens)
            return outputs

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
        if body.schema != self.runner.schema:
            body = body.cast(self.runner.schema)
        return body.combine_chunks()


class Decoder:
    """Collects item outputs until each row has them all, then decodes the finished rows together."""

    def __init__(self, execution: Execution) -> None:
        self.execution = execution
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
        execution = self.execution
        good = Finished([], [], [])
        for row, outputs, items in zip(finished.rows, finished.outputs, finished.items, strict=True):
            failure = next((o for o in outputs if isinstance(o, RowOutOfMemory | ItemFailed)), None)
            if failure is not None:
                with execution.lock:
                    execution.errors[row] = failure.message
                    execution.done += 1
                continue
            good.rows.append(row)
            good.outputs.append(outputs)
            good.items.append(items)
        if good.rows:
            started = time.perf_counter()
            table = execution.runner.decode(execution.inputs, good)
            execution.stats.decode_seconds += time.perf_counter() - started
            if table.num_rows != len(good.rows):
                raise RuntimeError(f"decode returned {table.num_rows} rows for {len(good.rows)}")
            execution.add(good.rows, table)


class _Line:
    """Stages in threads, each mapping what its input queue holds to zero or more outputs.

    The stage named None runs on the calling thread (the device stage); stages stop at the
    first failure anywhere, and :meth:`run` raises it once every thread has ended.
    """

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.failures: list[BaseException] = []
        self.stages: list[tuple[str | None, Callable[[Any], Any], queue.Queue[Any] | None,
                                queue.Queue[Any] | None]] = []

    def stage(self, name: str | None, fn: Callable[[Any], Any], source: queue.Queue[Any] | None,
              depth: int | None) -> queue.Queue[Any] | None:
        target: queue.Queue[Any] | None = queue.Queue(depth) if depth else None
        self.stages.append((name, fn, source, target))
        return target

    def run(self, on_each: Callable[[], None]) -> None:
        import torch

        def work(fn: Callable[[Any], Any], source: queue.Queue[Any] | None, target: queue.Queue[Any] | None,
                 each: Callable[[], None] | None = None) -> None:
            try:
                with torch.inference_mode():
                    inputs: Any = [None] if source is None else iter(lambda: _get(source, self.stop), _STOP)
                    for value in inputs:
                        if value is None and source is not None:  # stopped
                            return
                        for output in fn(value):
                            if target is not None and not _put(target, output, self.stop):
                                return
                        if each is not None:
                            each()
            except BaseException as exc:  # noqa: BLE001 - raised on the calling thread below
                self.failures.append(exc)
                self.stop.set()
            finally:
                if target is not None:
                    _put(target, _STOP, self.stop)

        threads = [threading.Thread(target=work, args=(fn, source, target), name=f"batchformers-{name}",
                                    daemon=True) for name, fn, source, target in self.stages if name is not None]
        interval = sys.getswitchinterval()
        sys.setswitchinterval(min(interval, SWITCH_INTERVAL))
        try:
            for thread in threads:
                thread.start()
            for name, fn, source, target in self.stages:
                if name is None:
                    work(fn, source, target, on_each)
            for thread in threads:
                thread.join()
        finally:
            sys.setswitchinterval(interval)
        if self.failures:
            raise self.failures[0]


def _ramped(order: list[int], first: int, size: int) -> Iterator[list[int]]:
    """``order`` in blocks of ``first`` rows, then twice as many each time, up to ``size``."""
    start, step = 0, first
    while start < len(order):
        yield order[start : start + step]
        start += step
        step = min(size, step * 2)


def _non_strings(column: Sequence[Any]) -> list[int]:
    """Positions of the values that are not ``str`` (None included)."""
    return [row for row, value in enumerate(column) if not isinstance(value, str)]


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


def _put(target: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    """Put unless stopped (the sentinel always gets through once there is room or nothing waits)."""
    while True:
        try:
            target.put(item, timeout=0.05)
            return not stop.is_set() or item is _STOP
        except queue.Full:
            if stop.is_set():
                return False


def _get(source: queue.Queue[Any], stop: threading.Event) -> Any:
    while True:
        try:
            return source.get(timeout=0.05)
        except queue.Empty:
            if stop.is_set():
                return None

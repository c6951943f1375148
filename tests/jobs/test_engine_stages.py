"""The engine's parts below the runner: the overlap line's threads and how fast a failure stops them, the copy
of a batch to its device, and the padding helper's types and sides.

These are properties a run's table cannot show: a hung device thread must not keep the interpreter alive
(daemon threads), a py-spy dump or faulthandler traceback must say which stage a thread is (its name), a
failure must end the run in a fraction of a second however full the queues are, and a GPU batch must be
copied from pinned memory without blocking (checked here with a stand-in tensor: no GPU needed).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from jobs.engine.base import RunOptions
from jobs.engine.contract import Batch, Encoded, Finished, Item
from jobs.engine.padding import attention_mask, lengths_of, pad
from jobs.engine.pipeline import SWITCH_INTERVAL
from jobs.engine.staged import StagedRunner, _on_device
from tests.jobs.test_engine import COLUMNS, Toy


def _stage_threads() -> dict[str, bool]:
    """The running engine threads by name, with their daemon flags."""
    return {thread.name: thread.daemon for thread in threading.enumerate() if thread.name.startswith("batchformers-")}


def test_the_host_stages_run_in_named_daemon_threads() -> None:
    seen: list[dict[str, bool]] = []

    class Watching(Toy):
        def forward(self, batch: Batch) -> Sequence[Any]:
            seen.append(_stage_threads())
            return super().forward(batch)

    before = sys.getswitchinterval()
    Watching(options=RunOptions(batch_size=1, encode_rows=1, overlap=True)).run_table({"text": ["a b"] * 6})
    assert seen and seen[0] == {"batchformers-encode": True, "batchformers-pad": True, "batchformers-decode": True}
    assert _stage_threads() == {}, "every stage thread has ended when the run returns"
    assert sys.getswitchinterval() == before, "the interpreter's switch interval is put back"


def test_the_device_thread_gets_the_gil_back_quickly_while_the_line_runs() -> None:
    intervals: list[float] = []

    class Watching(Toy):
        def forward(self, batch: Batch) -> Sequence[Any]:
            intervals.append(sys.getswitchinterval())
            return super().forward(batch)

    Watching(options=RunOptions(batch_size=1, overlap=True)).run_table({"text": ["a", "b c"]})
    assert intervals == [pytest.approx(SWITCH_INTERVAL)] * 2
    Watching(options=RunOptions(batch_size=1, overlap=False)).run_table({"text": ["a"]})
    assert intervals[-1] == pytest.approx(sys.getswitchinterval()), "only an overlapped run changes it"


def test_a_failure_ends_the_run_promptly_while_the_queues_are_full() -> None:
    """The device fails once the host stages have filled their queues and wait to put more: they see the stop
    within a poll, so the error is raised well under a second after it happened."""
    failed_at: list[float] = []
    started: list[float] = []

    class Failing(Toy):
        def encode(self, inputs: dict[str, list[Any]], rows: list[int]) -> Encoded:
            started.append(time.perf_counter())
            return super().encode(inputs, rows)

        def collate(self, items: list[Item]) -> Batch:
            started.append(time.perf_counter())
            return super().collate(items)

        def forward(self, batch: Batch) -> Sequence[Any]:
            time.sleep(0.3)  # the encode and pad stages fill their bounded queues meanwhile
            failed_at.append(time.perf_counter())
            raise ValueError("device broke")

    with pytest.raises(ValueError, match="device broke"):
        Failing(options=RunOptions(batch_size=1, encode_rows=1, overlap=True)).run_table({"text": ["a"] * 200})
    assert time.perf_counter() - failed_at[0] < 0.95  # a poll is 0.05 s; a stage polling 1.05 s would miss it
    assert max(started) < failed_at[0], "no stage starts new work (the next block, the next batch) once stopped"


def test_a_stage_waiting_for_input_stops_soon_after_a_failure() -> None:
    """Decode fails while encode is busy on its next block: the pad stage, waiting on encode, ends within a
    poll of the stop instead of waiting for encode."""
    failed = threading.Event()
    waited: list[float] = []

    class SlowEncode(Toy):
        def encode(self, inputs: dict[str, list[Any]], rows: list[int]) -> Encoded:
            if self.encode_calls == 1:  # the second block: wait for the failure, then for the pad stage to end
                assert failed.wait(5)
                started = time.perf_counter()
                while "batchformers-pad" in _stage_threads() and time.perf_counter() - started < 2:
                    time.sleep(0.005)
                waited.append(time.perf_counter() - started)
            return super().encode(inputs, rows)

        def decode(self, inputs: dict[str, list[Any]], finished: Finished) -> pa.Table:
            failed.set()
            raise KeyError("decode broke")

    with pytest.raises(KeyError, match="decode broke"):
        SlowEncode(options=RunOptions(batch_size=1, encode_rows=1, overlap=True)).run_table({"text": ["a"] * 5})
    assert waited and waited[0] < 0.95


class Recording:
    """A tensor stand-in that records how it is moved (the CUDA path needs no GPU to be checked)."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def pin_memory(self) -> Recording:
        self.calls.append("pin_memory")
        return self

    def to(self, device: Any, non_blocking: bool = False) -> Recording:
        self.calls.append(("to", str(device), non_blocking))
        return self


@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_a_batch_goes_to_a_gpu_from_pinned_memory_without_blocking(name: str) -> None:
    import torch

    tensor = Recording()
    assert _on_device(tensor, torch.device(name)) is tensor
    assert tensor.calls == ["pin_memory", ("to", name, True)]


def test_a_batch_goes_to_another_device_with_a_plain_copy_and_stays_put_without_one() -> None:
    import torch

    tensor = Recording()
    _on_device(tensor, torch.device("cpu"))
    assert tensor.calls == [("to", "cpu", False)]
    untouched = Recording()
    assert _on_device(untouched, None) is untouched and untouched.calls == []


def test_collate_gives_int64_tensors_for_every_input() -> None:
    import torch

    runner = StagedRunner(COLUMNS, with_type_ids=True)
    for items in ([Item(0, [1, 2]), Item(1, [3])], [Item(0, [1, 2], type_ids=[0, 1]), Item(1, [3])]):
        tensors = runner.collate(items).tensors
        assert {name: tensor.dtype for name, tensor in tensors.items()} == {
            "input_ids": torch.int64, "attention_mask": torch.int64, "token_type_ids": torch.int64}


def test_padding_keeps_the_requested_type_and_defaults_to_int64() -> None:
    rows = [[1, 2, 3], [4]]
    assert pad(rows, 0).dtype == np.int64
    assert pad(rows, 0, "left").dtype == np.int64
    assert pad(rows, 0, dtype=np.int32).dtype == np.int32
    assert pad(rows, 0, "left", np.int16).tolist() == [[1, 2, 3], [0, 0, 4]]
    assert pad([], 0).dtype == np.int64 and pad([], 0, dtype=np.int8).dtype == np.int8
    assert attention_mask(np.array([2, 1], dtype=np.int32)).dtype == np.int64
    assert pad(rows, 0).tolist() == [[1, 2, 3], [4, 0, 0]], "right by default"
    assert attention_mask(np.array([3, 1])).tolist() == [[1, 1, 1], [1, 0, 0]], "right by default"
    assert lengths_of([[1, 2], [], "abc"]).tolist() == [2, 0, 3] and lengths_of([[1]]).dtype == np.int64


def test_padding_copies_ids_exactly() -> None:
    """Ids go into the array as integers, never through a float (which rounds above 2**53)."""
    big = 2**62 + 1
    assert pad([[big], [big - 2, 5]], 0).tolist() == [[big, 0], [big - 2, 5]]


@pytest.mark.parametrize("call", [lambda side: pad([[1]], 0, side), lambda side: pad([], 0, side),
                                  lambda side: attention_mask(np.array([1]), side)])
def test_an_unknown_padding_side_is_an_error(call: Any) -> None:
    for side in ("Left", "middle", ""):
        with pytest.raises(ValueError, match=f"padding side must be 'left' or 'right', not '{side}'"):
            call(side)
    with pytest.raises(ValueError, match="padding side"):
        StagedRunner(COLUMNS, padding_side="centre").collate([Item(0, [1])])


def test_row_lengths_are_ints_and_a_task_s_own_row_checks_are_used() -> None:
    class Picky(Toy):
        def row_error(self, values: dict[str, Any]) -> str | None:
            return "too short" if isinstance(values["text"], str) and len(values["text"]) < 2 else None

        def row_length(self, values: dict[str, Any]) -> int:
            return 100 - len(values["text"])

    lengths = Toy().row_lengths({"text": ["ab", "", "cde"]}, [0, 2])
    assert lengths == [2, 3] and [type(n) for n in lengths] == [int, int]
    assert list(Picky().row_lengths({"text": ["ab", "", "cde"]}, [0, 2])) == [98, 97]
    assert Picky().row_errors({"text": ["a", "bb", None, "c"]}, 4) == {0: "too short", 3: "too short"}
    table = Picky(options=RunOptions(overlap=False)).run_table({"text": ["a", "bb cc"]}).table
    assert table.column("error").to_pylist() == ["too short", None]


def test_rows_that_cannot_run_get_nulls_in_every_column_s_own_type() -> None:
    schema = pa.schema([("n", pa.int64()), ("tags", pa.list_(pa.string())), ("span", pa.struct([("s", pa.int32())]))])
    table = StagedRunner(schema).empty_table(3)
    assert table.schema == schema and table.num_rows == 3
    assert all(column.null_count == 3 and column.type == field.type for column, field in zip(
        table.columns, schema, strict=True))
    assert StagedRunner(schema).empty_table(0).num_rows == 0

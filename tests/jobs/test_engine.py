"""The task engine: order, batching, padding, out-of-memory halving, failures, progress, overlap.

A toy runner (real engine, stages that need no model) pins the framework's own behaviour;
the real task types then run with overlap on and off and must give identical tables.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from jobs.engine import batching
from jobs.engine.base import LoadOptions, RunOptions
from jobs.engine.contract import Batch, Encoded, Finished, Item
from jobs.engine.execution import BLOCK_DEPTH, QUEUE_DEPTH
from jobs.engine.padding import attention_mask, pad
from jobs.engine.staged import StagedRunner
from jobs.tasks.registry import TASKS, get_task_class
from jobs.testing.oom import oom_above
from tests.models import tiny_model_path

COLUMNS = pa.schema([pa.field("total", pa.int64()), pa.field("parts", pa.int64())])
SCHEMA = pa.schema([pa.field("total", pa.int64()), pa.field("parts", pa.int64()), pa.field("error", pa.string())])


class Toy(StagedRunner):
    """Each word of a text is a token (its length); a text of more than ``chunk`` words gives several items.

    ``forward`` sums each item's padded ids, so padding or a mixed-up item shows in the result."""

    def __init__(self, chunk: int = 4, options: RunOptions | None = None, fail_on: str | None = None) -> None:
        super().__init__(COLUMNS, options)
        self.chunk = chunk
        self.fail_on = fail_on
        self.batches: list[list[tuple[int, int]]] = []
        self.threads: set[str] = set()
        self.encode_calls = 0

    def encode(self, inputs: dict[str, list[Any]], rows: list[int]) -> Encoded:
        self.encode_calls += 1
        items, errors = [], {}
        for row in rows:
            text = inputs["text"][row]
            if text == "refuse":
                errors[row] = "refused by encode"
                continue
            ids = [len(word) for word in text.split()] or [0]
            pieces = [ids[i : i + self.chunk] for i in range(0, len(ids), self.chunk)]
            items += [Item(row, piece, None, None, n, len(pieces)) for n, piece in enumerate(pieces)]
        return Encoded(items, errors)

    def forward(self, batch: Batch) -> Sequence[Any]:
        self.threads.add(threading.current_thread().name)
        self.batches.append([(item.row, item.part) for item in batch.items])
        ids = batch.tensors["input_ids"].numpy()
        mask = batch.tensors["attention_mask"].numpy()
        if self.fail_on and any(self.fail_on in str(item.ids) for item in batch.items):
            raise ValueError("bad item")
        return [int((ids[i] * mask[i]).sum()) for i in range(len(batch.items))]

    def decode(self, inputs: dict[str, list[Any]], finished: Finished) -> pa.Table:
        return pa.table({"total": [sum(outputs) for outputs in finished.outputs],
                         "parts": [len(outputs) for outputs in finished.outputs]},
                        schema=COLUMNS)


def _expected(texts: list[Any]) -> list[int | None]:
    return [sum(len(w) for w in t.split()) if isinstance(t, str) and t != "refuse" else None for t in texts]


TEXTS = ["a bb ccc", None, "x" * 40, "one two three four five six seven eight nine", "", 7, "refuse",
         "short", "q w e r t y u i o p a s d f g h j k l"]


@pytest.mark.parametrize("overlap", [False, True])
def test_results_come_back_in_input_order_with_row_errors(overlap: bool) -> None:
    progress: list[int] = []
    table = Toy(options=RunOptions(batch_size=3, overlap=overlap, encode_rows=4)).run_table(
        {"text": TEXTS}, progress.append).table
    assert table.column("total").to_pylist() == _expected(TEXTS)
    assert table.column("error").to_pylist() == [None, "text is null", None, None, None,
                                                  "text must be a string, got int", "refused by encode", None, None]
    assert table.column("parts").to_pylist()[3] == 3  # nine words in chunks of four
    assert sum(progress) == len(TEXTS)
    assert table.schema == SCHEMA


def test_batches_hold_the_budgets_and_every_item_runs_once() -> None:
    runner = Toy(chunk=2, options=RunOptions(batch_size=4, max_batch_tokens=6, overlap=False, encode_rows=3))
    texts = [" ".join("w" * (i % 5 + 1) for _ in range(i % 7 + 1)) for i in range(40)]
    table = runner.run_table({"text": texts}).table
    assert table.column("total").to_pylist() == _expected(texts)
    seen = [key for batch in runner.batches for key in batch]
    assert len(seen) == len(set(seen)) == sum(-(-len(t.split()) // 2) for t in texts)
    assert all(len(batch) <= 4 for batch in runner.batches)
    assert all(len(batch) * 2 <= 6 or len(batch) == 1 for batch in runner.batches)  # items are <= 2 tokens
    assert runner.encode_calls == 14  # 40 rows, 3 per encode call


def test_one_row_blocks_and_one_item_batches_are_honoured() -> None:
    sizes: list[int] = []

    class Sizes(Toy):
        def encode(self, inputs: dict[str, list[Any]], rows: list[int]) -> Encoded:
            sizes.append(len(rows))
            return super().encode(inputs, rows)

    Sizes(options=RunOptions(batch_size=4, overlap=False, encode_rows=1)).run_table({"text": ["a"] * 5})
    assert sizes == [1] * 5, "encode_rows 1: one row per encode call, and no empty call at the end"
    sizes.clear()
    Sizes(options=RunOptions(batch_size=1, overlap=False, encode_rows=8)).run_table({"text": ["a"] * 8})
    assert sizes == [1, 2, 4, 1], "the first block is one batch of one row"


def test_longest_rows_are_encoded_first() -> None:
    runner = Toy(options=RunOptions(batch_size=1, overlap=False, encode_rows=1))
    runner.run_table({"text": ["a", "a b c d e f g h", "a b c"]})
    assert [batch[0][0] for batch in runner.batches][:1] == [1]


def test_the_device_starts_after_one_batch_of_rows_then_blocks_double() -> None:
    """The first block is one batch of the longest rows (the device waits on it), the next ones double."""
    sizes: list[int] = []

    class Sizes(Toy):
        def encode(self, inputs: dict[str, list[Any]], rows: list[int]) -> Encoded:
            sizes.append(len(rows))
            return super().encode(inputs, rows)

    texts = [" ".join("w" * (i % 9 + 1) for _ in range(i % 5 + 1)) for i in range(100)]
    table = Sizes(options=RunOptions(batch_size=4, overlap=False, encode_rows=32)).run_table({"text": texts}).table
    assert sizes == [4, 8, 16, 32, 32, 8]
    assert table.column("total").to_pylist() == _expected(texts)
    sizes.clear()

    class NoDevice(Sizes):
        device_stage = False

        def decode(self, inputs: dict[str, list[Any]], finished: Finished) -> pa.Table:
            return pa.table({"total": [0] * len(finished.rows), "parts": [0] * len(finished.rows)},
                            schema=COLUMNS)

    NoDevice(options=RunOptions(batch_size=4, encode_rows=32)).run_table({"text": texts})
    assert sizes == [32, 32, 32, 4]  # nothing waits on a device: whole blocks from the start


@pytest.mark.parametrize("overlap", [False, True])
def test_rows_that_need_no_model_share_a_block_with_rows_that_do(overlap: bool) -> None:
    """A block whose encode gives some rows no items (and no error) still runs its other rows' batches."""

    class Skipping(Toy):
        def encode(self, inputs: dict[str, list[Any]], rows: list[int]) -> Encoded:
            kept = [row for row in rows if inputs["text"][row] != "skip"]
            return super().encode(inputs, kept)

        def decode(self, inputs: dict[str, list[Any]], finished: Finished) -> pa.Table:
            return pa.table({"total": [sum(outputs) if outputs else None for outputs in finished.outputs],
                             "parts": [len(outputs) for outputs in finished.outputs]}, schema=COLUMNS)

    texts = ["skip", "a bb", "skip", "ccc dddd eeeee", "f"]
    table = Skipping(options=RunOptions(batch_size=1, overlap=overlap, encode_rows=8)).run_table(
        {"text": texts}).table
    assert table.column("total").to_pylist() == [None, 3, None, 12, 1]
    assert table.column("parts").to_pylist() == [0, 1, 0, 1, 1]
    assert table.column("error").to_pylist() == [None] * 5


def test_a_task_without_a_device_stage_decodes_its_items_data() -> None:
    """With no forward, each row's outputs are its items' own data, in part order."""

    class HostOnly(Toy):
        device_stage = False

        def encode(self, inputs: dict[str, list[Any]], rows: list[int]) -> Encoded:
            encoded = super().encode(inputs, rows)
            for item in encoded.items:
                item.data = 10 * item.part + len(item.ids)
            return encoded

        def decode(self, inputs: dict[str, list[Any]], finished: Finished) -> pa.Table:
            assert all(item.row == row for row, items in zip(finished.rows, finished.items, strict=True)
                       for item in items), "each row's own items"
            return pa.table({"total": [sum(outputs) for outputs in finished.outputs],
                             "parts": [len(items) for items in finished.items]}, schema=COLUMNS)

    texts = ["a b c d e f", "x", "p q r s t u v w x"]  # chunks of four words: parts 2, 1, 3
    table = HostOnly(options=RunOptions(overlap=False)).run_table({"text": texts}).table
    assert table.column("total").to_pylist() == [4 + 12, 1, 4 + 14 + 21]
    assert table.column("parts").to_pylist() == [2, 1, 3]


@pytest.mark.parametrize("overlap", [False, True])
def test_no_rows_give_an_empty_table_of_the_declared_schema(overlap: bool) -> None:
    table = Toy(options=RunOptions(overlap=overlap)).run_table({"text": []}).table
    assert table.num_rows == 0 and table.schema == SCHEMA


def test_a_decode_in_other_types_is_cast_to_the_declared_schema() -> None:
    class Narrow(Toy):
        def decode(self, inputs: dict[str, list[Any]], finished: Finished) -> pa.Table:
            return super().decode(inputs, finished).cast(pa.schema([("total", pa.int32()), ("parts", pa.int16())]))

    table = Narrow(options=RunOptions(overlap=False)).run_table({"text": ["a bb", "ccc"]}).table
    assert table.schema == SCHEMA and table.column("total").to_pylist() == [3, 3]


@pytest.mark.parametrize("side", ["right", "left"])
def test_collate_pads_ids_mask_and_type_ids_on_the_runner_side(side: str) -> None:
    runner = StagedRunner(COLUMNS, pad_id=9, with_type_ids=True, padding_side=side)
    single = runner.collate([Item(0, [1, 2, 3]), Item(1, [4])])
    ids, mask = single.tensors["input_ids"].tolist(), single.tensors["attention_mask"].tolist()
    assert ids == ([[1, 2, 3], [4, 9, 9]] if side == "right" else [[1, 2, 3], [9, 9, 4]])
    assert mask == ([[1, 1, 1], [1, 0, 0]] if side == "right" else [[1, 1, 1], [0, 0, 1]])
    assert single.tensors["token_type_ids"].tolist() == [[0, 0, 0], [0, 0, 0]]
    assert (single.real_tokens, single.padded_tokens) == (4, 6)
    pairs = runner.collate([Item(0, [1, 2, 3], type_ids=[0, 1, 1]), Item(1, [4, 5])])
    assert pairs.tensors["token_type_ids"].tolist() == ([[0, 1, 1], [0, 0, 0]] if side == "right"
                                                        else [[0, 1, 1], [0, 0, 0]])
    odd = runner.collate([Item(0, [1], type_ids=[1]), Item(1, [4, 5, 6], type_ids=[0, 1, 1])])
    assert odd.tensors["token_type_ids"].tolist() == ([[1, 0, 0], [0, 1, 1]] if side == "right"
                                                      else [[0, 0, 1], [0, 1, 1]])
    assert "token_type_ids" not in StagedRunner(COLUMNS).collate([Item(0, [1])]).tensors


def test_rows_are_checked_column_by_column_as_row_by_row() -> None:
    """The column-wise check and lengths give what the per-row hooks give, for one role and for two."""

    class PerRow(Toy):
        input_roles = ("text", "other")

        def row_error(self, values: dict[str, Any]) -> str | None:
            return StagedRunner.row_error(self, values)

        def row_length(self, values: dict[str, Any]) -> int:
            return StagedRunner.row_length(self, values)

    class Columns(Toy):
        input_roles = ("text", "other")

    texts = ["a", None, 3, "bbb", "", b"x", "cc"]
    others = [None, "x", None, 4.5, "yy", "z", "zzzz"]
    inputs = {"text": texts, "other": others}
    per_row, columns = PerRow(), Columns()
    assert columns.row_errors(inputs, len(texts)) == per_row.row_errors(inputs, len(texts)) == {
        0: "other is null", 1: "text is null", 2: "text must be a string, got int",
        3: "other must be a string, got float", 5: "text must be a string, got bytes"}
    valid = [4, 6]
    assert list(columns.row_lengths(inputs, valid)) == list(per_row.row_lengths(inputs, valid)) == [2, 6]
    assert list(Toy().row_lengths({"text": ["ab", "", "cde"]}, [0, 1, 2])) == [2, 0, 3]


@pytest.mark.parametrize("side", ["right", "left"])
def test_one_padding_helper_pads_either_side(side: str) -> None:
    rows = [[1, 2, 3], [4], [5, 6]]
    array = pad(rows, 0, side)
    mask = attention_mask(np.array([3, 1, 2]), side)
    if side == "right":
        assert array.tolist() == [[1, 2, 3], [4, 0, 0], [5, 6, 0]]
    else:
        assert array.tolist() == [[1, 2, 3], [0, 0, 4], [0, 5, 6]]
    assert (mask.astype(bool) == (array != 0)).all()
    assert array.dtype == np.int64 and mask.dtype == np.int64  # what the models' embeddings take
    assert pad(rows, 7, side, dtype=np.int32).dtype == np.int32


def test_padding_no_rows_gives_empty_arrays() -> None:
    assert pad([], 0).shape == (0, 0) and attention_mask(np.array([], dtype=np.int64)).shape == (0, 0)
    assert pad([[], []], 3).shape == (2, 0)


def test_a_runner_pads_with_zero_by_default() -> None:
    assert StagedRunner(COLUMNS).collate([Item(0, [5, 6]), Item(1, [7])]).tensors["input_ids"].tolist() == [
        [5, 6], [7, 0]]


def test_batches_go_to_the_runners_device() -> None:
    import torch

    batch = StagedRunner(COLUMNS, device=torch.device("meta")).collate([Item(0, [5, 6]), Item(1, [7])])
    assert {tensor.device.type for tensor in batch.tensors.values()} == {"meta"}
    assert {t.device.type for t in StagedRunner(COLUMNS).collate([Item(0, [1])]).tensors.values()} == {"cpu"}


@pytest.mark.parametrize("overlap", [False, True])
def test_out_of_memory_halves_batches_down_to_a_row_error(monkeypatch: pytest.MonkeyPatch, overlap: bool) -> None:
    texts = [f"w{i} " * (i % 3 + 1) for i in range(12)]
    expected = Toy(options=RunOptions(batch_size=8, overlap=overlap)).run_table({"text": texts}).table
    monkeypatch.setattr(batching, "batch_probe", oom_above(2))
    runner = Toy(options=RunOptions(batch_size=8, overlap=overlap))
    assert runner.run_table({"text": texts}).table.equals(expected)
    assert max(len(b) for b in runner.batches) == 2  # the larger batches failed before their forward
    monkeypatch.setattr(batching, "batch_probe", oom_above(0))
    table = Toy(options=RunOptions(batch_size=8, overlap=overlap)).run_table({"text": texts}).table
    assert set(table.column("error").to_pylist()) == {
        "out of memory even for this row alone; lower max_length or use a larger GPU"}
    assert table.column("total").null_count == len(texts)


@pytest.mark.parametrize("overlap", [False, True])
def test_a_failing_forward_fails_the_run_unless_the_task_isolates_failures(overlap: bool) -> None:
    texts = ["a bb", "zzzzzzz", "ccc"]
    with pytest.raises(ValueError, match="bad item"):
        Toy(options=RunOptions(overlap=overlap), fail_on="7").run_table({"text": texts})

    class Isolating(Toy):
        isolate_failures = True

    table = Isolating(options=RunOptions(overlap=overlap), fail_on="7").run_table({"text": texts}).table
    assert table.column("error").to_pylist() == [None, "ValueError: bad item", None]
    progress: list[int] = []
    twice = Isolating(options=RunOptions(overlap=overlap), fail_on="7").run_table(
        {"text": [*texts, "yyyyyyy", "d"]}, progress.append).table
    assert twice.column("error").null_count == 3
    assert sum(progress) == len(texts) + 2, "each row that failed alone counts as done once"
    assert table.column("total").to_pylist() == [3, None, 3]


def test_an_error_in_a_host_stage_stops_every_thread() -> None:
    class BadDecode(Toy):
        def decode(self, inputs: dict[str, list[Any]], finished: Finished) -> pa.Table:
            raise KeyError("decode broke")

    before = threading.active_count()
    with pytest.raises(KeyError, match="decode broke"):
        BadDecode(options=RunOptions(batch_size=1, encode_rows=1)).run_table({"text": ["a"] * 50})
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before


def test_overlap_runs_the_device_stage_beside_the_host_stages() -> None:
    runner = Toy(options=RunOptions(batch_size=2, overlap=True, encode_rows=2))
    progress: list[int] = []
    runner.run_table({"text": ["a b"] * 20}, progress.append)
    assert runner.threads == {threading.current_thread().name}  # forward on the caller's thread
    assert sum(progress) == 20 and len(progress) > 1, "progress is reported as batches finish, not once at the end"


def test_overlap_hides_device_time_behind_host_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """With host and device stages that each take as long, overlapped runs take well under their sum."""

    class Slow(Toy):
        def encode(self, inputs: dict[str, list[Any]], rows: list[int]) -> Encoded:
            time.sleep(0.02)  # a tokenizer call releases the GIL like this
            return super().encode(inputs, rows)

        def forward(self, batch: Batch) -> Sequence[Any]:
            time.sleep(0.02)  # a device sync
            return super().forward(batch)

    texts = ["a b c d"] * 16
    started = time.perf_counter()
    Slow(options=RunOptions(batch_size=1, encode_rows=1, overlap=False)).run_table({"text": texts})
    serial = time.perf_counter() - started
    started = time.perf_counter()
    Slow(options=RunOptions(batch_size=1, encode_rows=1, overlap=True)).run_table({"text": texts})
    overlapped = time.perf_counter() - started
    assert overlapped < 0.75 * serial


def test_the_batch_observer_sees_each_model_batch() -> None:
    seen: list[tuple[int, int, int]] = []
    forward_seconds: list[float] = []

    def observer(items: int, tokens: int, padded: int, seconds: float) -> None:
        assert seconds >= 0
        seen.append((items, tokens, padded))
        forward_seconds.append(seconds)

    batching.observe_batches(observer)
    try:
        stats = Toy(chunk=10, options=RunOptions(batch_size=2, overlap=False)).run_table(
            {"text": ["a b c d e", "a", "a b c", "a b"]}).stats
    finally:
        batching._observers.remove(observer)
    assert seen == [(2, 8, 10), (2, 3, 4)]
    assert (stats.batches, stats.items, stats.tokens, stats.padded_tokens) == (2, 4, 11, 14), "the run's totals"
    assert stats.forward_seconds == pytest.approx(sum(forward_seconds))


@pytest.mark.parametrize("overlap", [False, True])
def test_each_stage_adds_up_its_seconds_over_the_run(overlap: bool) -> None:
    """Every call of a stage adds to its total (a pause in each shows as a lower bound per stage)."""
    pause = 0.004

    class Paused(Toy):
        def encode(self, inputs: dict[str, list[Any]], rows: list[int]) -> Encoded:
            time.sleep(pause)
            return super().encode(inputs, rows)

        def collate(self, items: list[Item]) -> Batch:
            time.sleep(pause)
            return super().collate(items)

        def decode(self, inputs: dict[str, list[Any]], finished: Finished) -> pa.Table:
            time.sleep(pause)
            return super().decode(inputs, finished)

    runner = Paused(options=RunOptions(batch_size=1, overlap=overlap, encode_rows=1))
    started = time.perf_counter()
    stats = runner.run_table({"text": ["a b", "c", "d e f", "g h"]}).stats
    wall = time.perf_counter() - started
    assert stats.batches == 4 and runner.encode_calls == 4
    assert stats.pad_seconds >= 4 * pause and stats.decode_seconds >= 4 * pause and stats.encode_seconds >= 4 * pause
    assert all(0 <= seconds <= wall for seconds in (stats.pad_seconds, stats.decode_seconds, stats.encode_seconds,
                                                    stats.forward_seconds)), "durations, not clock readings"
    stages = stats.stage_seconds()
    assert stages["encode"] >= 4 * pause and stages["decode"] >= 4 * pause


# -- every task type on the engine --------------------------------------------------

TASK_MODELS = {"tokenize": "bert-ner", "ner": "bert-ner", "qa": "bert-qa", "summarization": "bart",
               "translation": "marian", "classification": "bert-classifier", "zero_shot": "bert-nli",
               "fill_mask": "bert-mlm", "embeddings": "bert-embeddings", "generation": "gpt2"}
TASK_PARAMS: dict[str, dict[str, Any]] = {"ner": {"aggregation_strategy": "simple", "stride": 8},
                                          "summarization": {"max_length": 12, "num_beams": 2},
                                          "translation": {"max_length": 12},
                                          "zero_shot": {"candidate_labels": ["news", "sport"]},
                                          "generation": {"max_new_tokens": 6}}


def test_every_registered_task_is_covered() -> None:
    assert set(TASK_MODELS) >= set(TASKS)


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("name", sorted(TASKS))
def test_overlap_on_and_off_give_identical_tables(name: str, news_texts: list[str]) -> None:
    task = get_task_class(name).from_params(TASK_PARAMS.get(name, {}))
    options = LoadOptions(model=str(tiny_model_path(TASK_MODELS[name])), device="cpu")
    task.bind_model(options)
    runner = task.load(options)
    texts = news_texts[:30] + ["", None, " ".join(news_texts[:5])]
    if name == "fill_mask":
        texts = [text.replace(" ", " [MASK] ", 1) if text else text for text in texts]
    inputs = {role: texts for role in task.input_roles}
    if name == "qa":
        inputs = {"question": [f"Who is in row {i}?" for i in range(len(texts))], "context": texts}
    serial = runner.run_table(inputs, options=RunOptions(batch_size=4, overlap=False, encode_rows=8)).table
    overlapped = runner.run_table(inputs, options=RunOptions(batch_size=4, overlap=True, encode_rows=8)).table
    assert serial.num_rows == len(texts)
    assert serial.equals(overlapped)
    assert serial.column("error").null_count >= len(texts) - 2


# -- device handling -----------------------------------------------------------------

def test_cuda_without_a_gpu_is_a_clear_error_at_load() -> None:
    import torch

    from jobs.errors import ModelLoadError
    from jobs.tasks.ner import NerTask

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    task = NerTask.from_params({})
    for device in ("cuda", "cuda:1"):
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            task.load(LoadOptions(model=str(tiny_model_path("bert-ner")), device=device))


def test_auto_dtype_is_float32_on_cpu_and_attention_is_sdpa() -> None:
    import torch

    from jobs.engine.loading import resolve_dtype

    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    runner: Any = get_task_class("ner").from_params({}).load(
        LoadOptions(model=str(tiny_model_path("bert-ner")), device="cpu"))
    assert runner.model.dtype == torch.float32
    assert runner.model.config._attn_implementation == "sdpa"
    assert not runner.model.training


def test_a_job_that_only_changes_batch_size_reuses_the_loaded_model(tmp_path: Any) -> None:
    import pyarrow.parquet as pq

    from jobs.settings import Settings
    from jobs.spec import load_spec
    from worker.runners import runner_for

    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "in.parquet")
    base = {"task": "ner", "model": str(tiny_model_path("bert-ner")), "input": str(tmp_path / "in.parquet"),
            "output": str(tmp_path / "out"), "device": "cpu"}
    first = runner_for(load_spec({**base, "batch_size": 8}), Settings())
    again = runner_for(load_spec({**base, "batch_size": 256, "max_batch_tokens": 4096}), Settings())
    other = runner_for(load_spec({**base, "params": {"aggregation_strategy": "simple"}}), Settings())
    assert again[1] is first[1]
    assert other[1] is not first[1]
    assert load_spec({**base, "batch_size": 256}).run_options().batch_size == 256


def test_memory_stays_flat_on_a_large_shard() -> None:
    """Rows encoded but not yet decoded stay within a few blocks, however many rows the shard has."""

    class Counting(Toy):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.in_flight = 0
            self.most = 0
            self.lock = threading.Lock()

        def encode(self, inputs: dict[str, list[Any]], rows: list[int]) -> Encoded:
            with self.lock:
                self.in_flight += len(rows)
                self.most = max(self.most, self.in_flight)
            return super().encode(inputs, rows)

        def decode(self, inputs: dict[str, list[Any]], finished: Finished) -> pa.Table:
            time.sleep(0.0005)  # a decode slower than the rest: work piles up unless the queues are bounded
            with self.lock:
                self.in_flight -= len(finished.rows)
            return super().decode(inputs, finished)

    runner = Counting(options=RunOptions(batch_size=50, encode_rows=200, overlap=True))
    texts = [f"w{i} x" for i in range(10_000)]
    table = runner.run_table({"text": texts}).table
    assert table.num_rows == 10_000 and table.column("error").null_count == 10_000
    # blocks: one encoding, BLOCK_DEPTH waiting, one being padded; batches: two queues, the forward, the decode
    bound = (BLOCK_DEPTH + 2) * 200 + (2 * QUEUE_DEPTH + 2) * 50
    assert 0 < runner.most <= bound < 10_000 / 4


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("name", ["ner", "qa", "summarization"])
def test_out_of_memory_halving_keeps_every_task_s_results(name: str, news_texts: list[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    task = get_task_class(name).from_params(TASK_PARAMS.get(name, {}))
    runner = task.load(LoadOptions(model=str(tiny_model_path(TASK_MODELS[name])), device="cpu"))
    texts = news_texts[:12]
    inputs = {"text": texts} if name != "qa" else {"question": ["Who?"] * len(texts), "context": texts}
    expected = runner.run(inputs, options=RunOptions(batch_size=1))  # one item per batch: what halving ends at
    monkeypatch.setattr(batching, "batch_probe", oom_above(1))
    got = runner.run(inputs, options=RunOptions(batch_size=8))
    assert [row["error"] for row in got] == [None] * len(texts)
    assert got == expected


def test_only_a_runner_that_declares_it_gets_row_indexes() -> None:
    from jobs.engine.base import Runner
    from jobs.tasks.text_generation import TextGenerationRunner

    assert Runner.wants_row_index is False and Toy.wants_row_index is False
    assert TextGenerationRunner.wants_row_index is True

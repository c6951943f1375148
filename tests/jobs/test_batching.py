"""Properties of length-sorted batching and of the out-of-memory splitter (hypothesis)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.engine import batching
from jobs.engine.batching import (
    DEFAULT_BATCH_SIZE,
    RowOutOfMemory,
    is_out_of_memory,
    length_sorted_batches,
    notify_batch,
    observe_batches,
    run_splitting_on_oom,
    text_error,
)
from jobs.testing.oom import InjectedOutOfMemory, oom_above

LENGTHS = st.lists(st.integers(min_value=0, max_value=300), max_size=200)
BATCH_SIZES = st.integers(min_value=1, max_value=70)
BUDGETS = st.one_of(st.none(), st.integers(min_value=1, max_value=2000))


@settings(max_examples=300, deadline=None)
@given(lengths=LENGTHS, batch_size=BATCH_SIZES, budget=BUDGETS)
def test_length_sorted_batches(lengths: list[int], batch_size: int, budget: int | None) -> None:
    batches = list(length_sorted_batches(lengths, batch_size, budget))
    flat = [index for batch in batches for index in batch]
    assert sorted(flat) == list(range(len(lengths)))  # every index exactly once
    assert all(batches)  # no empty batch
    sizes = [max(1, lengths[i]) for i in flat]
    assert sizes == sorted(sizes, reverse=True)  # longest first, across and within batches
    # Order restored: putting each row's result back at its index gives the input order.
    restored: list[int | None] = [None] * len(lengths)
    for index in flat:
        restored[index] = lengths[index]
    assert restored == lengths
    for number, batch in enumerate(batches):
        longest = max(max(1, lengths[i]) for i in batch)
        assert len(batch) <= batch_size
        if budget is not None and len(batch) > 1:
            assert longest * len(batch) <= budget  # padded tokens held under the budget
        if number + 1 < len(batches):  # a batch is cut only when the next row would not fit
            following = batches[number + 1][0]
            grown = max(longest, max(1, lengths[following]))
            assert len(batch) == batch_size or (budget is not None and grown * (len(batch) + 1) > budget)


@settings(max_examples=100, deadline=None)
@given(lengths=LENGTHS)
def test_default_batch_size(lengths: list[int]) -> None:
    batches = list(length_sorted_batches(lengths))
    assert all(len(batch) <= DEFAULT_BATCH_SIZE for batch in batches)
    assert len(batches) == -(-len(lengths) // DEFAULT_BATCH_SIZE)


def test_batches_examples() -> None:
    assert list(length_sorted_batches([1, 5, 3, 6], batch_size=2)) == [[3, 1], [2, 0]]
    assert list(length_sorted_batches([10, 10, 10], batch_size=8, max_batch_tokens=20)) == [[0, 1], [2]]
    assert list(length_sorted_batches([50, 1, 1], batch_size=8, max_batch_tokens=20)) == [[0], [1, 2]]
    assert list(length_sorted_batches([0, 0, 0], batch_size=8, max_batch_tokens=2)) == [[0, 1], [2]]
    assert list(length_sorted_batches([], batch_size=8)) == []
    assert list(length_sorted_batches([4, 4, 4, 4], batch_size=8, max_batch_tokens=8)) == [[0, 1], [2, 3]]
    assert list(length_sorted_batches([4, 4, 4], batch_size=8, max_batch_tokens=12)) == [[0, 1, 2]]


def test_observers_see_every_batch_once_even_if_registered_twice() -> None:
    seen: list[tuple[int, int, int]] = []

    def observer(rows: int, real: int, padded: int, seconds: float) -> None:
        assert seconds >= 0
        seen.append((rows, real, padded))

    observe_batches(observer)
    observe_batches(observer)  # registering twice counts once
    try:
        notify_batch(2, 8, 10, 0.5)
        notify_batch(2, 3, 4, 0.0)
    finally:
        from jobs.engine import batching

        batching._observers.remove(observer)
    assert seen == [(2, 8, 10), (2, 3, 4)]


def test_text_error() -> None:
    assert text_error("x") is None and text_error("") is None
    assert text_error(None) == "text is null" and text_error(None, "context") == "context is null"
    assert text_error(3, "question") == "question must be a string, got int"


# -- the out-of-memory splitter ----------------------------------------------------------------


class Oom(RuntimeError):
    pass


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.integers(min_value=0, max_value=10_000), unique=True, max_size=80),
       limit=st.integers(min_value=1, max_value=90), poison=st.sets(st.integers(min_value=0, max_value=10_000)))
def test_oom_splitter(rows: list[int], limit: int, poison: set[int]) -> None:
    """Fits of at most ``limit`` rows succeed unless they hold a poison row: every row gets its own
    result in input order, a poison row alone gets RowOutOfMemory, the rest run exactly once."""
    calls: list[list[int]] = []

    def fn(batch: list[int]) -> Sequence[int]:
        calls.append(batch)
        if len(batch) > limit or poison & set(batch):
            raise Oom("CUDA out of memory. Tried to allocate 2 GiB")
        return [row * 3 for row in batch]

    results = run_splitting_on_oom(fn, rows)
    assert len(results) == len(rows)
    for row, result in zip(rows, results, strict=True):
        if row in poison:
            assert isinstance(result, RowOutOfMemory) and "alone" in result.message
        else:
            assert result == row * 3
    succeeded = [row for call in calls if len(call) <= limit and not poison & set(call) for row in call]
    assert sorted(succeeded) == sorted(set(rows) - poison)  # each good row ran once in a batch that fit
    for call in calls[1:]:  # every retry is a half of an earlier failed call
        assert any(call in (failed[: len(failed) // 2], failed[len(failed) // 2 :]) for failed in calls
                   if len(failed) > limit or poison & set(failed))
    if rows and len(rows) <= limit and not poison & set(rows):
        assert calls == [rows]  # no OOM: one call, no splitting


def test_oom_splitter_lets_other_errors_through_and_checks_counts() -> None:
    def broken(batch: list[int]) -> list[int]:
        raise ValueError("not memory")

    with pytest.raises(ValueError, match="not memory"):
        run_splitting_on_oom(broken, [1, 2])
    with pytest.raises(ValueError, match="returned 1 results for 2 rows"):
        run_splitting_on_oom(lambda batch: [0], [1, 2])
    assert run_splitting_on_oom(lambda batch: [], []) == []


def test_injected_oom(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batching, "batch_probe", oom_above(2))
    calls: list[int] = []
    assert run_splitting_on_oom(lambda batch: calls.append(len(batch)) or batch, [5, 6, 7, 8, 9]) == [5, 6, 7, 8, 9]
    assert calls == [2, 1, 2]  # 5 -> 2 + 3 -> 2 + (1 + 2): only batches above the limit failed
    monkeypatch.setattr(batching, "batch_probe", oom_above(0))
    assert all(isinstance(r, RowOutOfMemory) for r in run_splitting_on_oom(lambda batch: batch, [1, 2]))


@pytest.mark.parametrize(
    ("error", "oom"),
    [(InjectedOutOfMemory("x"), True), (RuntimeError("CUDA Out Of Memory"), True),
     (type("OutOfMemoryError", (Exception,), {})("x"), True), (RuntimeError("shape mismatch"), False),
     (ValueError("out of memory"), False), (MemoryError("host"), False)],
)
def test_is_out_of_memory(error: BaseException, oom: bool) -> None:
    assert is_out_of_memory(error) is oom


@pytest.mark.parametrize(("available", "initialized", "frees"), [(True, True, 3), (True, False, 0), (False, True, 0)])
def test_an_oom_split_frees_the_cuda_cache_once_per_failed_batch(monkeypatch: pytest.MonkeyPatch, available: bool,
                                                               initialized: bool, frees: int) -> None:
    """After each failed batch the CUDA caching allocator gives its blocks back (so the halves can fit),
    only where CUDA is in use. No GPU here: the three torch.cuda probes are replaced, the splitter is real."""
    import torch

    emptied: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: initialized)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    monkeypatch.setattr(batching, "batch_probe", oom_above(1))
    assert run_splitting_on_oom(lambda batch: batch, [1, 2, 3, 4]) == [1, 2, 3, 4]  # 4 -> 2 + 2 -> 1 + 1 + 1 + 1
    assert len(emptied) == frees
    monkeypatch.setitem(sys.modules, "torch", None)  # torch never imported: nothing to free
    assert run_splitting_on_oom(lambda batch: batch, [1, 2]) == [1, 2]
    assert len(emptied) == frees

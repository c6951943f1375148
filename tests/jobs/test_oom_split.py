"""Out of GPU memory: the batch is split in halves and retried, down to one row; only a row that
cannot run alone becomes a row error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from jobs.engine import batching
from jobs.engine.base import LoadOptions, RunOptions
from jobs.engine.batching import RowOutOfMemory, run_splitting_on_oom
from jobs.tasks.ner import NerTask
from jobs.testing.oom import oom_above


class _Model:
    """A batch function that runs out of memory above ``limit`` rows, or whenever ``poison`` is in it."""

    def __init__(self, limit: int = 1000, poison: int | None = None,
                 error: type[Exception] = torch.cuda.OutOfMemoryError) -> None:
        self.limit = limit
        self.poison = poison
        self.error = error
        self.calls: list[list[int]] = []

    def __call__(self, batch: list[int]) -> list[int]:
        self.calls.append(batch)
        if len(batch) > self.limit or self.poison in batch:
            raise self.error("CUDA out of memory. Tried to allocate 20.00 GiB")
        return [index * 10 for index in batch]


def test_an_oom_batch_is_split_until_it_fits() -> None:
    model = _Model(limit=3)
    assert run_splitting_on_oom(model, range(10)) == [i * 10 for i in range(10)]
    succeeded = [call for call in model.calls if len(call) <= 3]
    assert sorted(i for call in succeeded for i in call) == list(range(10))  # every row ran once, in a fit
    assert [len(call) for call in model.calls[:3]] == [10, 5, 2]  # halves, then halves again


def test_only_a_row_that_cannot_run_alone_becomes_an_error() -> None:
    model = _Model(poison=7)
    results = run_splitting_on_oom(model, list(range(10)))
    assert isinstance(results[7], RowOutOfMemory) and "even for this row alone" in results[7].message
    assert [r for i, r in enumerate(results) if i != 7] == [i * 10 for i in range(10) if i != 7]
    assert [7] in model.calls


def test_runtime_error_out_of_memory_is_recognised_and_other_errors_propagate() -> None:
    model = _Model(limit=4, error=RuntimeError)  # older torch and MPS: RuntimeError("... out of memory")
    assert run_splitting_on_oom(model, list(range(6))) == [i * 10 for i in range(6)]
    broken = _Model(limit=0, error=ValueError)
    with pytest.raises(ValueError):
        run_splitting_on_oom(broken, [1, 2])
    assert len(broken.calls) == 1  # not split: it is not a memory problem


def test_injected_oom_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _Model()
    monkeypatch.setattr(batching, "batch_probe", oom_above(2))
    assert run_splitting_on_oom(model, list(range(5))) == [i * 10 for i in range(5)]
    assert max(len(call) for call in model.calls) == 2  # the hook failed the larger batches first
    monkeypatch.setattr(batching, "batch_probe", oom_above(0))
    assert all(isinstance(r, RowOutOfMemory) for r in run_splitting_on_oom(model, list(range(3))))


@pytest.fixture(scope="module")
def ner_runner(ner_model: Path) -> Any:
    runner = NerTask.from_params({"aggregation_strategy": "simple"}).load(LoadOptions(model=str(ner_model)))
    runner.options = RunOptions(batch_size=16)
    return runner


def test_ner_gives_the_same_entities_when_batches_run_out_of_memory(ner_runner: Any, news_texts: list[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    texts = news_texts[:20]
    expected = ner_runner.run({"text": texts})
    monkeypatch.setattr(batching, "batch_probe", oom_above(3))  # batches of 16 fail; halves of 8, 4 fail; 2s and 1s run
    got = ner_runner.run({"text": texts})
    assert [row["error"] for row in got] == [None] * len(texts)
    assert [_without_scores(r["entities"]) for r in got] == [_without_scores(r["entities"]) for r in expected]
    scores = [(a["score"], b["score"]) for x, y in zip(got, expected, strict=True)
              for a, b in zip(x["entities"], y["entities"], strict=True)]
    assert scores and all(a == pytest.approx(b, abs=1e-4) for a, b in scores)  # other padding, same numbers


def _without_scores(entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: value for key, value in entity.items() if key != "score"} for entity in entities]


def test_ner_rows_that_do_not_fit_alone_are_row_errors(ner_runner: Any, news_texts: list[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batching, "batch_probe", oom_above(0))  # nothing fits, not even one row
    rows = ner_runner.run({"text": [news_texts[0], None, news_texts[1]]})
    assert [row["error"] for row in rows] == [
        "out of memory even for this row alone; lower max_length or use a larger GPU", "text is null",
        "out of memory even for this row alone; lower max_length or use a larger GPU"]
    assert all(row["entities"] is None for row in rows)

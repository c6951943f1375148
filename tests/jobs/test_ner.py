"""NER parity: our entities equal transformers.pipeline("token-classification")."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest
from pydantic import ValidationError
from transformers import pipeline

from jobs.engine.base import LoadOptions, RunOptions
from jobs.tasks.ner import NerTask

FAST = {("none", None), ("simple", 8), ("max", None)}  # the fast tier's share; every case runs in `make test`
CASES = [case if case in FAST else pytest.param(*case, marks=pytest.mark.slow)
         for case in [("none", None), ("simple", None), ("simple", 8), ("first", None), ("first", 8),
                      ("average", None), ("average", 8), ("max", None), ("max", 8)]]


@pytest.fixture(scope="module")
def texts(news_texts: list[str]) -> list[str]:
    """News sentences plus the hard cases: unknown characters, subwords, over-long, empty."""
    long_text = " ".join(news_texts[:6])  # far beyond the tiny model's 64 tokens
    return news_texts[:24] + ["Zürich, Ñandú and Ωmega met São Paulo.", "Washingtonians", long_text, ""]


def _same(expected: list[dict[str, Any]], got: list[dict[str, Any]]) -> bool:
    if len(expected) != len(got):
        return False
    for want, have in zip(expected, got, strict=True):
        if {k: v for k, v in want.items() if k != "score"} != {k: v for k, v in have.items() if k != "score"}:
            return False
        if abs(float(want["score"]) - have["score"]) > 1e-5:
            return False
    return True


@pytest.mark.parametrize(("strategy", "stride"), CASES)
def test_entities_equal_the_pipeline(ner_model: Any, texts: list[str], strategy: str, stride: int | None) -> None:
    params: dict[str, Any] = {"aggregation_strategy": strategy}
    if stride:
        params["stride"] = stride
    reference = pipeline("token-classification", model=str(ner_model), **params)
    expected = [reference(text) if text else [] for text in texts]
    runner = NerTask.from_params(params).load(LoadOptions(model=str(ner_model)))
    got = runner.run({"text": texts}, options=RunOptions(batch_size=5))
    assert all(row["error"] is None for row in got)
    mismatched = [i for i, (want, have) in enumerate(zip(expected, got, strict=True)) if not _same(want, have["entities"])]
    assert mismatched == []
    assert sum(len(e) for e in expected) > len(texts)  # the comparison is about real entities
    if stride:
        assert max(e["end"] for e in got[-2]["entities"]) > 200  # the long text was read to its end


def test_unknown_tokens_and_subwords_are_exercised(ner_model: Any, texts: list[str]) -> None:
    """The tiny vocabulary must split words and hit [UNK], or parity would prove little."""
    from transformers import AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(str(ner_model)).tokenize(texts[-4])
    assert "[UNK]" in tokens and any(t.startswith("##") for t in tokens)


def test_bad_rows_become_row_errors(ner_model: Any) -> None:
    runner = NerTask.from_params({"aggregation_strategy": "simple"}).load(LoadOptions(model=str(ner_model)))
    rows = runner.run({"text": ["Apple in Munich", None, 42, "", "   "]})
    assert [r["error"] for r in rows] == [None, "text is null", "text must be a string, got int", None, None]
    assert rows[0]["entities"] and rows[3]["entities"] == [] and rows[4]["entities"] == []
    table = pa.Table.from_pylist(rows, schema=NerTask.from_params({"aggregation_strategy": "simple"})
                                 .output_schema().append(pa.field("error", pa.string())))
    assert table.num_rows == 5


@pytest.mark.parametrize(
    ("params", "field"),
    [({"aggregation_strategy": "biggest"}, "aggregation_strategy"), ({"stride": 4}, "stride"),
     ({"grouped_entities": True}, "grouped_entities")],
)
def test_invalid_params_are_rejected(params: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field if field != "stride" else "stride"):
        NerTask.from_params(params)

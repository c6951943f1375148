"""Tokenize: columns equal the fast tokenizer's own batched output."""

from __future__ import annotations

from typing import Any

import pytest
from transformers import AutoTokenizer

from jobs.engine.base import LoadOptions
from jobs.tasks.tokenize import TokenizeTask


@pytest.mark.parametrize("params", [{}, {"truncation": True, "max_length": 12}, {"add_special_tokens": False}])
def test_columns_equal_the_tokenizer(ner_model: Any, news_texts: list[str], params: dict[str, Any]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(ner_model))
    texts = news_texts[:40]
    expected = tokenizer(texts, return_offsets_mapping=True, **params)
    table = TokenizeTask.from_params(params).load(LoadOptions(model=str(ner_model))).run_table({"text": texts}).table
    assert table.column("input_ids").to_pylist() == expected["input_ids"]
    assert table.column("attention_mask").to_pylist() == expected["attention_mask"]
    assert table.column("offset_mapping").to_pylist() == [[list(p) for p in row] for row in expected["offset_mapping"]]
    assert table.column("word_ids").to_pylist() == [expected.word_ids(i) for i in range(len(texts))]
    assert table.column("num_tokens").to_pylist() == [len(ids) for ids in expected["input_ids"]]
    if "max_length" in params:
        assert max(table.column("num_tokens").to_pylist()) == 12


def test_bad_rows(ner_model: Any) -> None:
    table = TokenizeTask.from_params({}).load(LoadOptions(model=str(ner_model))).run_table(
        {"text": ["ok", None, 3.5, "", "x" * 1_000_000]}
    ).table
    rows = table.to_pylist()
    assert [r["error"] for r in rows] == [None, "text is null", "text must be a string, got float", None, None]
    assert rows[1]["input_ids"] is None and rows[3]["num_tokens"] == 2
    assert rows[4]["num_tokens"] > 2


def test_unknown_tokenizer_argument_is_rejected() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="return_tensors"):
        TokenizeTask.from_params({"return_tensors": "pt"})

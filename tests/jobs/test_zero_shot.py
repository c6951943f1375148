"""Zero-shot parity: labels and scores equal transformers.pipeline("zero-shot-classification")."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from transformers import pipeline

from jobs.engine.base import LoadOptions, RunOptions
from jobs.tasks.zero_shot import ZeroShotTask
from tests.models import tiny_model_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CASES: list[dict[str, Any]] = [
    {"candidate_labels": ["sports", "politics", "money", "weather"]},
    {"candidate_labels": "sports, war", "multi_label": True},
    {"candidate_labels": ["art"], "hypothesis_template": "The topic is {}"},
]


@pytest.fixture(scope="module")
def model() -> str:
    return str(tiny_model_path("bert-nli"))


@pytest.fixture(scope="module")
def texts(news_texts: list[str]) -> list[str]:
    return news_texts[:12] + ["Zürich, Ñandú and Ωmega met São Paulo.", " ".join(news_texts[:8])]


@pytest.mark.parametrize("params", CASES)
def test_scores_equal_the_pipeline(model: str, texts: list[str], params: dict[str, Any]) -> None:
    reference = pipeline("zero-shot-classification", model=model)
    runner: Any = ZeroShotTask.from_params(params).load(LoadOptions(model=model))
    got = runner.run({"text": texts}, options=RunOptions(batch_size=5))
    for text, row in zip(texts, got, strict=True):
        want = reference(text, **params)
        assert want["labels"] == row["labels"]
        assert max(abs(a - b) for a, b in zip(want["scores"], row["scores"], strict=True)) < 1e-5


def test_every_row_and_label_pair_is_one_item_in_shared_batches(model: str, texts: list[str]) -> None:
    runner: Any = ZeroShotTask.from_params(CASES[0]).load(LoadOptions(model=model))
    stats = runner.run_table({"text": texts}, options=RunOptions(batch_size=8)).stats
    assert stats.batches == -(-len(texts) * 4 // 8)


def test_empty_text_is_a_row_error_and_labels_are_required(model: str) -> None:
    runner = ZeroShotTask.from_params(CASES[0]).load(LoadOptions(model=model))
    rows = runner.run({"text": ["fine", "", None]})
    assert rows[0]["error"] is None and "empty" in rows[1]["error"] and rows[2]["error"] == "text is null"
    with pytest.raises(ValidationError, match="candidate_labels"):
        ZeroShotTask.from_params({})
    with pytest.raises(ValidationError, match="hypothesis_template"):
        ZeroShotTask.from_params({"candidate_labels": ["a"], "hypothesis_template": "no slot"})

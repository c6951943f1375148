"""Classification parity: our labels and scores equal transformers.pipeline("text-classification")."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from transformers import pipeline

from jobs.engine.base import LoadOptions, RunOptions
from jobs.spec import load_spec
from jobs.tasks.classification import ClassificationTask
from tests.models import tiny_model_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CASES: list[dict[str, Any]] = [{}, {"top_k": None}, {"top_k": 2, "function_to_apply": "sigmoid"},
                               {"top_k": 1, "function_to_apply": "none"}]


@pytest.fixture(scope="module")
def model() -> str:
    return str(tiny_model_path("bert-classifier"))


@pytest.fixture(scope="module")
def texts(news_texts: list[str]) -> list[str]:
    return news_texts[:20] + ["", "Zürich, Ñandú and Ωmega met São Paulo.", " ".join(news_texts[:8])]


def _labels(result: Any) -> list[dict[str, Any]]:
    return result if isinstance(result, list) else [result]


@pytest.mark.parametrize("params", CASES)
def test_scores_equal_the_pipeline(model: str, texts: list[str], params: dict[str, Any]) -> None:
    reference = pipeline("text-classification", model=model)
    runner = ClassificationTask.from_params(params).load(LoadOptions(model=model))
    got = runner.run({"text": texts}, options=RunOptions(batch_size=4))
    for text, row in zip(texts, got, strict=True):
        want = _labels(reference(text, truncation=True, **params) if params else reference(text, truncation=True)[0])
        have = row["labels"] if "labels" in row else [{"label": row["label"], "score": row["score"]}]
        assert [w["label"] for w in want] == [h["label"] for h in have]
        # Raw logits (function_to_apply: none) reach ~20: fp32 differences of padded batches scale with them.
        assert all(abs(w["score"] - h["score"]) <= 1e-5 * max(1.0, abs(w["score"])) for w, h in zip(want, have, strict=True))
    assert len({row.get("label") or row["labels"][0]["label"] for row in got}) > 1  # the model tells rows apart


def test_text_pairs_equal_the_pipeline(model: str, texts: list[str]) -> None:
    reference = pipeline("text-classification", model=model)
    pairs = list(reversed(texts))
    runner = ClassificationTask.from_params({"top_k": None}).load(LoadOptions(model=model))
    got = runner.run({"text": texts, "text_pair": pairs}, options=RunOptions(batch_size=5))
    for text, pair, row in zip(texts, pairs, got, strict=True):
        want = reference({"text": text, "text_pair": pair}, truncation=True, top_k=None)
        assert [w["label"] for w in want] == [h["label"] for h in row["labels"]]
        assert all(abs(w["score"] - h["score"]) < 1e-5 for w, h in zip(want, row["labels"], strict=True))


def test_bad_rows_and_params(model: str) -> None:
    runner = ClassificationTask.from_params({}).load(LoadOptions(model=model))
    rows = runner.run({"text": ["fine", None, 3]})
    assert [r["error"] for r in rows] == [None, "text is null", "text must be a string, got int"]
    with pytest.raises(ValidationError, match="function_to_apply"):
        ClassificationTask.from_params({"function_to_apply": "tanh"})


@pytest.mark.parametrize("alias", ["text-classification", "sentiment-analysis"])
def test_pipeline_names_are_aliases(alias: str, tmp_path: Any, model: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"review": ["good"], "other": ["x"]}), tmp_path / "in.parquet")
    spec = load_spec({"task": alias, "model": model, "input": str(tmp_path / "in.parquet"),
                      "output": str(tmp_path / "out"), "columns": {"text": "review", "text_pair": "other"}})
    assert spec.task == "classification"
    assert spec.input_columns() == {"text": "review", "text_pair": "other"}
